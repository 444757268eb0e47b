"""The chat itself: client events and the store -> `Effects`.

`Chat.handle_batch(items, now)` is the whole behaviour of the protocol (README) for
a dispatch of events. Every line becomes a `Step` (`workers.steps`): at most one
store call (`workers.store.Call`) and a function that turns the call's result
into effects; each command's step comes from its plan (`workers.plans`). Room
messages and private messages next to each other in an event are planned as a
`Run` instead (`workers.runs`): one call and one answer for all of them, the same
effects as their steps would make. All the calls of a dispatch go to Redis in
one round trip, in order, then the steps respond in order. `now` (server time)
comes in as a value.

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
from functools import partial
from itertools import chain
from typing import Any

import redis

from protocol import commands as c
from protocol.errors import CommandError
from protocol.lines import LineError, LineProblem
from protocol.messages import (
    GATEWAY_GONE,
    GATEWAY_LOST_REASON,
    ChatEvent,
    Connected,
    Disconnected,
    EventType,
    GatewayLost,
    Lines,
    WorkItem,
    gateway_of,
)
from protocol.replies import ReplyCode as R
from workers.effects import Effects
from workers.metrics import RefusedCause, WorkerMetrics, redis_cause
from workers.plans import HISTORY_GAP, NO_ROOM, TOO_MANY_ROOMS, CommandPlans
from workers.runs import EventPlan, Stamp, stamp_of
from workers.steps import At, ChatLimits, Run, Step, reply
from workers.store import Call, Gone, Grouped, Recovered, SessionLost, Store

__all__ = [
    "HISTORY_GAP", "INTERNAL_ERROR", "NO_ROOM", "SESSION_LOST", "TOO_MANY_LINES", "TOO_MANY_ROOMS",
    "UNAVAILABLE", "At", "Chat", "ChatLimits", "Step",
]

log = logging.getLogger("chat.worker")

SESSION_LOST = "the service lost your session (a restart): you are now {nick}; /nick and /join again"
UNAVAILABLE = "service temporarily unavailable"
INTERNAL_ERROR = "internal error"
TOO_MANY_LINES = "too many lines at once (max {max}): the rest were dropped"
DEFAULT_LIMITS = ChatLimits()  # frozen: one shared default


class Chat:
    def __init__(self, store: Store, limits: ChatLimits = DEFAULT_LIMITS, metrics: WorkerMetrics | None = None) -> None:
        self.store = store
        self.limits = limits
        self.metrics = WorkerMetrics() if metrics is None else metrics
        self._commands = CommandPlans(store, limits)
        self._plans: dict[type, Callable[[At, Any], Step]] = self._commands.table()
        self._stamped = stamp_of(0.0)

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

    def _respond(self, fx: Effects, item: WorkItem, steps: list[Step | Run], results: Iterator[Any],
                 recovered: bool = False) -> None:
        for i, step in enumerate(steps):
            result = next(results) if step.call else None
            if isinstance(step, Run):
                if type(result) is list:  # every line of the run went through: all answered at once
                    step.respond(fx, result)
                    continue
                # otherwise each line as alone, with its own result
                alone = step.expand()
                each = result.each if type(result) is Grouped else [result] * len(alone)
                self._respond(fx, item, [*alone, *steps[i + 1:]], chain(each, results), recovered)
                return
            if isinstance(result, SessionLost):
                if isinstance(result, Recovered):  # the line that met the session gone: say so, first
                    nick = result.nick
                    fx.info(getattr(item, "cid", ""), SESSION_LOST.format(nick=nick), R.SESSION_LOST, (nick,))
                    recovered, result = True, result.result
                if isinstance(result, Gone):
                    if not recovered and step.call is not None:  # and what was planned after it
                        self._recover_and_rerun(fx, item, step.call, steps[i:])
                    return  # gone again after its recovery (reaped meanwhile): nothing more to do for it
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

    def _recover_and_rerun(self, fx: Effects, item: WorkItem, met: Call, steps: list[Step | Run]) -> None:
        """Redis forgot a live connection (the call `met`, of steps[0], found it gone): register it
        again, then run the rest of the event.

        The registration records itself for the line of `met` (one script, `Store.recover`), so that
        line's result comes back `Recovered`, which says so to the sender: on this run and on any
        replay of the event alike."""
        cid = getattr(item, "cid", "")
        nick = self.store.run_one(self.store.recover(cid, gateway_of(cid), met))
        if nick is None:
            fx.error(cid, GATEWAY_GONE, R.GATEWAY_GONE)
            fx.close(cid, GATEWAY_LOST_REASON, departed=True)  # refused: never registered again
            return
        results = iter(self.store.run([step.call for step in steps if step.call]))
        self._respond(fx, item, steps, results, recovered=True)

    # --- planning ----------------------------------------------------------------------

    def plan(self, item: WorkItem, now: float) -> list[Step | Run]:
        match item:
            case Lines(cid, seq, lines):
                return self._plan_lines(cid, seq, lines, now)
            case Connected(cid, _, addr):
                return [Step(self.store.connect(cid, gateway_of(cid), addr),
                             lambda fx, nick: self._greet(fx, cid, nick))]
            case Disconnected(cid, seq, reason):
                return [self._commands.leave((seq, seq), cid, reason)]
            case GatewayLost(gateway):
                return [Step(self.store.reap(gateway), self._reaped)]
        raise TypeError(f"cannot plan {item!r}")

    def _plan_lines(self, cid: str, event: int, lines: tuple[str, ...], now: float) -> list[Step | Run]:
        plan = EventPlan(self._commands, cid, event, self._stamp(now))
        limit, plans, short = self.limits.max_event_lines, self._plans, self.limits.max_line // 4
        for offset, line in enumerate(lines):
            if offset == limit:  # a gateway never sends so many: refuse the rest
                self.metrics.refused(RefusedCause.TOO_MANY_LINES, len(lines) - offset)
                plan.add(reply("error", cid, TOO_MANY_LINES.format(max=limit), R.TOO_MANY_LINES, (str(limit),)))
                break
            if len(line) <= short and not line.startswith("/"):  # plain text, as `c.parse_line` reads it
                text = line.strip() if line.isprintable() else c.clean_text(line)  # `clean_text`, its usual case inline
                if text:
                    plan.say(event + offset, text)
                continue
            if self._too_long(line):
                self.metrics.refused(RefusedCause.TOO_LONG)
                plan.add(reply("error", cid, LineError(LineProblem.TOO_LONG, self.limits.max_line).message(),
                               R.LINE_TOO_LONG, (str(self.limits.max_line),)))
                continue
            try:
                cmd = c.parse_line(line)
            except CommandError as exc:
                plan.add(reply("error", cid, str(exc), exc.code, exc.details))
                continue
            if cmd is None or plan.joins(event + offset, cmd):  # nothing to do, or a line of a run
                continue
            step = plans[type(cmd)](At(cid, event, event + offset, now), cmd)
            plan.add(step)
            if step.last:
                break  # lines after /quit are not for anyone
        return plan.done()

    def _stamp(self, now: float) -> Stamp:
        """`now` as the runs take it, made once a dispatch (its events share the same `now`)."""
        if now is not self._stamped.now:
            self._stamped = stamp_of(now)
        return self._stamped

    def _too_long(self, line: str) -> bool:
        """Longer than max_line bytes of UTF-8 (a character is 1 to 4 of them)."""
        return len(line) * 4 > self.limits.max_line and len(line.encode()) > self.limits.max_line

    def _greet(self, fx: Effects, cid: str, nick: str | None) -> None:
        if nick is None:
            fx.error(cid, GATEWAY_GONE, R.GATEWAY_GONE)
            fx.close(cid, GATEWAY_LOST_REASON, departed=True)  # refused: the chat holds nothing of it
            return
        fx.info(cid, f"welcome! you are {nick}: /nick NAME to change it, /join #room to talk, /help for all commands",
                R.WELCOME, (nick,))

    def _reaped(self, fx: Effects, gone: list[tuple[str, list[str]]]) -> None:
        for nick, others in gone:
            fx.deliver(others, ChatEvent(EventType.QUIT, f"{nick} quit (connection lost)", sender=nick,
                                         code=R.QUIT, args=("connection lost",)))

