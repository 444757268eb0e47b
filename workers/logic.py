"""The chat itself: a client event and the store -> `Effects`.

`Chat.handle(item, now)` is the whole behaviour of PROTOCOL.md. Each
command has one small handler; `now` (server time) comes in as a value.
Message IDs are derived from the event ID, `<cid>/<seq>`: the gateway
numbers every line of a connection, and connection IDs are unique across
the cluster, so the ID is unique without a round trip, and the same line
handled twice gets the same ID.
"""

from __future__ import annotations

from collections.abc import Callable

from protocol import commands as c
from protocol.errors import CommandError
from protocol.messages import (
    ChatEvent,
    Connected,
    Disconnected,
    EventType,
    GatewayLost,
    Lines,
    WorkItem,
    gateway_of,
)
from workers.effects import Effects
from workers.store import Failed, Store

NO_ROOM = "join a room first: /join #name"


def _not_in(room: str) -> str:
    return f"you are not in {room}: /join {room} first"


class Chat:
    def __init__(self, store: Store) -> None:
        self.store = store
        self._commands: dict[type, Callable[[Effects, str, str, float, object], None]] = {
            c.Nick: self._nick,
            c.Join: self._join,
            c.Part: self._part,
            c.Msg: self._msg,
            c.Me: self._me,
            c.Say: self._say,
            c.Who: self._who,
            c.Rooms: self._rooms,
            c.History: self._history,
            c.Ping: lambda fx, cid, mid, now, cmd: fx.info(cid, "pong"),
            c.Json: self._json,
            c.Help: self._help,
        }

    def handle(self, item: WorkItem, now: float) -> Effects:
        fx = Effects()
        match item:
            case Lines(cid, seq, lines):
                self._lines(fx, cid, seq, lines, now)
            case Connected(cid, _, addr):
                self._connected(fx, cid, addr)
            case Disconnected(cid, _, reason):
                self._leave(fx, cid, reason)
            case GatewayLost(gateway):
                for cid in self.store.gateway_conns(gateway):
                    self._leave(fx, cid, "connection lost")
        return fx

    def _connected(self, fx: Effects, cid: str, addr: str) -> None:
        nick = self.store.connect(cid, gateway_of(cid), addr)
        if nick is None:
            fx.error(cid, "no guest nickname is free, try again later")
            fx.close(cid, "no nickname")
            return
        fx.info(cid, f"welcome! you are {nick}: /nick NAME to change it, /join #room to talk, /help for all commands")

    def _lines(self, fx: Effects, cid: str, seq: int, lines: tuple[str, ...], now: float) -> None:
        for offset, line in enumerate(lines):
            try:
                cmd = c.parse_line(line)
            except CommandError as exc:
                fx.error(cid, str(exc))
                continue
            if cmd is None:
                continue
            if isinstance(cmd, c.Quit):
                fx.info(cid, "bye")
                self._leave(fx, cid, cmd.reason)
                fx.close(cid, "quit")
                return
            self._commands[type(cmd)](fx, cid, f"{cid}/{seq + offset}", now, cmd)

    def _leave(self, fx: Effects, cid: str, reason: str) -> None:
        gone = self.store.leave(cid)
        if gone is None:
            return
        nick, others = gone
        text = f"{nick} quit" + (f" ({reason})" if reason else "")
        fx.deliver(others, ChatEvent(EventType.QUIT, text, sender=nick))

    def _nick(self, fx: Effects, cid: str, mid: str, now: float, cmd: c.Nick) -> None:
        res = self.store.set_nick(cid, cmd.nick)
        if isinstance(res, Failed):
            fx.error(cid, f"nickname {cmd.nick} is taken" if res.why == "taken" else "not connected")
            return
        old, others = res
        fx.info(cid, f"you are now {cmd.nick}")
        if old != cmd.nick:
            event = ChatEvent(EventType.NICK, f"{old} is now known as {cmd.nick}", sender=old, to=cmd.nick)
            fx.deliver(others, event)

    def _join(self, fx: Effects, cid: str, mid: str, now: float, cmd: c.Join) -> None:
        res = self.store.join(cid, cmd.room)
        if isinstance(res, Failed):
            fx.error(cid, "not connected")
            return
        nick, added, members, nicks = res
        names = ", ".join(sorted(nicks, key=str.lower))
        fx.info(cid, f"you joined {cmd.room} ({len(members)} here: {names})")
        if added:
            others = [m for m in members if m != cid]
            fx.deliver(others, ChatEvent(EventType.JOIN, f"{nick} joined {cmd.room}", room=cmd.room, sender=nick))

    def _part(self, fx: Effects, cid: str, mid: str, now: float, cmd: c.Part) -> None:
        res = self.store.part(cid, cmd.room)
        if isinstance(res, Failed):
            fx.error(cid, _not_in(res.room) if res.why == "notin" else "you are in no room")
            return
        nick, room, current, rest = res
        now_in = f"; your current room is {current}" if current else ""
        fx.info(cid, f"you left {room}{now_in}")
        fx.deliver(rest, ChatEvent(EventType.PART, f"{nick} left {room}", room=room, sender=nick))

    def _to_room(
        self, fx: Effects, cid: str, mid: str, now: float, room: str | None, text: str, kind: EventType
    ) -> None:
        res = self.store.say(cid, room, text, mid, now, kind.value)
        if isinstance(res, Failed):
            fx.error(cid, _not_in(res.room) if res.why == "notin" else NO_ROOM)
            return
        nick, room, members = res
        fx.deliver(members, ChatEvent(kind, text, room=room, sender=nick, id=mid, ts=now, origin=cid))

    def _say(self, fx: Effects, cid: str, mid: str, now: float, cmd: c.Say) -> None:
        self._to_room(fx, cid, mid, now, None, cmd.text, EventType.MESSAGE)

    def _me(self, fx: Effects, cid: str, mid: str, now: float, cmd: c.Me) -> None:
        self._to_room(fx, cid, mid, now, None, cmd.text, EventType.ACTION)

    def _msg(self, fx: Effects, cid: str, mid: str, now: float, cmd: c.Msg) -> None:
        if cmd.target.startswith("#"):
            self._to_room(fx, cid, mid, now, cmd.target, cmd.text, EventType.MESSAGE)
            return
        res = self.store.private(cid, cmd.target)
        if isinstance(res, Failed):
            fx.error(cid, f"no such nick: {cmd.target}")
            return
        nick, to_cid, to_nick = res
        event = ChatEvent(EventType.PRIVATE, cmd.text, sender=nick, to=to_nick, id=mid, ts=now, origin=cid)
        fx.deliver(dict.fromkeys((to_cid, cid)), event)

    def _who(self, fx: Effects, cid: str, mid: str, now: float, cmd: c.Who) -> None:
        res = self.store.who(cid, cmd.room)
        if isinstance(res, Failed):
            fx.error(cid, "you are in no room: /who #room")
            return
        room, nicks = res
        if not nicks:
            fx.info(cid, f"no one is in {room}")
            return
        fx.info(cid, f"{room} ({len(nicks)}): {', '.join(sorted(nicks, key=str.lower))}")

    def _rooms(self, fx: Effects, cid: str, mid: str, now: float, cmd: c.Rooms) -> None:
        rooms = self.store.rooms()
        if not rooms:
            fx.info(cid, "no rooms yet: /join #name opens one")
            return
        fx.info(cid, "rooms: " + ", ".join(f"{room} ({n})" for room, n in rooms))

    def _history(self, fx: Effects, cid: str, mid: str, now: float, cmd: c.History) -> None:
        room = cmd.room or self.store.current_room(cid)
        if not room:
            fx.error(cid, "you are in no room: /history #room [N]")
            return
        entries = self.store.history(room, cmd.count)
        fx.info(cid, f"history of {room}: {len(entries)} message{'s' * (len(entries) != 1)}")
        for e in entries:
            event = ChatEvent(
                EventType.HISTORY, e.get("text", ""), room=room, sender=e.get("from", ""),
                id=e.get("id", ""), ts=_float(e.get("ts", "0")), of=e.get("kind", "message"),
            )
            fx.deliver((cid,), event)

    def _json(self, fx: Effects, cid: str, mid: str, now: float, cmd: c.Json) -> None:
        fx.set_json(cid)
        fx.info(cid, "json mode on")

    def _help(self, fx: Effects, cid: str, mid: str, now: float, cmd: c.Help) -> None:
        for line in c.HELP_LINES:
            fx.info(cid, line)


def _float(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        return 0.0
