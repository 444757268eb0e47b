"""One plan per command: a parsed line at a place (`At`) -> a `Step`.

`CommandPlans.table()` maps each `protocol.commands.Command` type to its
plan. A plan asks the store for one call (`workers.store`) and returns
with it the function that turns the call's result into effects: the
sender's reply, and what the others see (a room event for the gateways
with members in the room, or a delivery to named connections). Texts
that only these replies use are defined here.

Message IDs are the line's ID (`At.mid`), so a replay of the same line
gets the same ID; every store call is a replayable script.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from protocol import commands as c
from protocol.messages import ChatEvent, EventType, RoomEvent, gateway_of
from protocol.replies import ReplyCode as R
from workers.effects import Effects
from workers.steps import At, ChatLimits, Step, reply
from workers.store import Failed, Store

NO_ROOM = "join a room first: /join #name"
TOO_MANY_ROOMS = "too many rooms (max {max}): /part one first"
HISTORY_GAP = "older messages of {room} after {after} are no longer kept: some are missing before these"


def _not_in(room: str) -> str:
    return f"you are not in {room}: /join {room} first"


class CommandPlans:
    """The plans of all commands, over one store and the chat's limits."""

    def __init__(self, store: Store, limits: ChatLimits) -> None:
        self.store = store
        self.limits = limits

    def table(self) -> dict[type, Callable[[At, Any], Step]]:
        """Each command type -> its plan."""
        return {
            c.Nick: self._nick,
            c.Join: self._join,
            c.Part: self._part,
            c.Msg: self._msg,
            c.Me: self._me,
            c.Say: self._say,
            c.Who: self._who,
            c.Rooms: self._rooms,
            c.History: self._history,
            c.Topic: self._topic,
            c.Ping: lambda at, cmd: reply("info", at.cid, "pong", R.PONG),
            c.Json: self._json,
            c.Help: self._help,
            c.Quit: self._quit,
        }

    def leave(self, op: tuple[int, int], cid: str, reason: str) -> Step:
        """A connection leaving (a departure or /quit): the others in its rooms see it quit."""
        def respond(fx: Effects, gone: tuple[str, list[str]] | None) -> None:
            if gone is None:
                return
            nick, others = gone
            text = f"{nick} quit" + (f" ({reason})" if reason else "")
            fx.deliver(others, ChatEvent(EventType.QUIT, text, sender=nick, code=R.QUIT, args=(reason,)))

        return Step(self.store.leave(op, cid), respond)

    # --- one plan per command --------------------------------------------------------------

    def _quit(self, at: At, cmd: c.Quit) -> Step:
        leave = self.leave(at.op, at.cid, cmd.reason)

        def respond(fx: Effects, gone: Any) -> None:
            fx.info(at.cid, "bye", R.BYE)
            leave.respond(fx, gone)
            # departed only if this event's departure freed the connection: a departure that found
            # nothing (its session was lost, and may be registered again since) is still the gateway's
            fx.close(at.cid, "quit", departed=gone is not None)

        return Step(leave.call, respond, last=True)

    def _nick(self, at: At, cmd: c.Nick) -> Step:
        def respond(fx: Effects, res: Failed | tuple[str, list[str]]) -> None:
            if isinstance(res, Failed):
                fx.error(at.cid, f"nickname {cmd.nick} is taken", R.NICK_TAKEN, (cmd.nick,))
                return
            old, others = res
            fx.info(at.cid, f"you are now {cmd.nick}", R.NICK_SET, (cmd.nick,))
            if old != cmd.nick:
                event = ChatEvent(EventType.NICK, f"{old} is now known as {cmd.nick}", sender=old, to=cmd.nick)
                fx.deliver(others, event)

        return Step(self.store.set_nick(at.op, at.cid, cmd.nick), respond)

    def _join(self, at: At, cmd: c.Join) -> Step:
        def respond(fx: Effects, res: Failed | tuple[str, bool, int, list[str], str, int, list[str]]) -> None:
            if isinstance(res, Failed):
                limit = self.store.max_rooms
                fx.error(at.cid, TOO_MANY_ROOMS.format(max=limit), R.TOO_MANY_ROOMS, (str(limit), cmd.room))
                return
            nick, added, members, nicks, topic, seq, gateways = res
            names = sorted(nicks, key=str.lower)
            fx.info(at.cid, f"you joined {cmd.room} ({members} here: {', '.join(names)})",
                    R.JOINED, (cmd.room, topic, *names))
            if topic:
                fx.info(at.cid, f"topic of {cmd.room}: {topic}", R.JOIN_TOPIC, (cmd.room, topic))
            if added:  # to the others; and the joiner's gateway counts it a member from here
                event = ChatEvent(EventType.JOIN, f"{nick} joined {cmd.room}", room=cmd.room, sender=nick)
                fx.room([gateway_of(at.cid), *gateways], RoomEvent(cmd.room, seq, event, at.cid, 1))

        return Step(self.store.join(at.op, at.cid, cmd.room), respond)

    def _part(self, at: At, cmd: c.Part) -> Step:
        def respond(fx: Effects, res: Failed | tuple[str, str, str, int, list[str]]) -> None:
            if isinstance(res, Failed):
                _refuse(fx, at.cid, res, "you are in no room")
                return
            nick, room, current, seq, gateways = res
            now_in = f"; your current room is {current}" if current else ""
            fx.info(at.cid, f"you left {room}{now_in}", R.PARTED, (room, current))
            event = ChatEvent(EventType.PART, f"{nick} left {room}", room=room, sender=nick)
            fx.room([gateway_of(at.cid), *gateways], RoomEvent(room, seq, event, at.cid, -1))

        return Step(self.store.part(at.op, at.cid, cmd.room), respond)

    def to_room(self, at: At, room: str | None, text: str, kind: EventType) -> Step:
        """A room message (plain text, /me, /msg #room): to the current room if `room` is None or ''."""
        mid = at.mid

        def respond(fx: Effects, res: Failed | tuple[str, str, list[str], float, int]) -> None:
            if isinstance(res, Failed):
                _refuse(fx, at.cid, res, NO_ROOM)
                return
            nick, where, gateways, ts, seq = res
            event = ChatEvent(kind, text, room=where, sender=nick, id=mid, ts=ts, origin=at.cid)
            fx.room(gateways, RoomEvent(where, seq, event))

        return Step(self.store.say(at.op, at.cid, room, text, mid, at.now, kind.value), respond)

    def _say(self, at: At, cmd: c.Say) -> Step:
        return self.to_room(at, None, cmd.text, EventType.MESSAGE)

    def _me(self, at: At, cmd: c.Me) -> Step:
        return self.to_room(at, cmd.room, cmd.text, EventType.ACTION)

    def _msg(self, at: At, cmd: c.Msg) -> Step:
        if cmd.target.startswith("#"):
            return self.to_room(at, cmd.target, cmd.text, EventType.MESSAGE)
        return self.private(at, cmd.target, cmd.text)

    def private(self, at: At, target: str, text: str) -> Step:
        """A private message (/msg NICK text)."""
        def respond(fx: Effects, res: Failed | tuple[str, str, str, float]) -> None:
            if isinstance(res, Failed):
                fx.error(at.cid, f"no such nick: {target}", R.NO_SUCH_NICK, (target,))
                return
            nick, to_cid, to_nick, ts = res
            # to yourself: no origin, so text mode shows it once (`*nick* text`), as JSON mode does
            origin = "" if to_cid == at.cid else at.cid
            event = ChatEvent(EventType.PRIVATE, text, sender=nick, to=to_nick, id=at.mid, ts=ts, origin=origin)
            fx.deliver(dict.fromkeys((to_cid, at.cid)), event)

        return Step(self.store.private(at.op, at.cid, target, at.now), respond)

    def _who(self, at: At, cmd: c.Who) -> Step:
        def respond(fx: Effects, res: Failed | tuple[str, list[str]]) -> None:
            if isinstance(res, Failed):
                fx.error(at.cid, "you are in no room: /who #room", R.NO_ROOM)
                return
            room, nicks = res
            if not nicks:
                fx.info(at.cid, f"no one is in {room}", R.MEMBERS, (room,))
                return
            names = sorted(nicks, key=str.lower)
            fx.info(at.cid, f"{room} ({len(nicks)}): {', '.join(names)}", R.MEMBERS, (room, *names))

        return Step(self.store.who(at.op, at.cid, cmd.room), respond)

    def _rooms(self, at: At, cmd: c.Rooms) -> Step:
        def respond(fx: Effects, res: tuple[list[tuple[str, int]], int]) -> None:
            rooms, total = res
            more = str(max(total - len(rooms), 0))
            listed = tuple(field for room, n in rooms for field in (room, str(n)))
            if not rooms:
                fx.info(at.cid, "no rooms yet: /join #name opens one", R.ROOMS, (more,))
                return
            shown = [f"{room} ({n})" for room, n in rooms]
            if total > len(rooms):
                shown.append(f"... and {total - len(rooms)} more")
            fx.info(at.cid, "rooms: " + ", ".join(shown), R.ROOMS, (more, *listed))

        return Step(self.store.rooms(at.op, at.cid, self.limits.rooms_shown), respond)

    def _history(self, at: At, cmd: c.History) -> Step:
        if cmd.after:
            return self._history_after(at, cmd)

        def respond(fx: Effects, res: Failed | tuple[str, list[dict[str, str]]]) -> None:
            if isinstance(res, Failed):
                fx.error(at.cid, "you are in no room: /history #room [N]", R.NO_ROOM)
                return
            room, entries = res
            fx.info(at.cid, f"history of {room}: {_messages(len(entries))}", R.HISTORY, (room, str(len(entries))))
            _replay(fx, at.cid, room, entries)

        return Step(self.store.history(at.op, at.cid, cmd.room, cmd.count), respond)

    def _history_after(self, at: At, cmd: c.History) -> Step:
        def respond(fx: Effects, res: Failed | tuple[str, list[dict[str, str]], bool]) -> None:
            if isinstance(res, Failed):
                fx.error(at.cid, "you are in no room: /history #room after ID", R.NO_ROOM)
                return
            room, entries, gap = res
            fx.info(at.cid, f"history of {room} after {cmd.after}: {_messages(len(entries))}",
                    R.HISTORY, (room, str(len(entries)), cmd.after))
            if gap:
                fx.info(at.cid, HISTORY_GAP.format(room=room, after=cmd.after), R.HISTORY_GAP, (room, cmd.after))
            _replay(fx, at.cid, room, entries)

        return Step(self.store.history_after(at.op, at.cid, cmd.room, cmd.after, cmd.count), respond)

    def _topic(self, at: At, cmd: c.Topic) -> Step:
        def respond(fx: Effects, res: Failed | tuple[str, str, str, float, list[str]]) -> None:
            if isinstance(res, Failed):
                _refuse(fx, at.cid, res, "you are in no room: /topic #room [TEXT]")
                return
            room, topic, by, ts, members = res
            if cmd.text is not None:
                text = f"{by} set the topic of {room}: {topic}"
                fx.deliver(members, ChatEvent(EventType.TOPIC, text, room=room, sender=by, ts=ts,
                                              code=R.TOPIC_SET, args=(room, topic)))
                return
            shown = f"topic of {room}: {topic}" if topic else f"{room} has no topic"
            fx.info(at.cid, shown, R.TOPIC_IS, (room, topic, by, repr(ts)))

        return Step(self.store.topic(at.op, at.cid, cmd.room, cmd.text, at.now), respond)

    def _json(self, at: At, cmd: c.Json) -> Step:
        def respond(fx: Effects, _: None) -> None:
            fx.set_json(at.cid)
            fx.info(at.cid, "json mode on", R.JSON_ON)

        return Step(None, respond)

    def _help(self, at: At, cmd: c.Help) -> Step:
        def respond(fx: Effects, _: None) -> None:
            for line in c.HELP_LINES:
                fx.info(at.cid, line, R.HELP)

        return Step(None, respond)


def _messages(n: int) -> str:
    return f"{n} message{'s' * (n != 1)}"


def _replay(fx: Effects, cid: str, room: str, entries: list[dict[str, str]]) -> None:
    for e in entries:
        event = ChatEvent(
            EventType.HISTORY, e.get("text", ""), room=room, sender=e.get("from", ""),
            id=e.get("id", ""), ts=_float(e.get("ts", "0")), of=e.get("kind", "message"),
        )
        fx.deliver((cid,), event)


def _refuse(fx: Effects, cid: str, res: Failed, no_room: str) -> None:
    """A room operation that failed: not in the room, or no room at all."""
    if res.why == "notin":
        fx.error(cid, _not_in(res.room), R.NOT_IN_ROOM, (res.room,))
    else:
        fx.error(cid, no_room, R.NO_ROOM)


def _float(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        return 0.0
