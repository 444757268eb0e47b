"""The chat itself: client events and the store -> `Effects`.

`Chat.handle_batch(items, now)` is the whole behaviour of the protocol (README) for
a dispatch of events. Every line becomes a `Step`: at most one store call
(`workers.store.Call`) and a function that turns the call's result into
effects. All the calls of a dispatch go to Redis in one round trip, in
order, then the steps respond in order. `now` (server time) comes in as
a value.

Message IDs are derived from the line's ID, `<cid>/<seq>`: the gateway
numbers every line of a connection and connection IDs are unique across
the cluster, so the ID is unique without a round trip, and the same line
handled twice (a replay after a worker died) gets the same ID. Every
state change is a replayable script (`scripts.replayable`), so a replay
reproduces the first run's effects instead of applying them again.

Each event's plan and response run under one guard: a bug costs that event
(logged, counted, the sender told `! internal error`), never the dispatch.
Nothing from the envelope is trusted: lines longer than the line limit and
lines past the per-event bound are refused here, where they would be stored.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import partial
from typing import Any

import redis

from protocol import commands as c
from protocol.errors import CommandError
from protocol.lines import DEFAULT_MAX_LINE, LineError, LineProblem
from protocol.messages import (
    GATEWAY_GONE,
    GATEWAY_LOST_REASON,
    MAX_EVENT_LINES,
    ChatEvent,
    Connected,
    Disconnected,
    EventType,
    GatewayLost,
    Lines,
    RoomEvent,
    WorkItem,
    gateway_of,
)
from protocol.replies import ReplyCode as R
from workers.effects import Effects
from workers.metrics import RefusedCause, WorkerMetrics, redis_cause
from workers.store import Call, Failed, Gone, Store

log = logging.getLogger("chat.worker")

NO_ROOM = "join a room first: /join #name"
SESSION_LOST = "the service lost your session (a restart): you are now {nick}; /nick and /join again"
UNAVAILABLE = "service temporarily unavailable"
INTERNAL_ERROR = "internal error"
TOO_MANY_LINES = "too many lines at once (max {max}): the rest were dropped"
TOO_MANY_ROOMS = "too many rooms (max {max}): /part one first"
HISTORY_GAP = "older messages of {room} after {after} are no longer kept: some are missing before these"


@dataclass(frozen=True, slots=True)
class ChatLimits:
    """What one envelope or one connection may cost, enforced where the data is stored."""

    max_line: int = DEFAULT_MAX_LINE  # bytes of UTF-8, as the gateway counts them
    max_event_lines: int = MAX_EVENT_LINES  # lines of one event
    rooms_shown: int = 50  # /rooms lists the biggest this many, then counts the rest

Respond = Callable[[Effects, Any], None]


@dataclass(frozen=True, slots=True)
class At:
    """Where a line stands: its connection, its event, its own number, the time."""

    cid: str
    event: int
    seq: int
    now: float

    @property
    def op(self) -> tuple[int, int]:
        return (self.event, self.seq)

    @property
    def mid(self) -> str:
        return f"{self.cid}/{self.seq}"


@dataclass(frozen=True, slots=True)
class Step:
    """One line's work: a store call (or none) and what its result causes."""

    call: Call | None
    respond: Respond
    last: bool = False  # the connection is gone after this step (/quit)


def _not_in(room: str) -> str:
    return f"you are not in {room}: /join {room} first"


def _reply(kind: str, cid: str, text: str, code: str = "", args: tuple[str, ...] = ()) -> Step:
    """A step with no store call: an info or error line for the sender."""
    if kind == "error":
        return Step(None, lambda fx, _: fx.error(cid, text, code, args))
    return Step(None, lambda fx, _: fx.info(cid, text, code, args))


class Chat:
    def __init__(self, store: Store, limits: ChatLimits = ChatLimits(), metrics: WorkerMetrics | None = None) -> None:
        self.store = store
        self.limits = limits
        self.metrics = WorkerMetrics() if metrics is None else metrics
        self._plans: dict[type, Callable[[At, Any], Step]] = {
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
            c.Ping: lambda at, cmd: _reply("info", at.cid, "pong", R.PONG),
            c.Json: self._json,
            c.Help: self._help,
            c.Quit: self._quit,
        }

    # --- driving -------------------------------------------------------------------

    def handle(self, item: WorkItem, now: float, fx: Effects | None = None) -> Effects:
        """Handle one event into `fx` (a dispatch of one)."""
        fx = Effects() if fx is None else fx
        fx.items.extend(self.handle_batch([item], now)[0].items)
        return fx

    def handle_batch(self, items: list[WorkItem], now: float) -> list[Effects]:
        """Handle a dispatch: one round trip to Redis for all its lines -> effects per item."""
        out = [Effects() for _ in items]
        plans = [self._guarded(fx, item, partial(self.plan, item, now)) or []
                 for item, fx in zip(items, out, strict=True)]
        calls = [step.call for steps in plans for step in steps if step.call]
        results = iter(self.store.run(calls))
        for item, steps, fx in zip(items, plans, out, strict=True):
            mine = iter([next(results) for step in steps if step.call])
            self._guarded(fx, item, partial(self._respond, fx, item, steps, mine))
        return out

    def _guarded(self, fx: Effects, item: WorkItem, work: Callable[[], Any]) -> Any:
        """The one guard of an event's work (its plan, its response): a bug costs that event only.

        Redis failing is not a bug: it goes up to the worker, which answers the whole dispatch."""
        try:
            return work()
        except redis.RedisError:
            raise
        except Exception:
            self.metrics.internal_error()
            log.exception("failed to handle %r", item)
            if isinstance(item, (Lines, Connected)):
                fx.error(item.cid, INTERNAL_ERROR, R.INTERNAL_ERROR)
            return None

    def planned_commands(self) -> frozenset[type]:
        """The command types this chat has a plan for: all of `protocol.commands.Command`."""
        return frozenset(self._plans)

    def _respond(self, fx: Effects, item: WorkItem, steps: list[Step], results: Iterator[Any]) -> None:
        for i, step in enumerate(steps):
            result = next(results) if step.call else None
            if isinstance(result, Gone):  # what was planned after it met a session that is gone too
                self._recover_and_rerun(fx, item, steps[i:])
                return
            self._answer(fx, item, step, result)

    def _answer(self, fx: Effects, item: WorkItem, step: Step, result: Any) -> None:
        if isinstance(result, Exception) and not isinstance(result, redis.RedisError):
            raise result  # a reply that did not parse: a bug, for the event's guard
        if isinstance(result, redis.RedisError):  # a per-call error from Redis
            log.warning("redis refused a call for %s: %s", getattr(item, "cid", item), result)
            self.metrics.redis_failed(redis_cause(result))
            if isinstance(item, Lines):
                self.metrics.refused(RefusedCause.UNAVAILABLE)
                fx.error(item.cid, UNAVAILABLE, R.UNAVAILABLE)
            elif isinstance(item, (Connected, Disconnected)):
                fx.unserved = True  # a connect or departure must happen: its gateway sends it again
            return
        step.respond(fx, result)

    def _recover_and_rerun(self, fx: Effects, item: WorkItem, steps: list[Step]) -> None:
        """Redis forgot a live connection: register it again, say so, go on one by one."""
        cid = getattr(item, "cid", "")
        nick = self.store.run_one(self.store.connect(cid, gateway_of(cid), ""))
        if nick is None:
            fx.error(cid, GATEWAY_GONE, R.GATEWAY_GONE)
            fx.close(cid, GATEWAY_LOST_REASON)
            return
        fx.info(cid, SESSION_LOST.format(nick=nick), R.SESSION_LOST, (nick,))
        for step in steps:
            result = self.store.run([step.call])[0] if step.call else None
            if isinstance(result, Gone):
                return  # gone again (reaped meanwhile): nothing more to do for it
            self._answer(fx, item, step, result)

    # --- planning ----------------------------------------------------------------------

    def plan(self, item: WorkItem, now: float) -> list[Step]:
        match item:
            case Lines(cid, seq, lines):
                return self._plan_lines(cid, seq, lines, now)
            case Connected(cid, _, addr):
                return [Step(self.store.connect(cid, gateway_of(cid), addr),
                             lambda fx, nick: self._greet(fx, cid, nick))]
            case Disconnected(cid, seq, reason):
                return [self._leave((seq, seq), cid, reason)]
            case GatewayLost(gateway):
                return [Step(self.store.reap(gateway), self._reaped)]
        raise TypeError(f"cannot plan {item!r}")

    def _plan_lines(self, cid: str, event: int, lines: tuple[str, ...], now: float) -> list[Step]:
        steps: list[Step] = []
        for offset, line in enumerate(lines):
            if offset == self.limits.max_event_lines:  # a gateway never sends so many: refuse the rest
                limit = self.limits.max_event_lines
                self.metrics.refused(RefusedCause.TOO_MANY_LINES, len(lines) - offset)
                steps.append(_reply("error", cid, TOO_MANY_LINES.format(max=limit), R.TOO_MANY_LINES, (str(limit),)))
                break
            if self._too_long(line):
                self.metrics.refused(RefusedCause.TOO_LONG)
                steps.append(_reply("error", cid, LineError(LineProblem.TOO_LONG, self.limits.max_line).message(),
                                    R.LINE_TOO_LONG, (str(self.limits.max_line),)))
                continue
            try:
                cmd = c.parse_line(line)
            except CommandError as exc:
                steps.append(_reply("error", cid, str(exc), exc.code, exc.details))
                continue
            if cmd is None:
                continue
            step = self._plans[type(cmd)](At(cid, event, event + offset, now), cmd)
            steps.append(step)
            if step.last:
                break  # lines after /quit are not for anyone
        return steps

    def _too_long(self, line: str) -> bool:
        """Longer than max_line bytes of UTF-8 (a character is 1 to 4 of them)."""
        return len(line) * 4 > self.limits.max_line and len(line.encode()) > self.limits.max_line

    def _greet(self, fx: Effects, cid: str, nick: str | None) -> None:
        if nick is None:
            fx.error(cid, GATEWAY_GONE, R.GATEWAY_GONE)
            fx.close(cid, GATEWAY_LOST_REASON)
            return
        fx.info(cid, f"welcome! you are {nick}: /nick NAME to change it, /join #room to talk, /help for all commands",
                R.WELCOME, (nick,))

    def _reaped(self, fx: Effects, gone: list[tuple[str, list[str]]]) -> None:
        for nick, others in gone:
            fx.deliver(others, ChatEvent(EventType.QUIT, f"{nick} quit (connection lost)", sender=nick,
                                         code=R.QUIT, args=("connection lost",)))

    def _leave(self, op: tuple[int, int], cid: str, reason: str) -> Step:
        def respond(fx: Effects, gone: tuple[str, list[str]] | None) -> None:
            if gone is None:
                return
            nick, others = gone
            text = f"{nick} quit" + (f" ({reason})" if reason else "")
            fx.deliver(others, ChatEvent(EventType.QUIT, text, sender=nick, code=R.QUIT, args=(reason,)))

        return Step(self.store.leave(op, cid), respond)

    # --- one plan per command --------------------------------------------------------------

    def _quit(self, at: At, cmd: c.Quit) -> Step:
        leave = self._leave(at.op, at.cid, cmd.reason)

        def respond(fx: Effects, gone: Any) -> None:
            fx.info(at.cid, "bye", R.BYE)
            leave.respond(fx, gone)
            fx.close(at.cid, "quit")

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
        def respond(fx: Effects, res: Failed | tuple[str, bool, list[str], list[str], str, int, list[str]]) -> None:
            if isinstance(res, Failed):
                limit = self.store.max_rooms
                fx.error(at.cid, TOO_MANY_ROOMS.format(max=limit), R.TOO_MANY_ROOMS, (str(limit), cmd.room))
                return
            nick, added, members, nicks, topic, seq, gateways = res
            names = sorted(nicks, key=str.lower)
            fx.info(at.cid, f"you joined {cmd.room} ({len(members)} here: {', '.join(names)})",
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

    def _to_room(self, at: At, room: str | None, text: str, kind: EventType) -> Step:
        def respond(fx: Effects, res: Failed | tuple[str, str, list[str], float, int]) -> None:
            if isinstance(res, Failed):
                _refuse(fx, at.cid, res, NO_ROOM)
                return
            nick, where, gateways, ts, seq = res
            event = ChatEvent(kind, text, room=where, sender=nick, id=at.mid, ts=ts, origin=at.cid)
            fx.room(gateways, RoomEvent(where, seq, event))

        return Step(self.store.say(at.op, at.cid, room, text, at.mid, at.now, kind.value), respond)

    def _say(self, at: At, cmd: c.Say) -> Step:
        return self._to_room(at, None, cmd.text, EventType.MESSAGE)

    def _me(self, at: At, cmd: c.Me) -> Step:
        return self._to_room(at, cmd.room, cmd.text, EventType.ACTION)

    def _msg(self, at: At, cmd: c.Msg) -> Step:
        if cmd.target.startswith("#"):
            return self._to_room(at, cmd.target, cmd.text, EventType.MESSAGE)

        def respond(fx: Effects, res: Failed | tuple[str, str, str, float]) -> None:
            if isinstance(res, Failed):
                fx.error(at.cid, f"no such nick: {cmd.target}", R.NO_SUCH_NICK, (cmd.target,))
                return
            nick, to_cid, to_nick, ts = res
            # to yourself: no origin, so text mode shows it once (`*nick* text`), as JSON mode does
            origin = "" if to_cid == at.cid else at.cid
            event = ChatEvent(EventType.PRIVATE, cmd.text, sender=nick, to=to_nick, id=at.mid, ts=ts,
                              origin=origin)
            fx.deliver(dict.fromkeys((to_cid, at.cid)), event)

        return Step(self.store.private(at.op, at.cid, cmd.target, at.now), respond)

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
