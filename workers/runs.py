"""Runs: the like lines next to each other in one event, planned and answered at once.

A worker's busiest work is the room message: a loaded connection's event carries
a dozen lines or more (those that came while its event before was in flight),
nearly all plain text to its current room. The room messages next to each other
in an event (plain text, /me, /msg #room) make one `RoomRun`, the private
messages (/msg NICK) one `PrivateRun`: one store call for the whole run, the same
one the lines' own calls would make joined (`workers.store`), so Redis sees,
records and replays exactly what it would for the lines one by one. When every
line went through (the usual case), one loop turns the reply into all the lines'
effects, working out once what they share: the time stamp and the gateways of a
room. Any other outcome (a line refused, a lost session, an error) expands the
run into the steps its lines plan alone (`workers.plans`), which answer each
line as they always have: the effects are the same either way.

`EventPlan` collects an event's steps, with its like lines in runs.
"""

from __future__ import annotations

from typing import Any, NamedTuple

from protocol import commands as c
from protocol.messages import ChatEvent, Deliver, EventType, RoomEvent, maker
from workers.effects import Effects
from workers.plans import CommandPlans
from workers.steps import At, Run, Step
from workers.store import BATCH_MAX

_new_event = maker(ChatEvent)  # every field, in order: the fastest construction
_new_room_event = maker(RoomEvent)
_new_deliver = maker(Deliver)
_MESSAGE, _ACTION, _PRIVATE = EventType.MESSAGE, EventType.ACTION, EventType.PRIVATE


class Stamp(NamedTuple):
    """The time of a dispatch as its runs use it: as given (for the lines' own steps), as the store
    sends it (`repr`, as `Store.say` makes it) and as a reply's ts of that text reads (`float`)."""

    now: float
    text: str
    ts: float


def stamp_of(now: float) -> Stamp:
    text = repr(now)
    return Stamp(now, text, float(text))


class RoomRun:
    """Room messages of one event, in order: each line (its number, room or '' for the current one,
    text, kind), as `Store.say_run` takes them; a line's message ID is its own (`<cid>/<number>`)."""

    __slots__ = ("cid", "event", "lines", "now", "plans", "stamp", "ts")

    def __init__(self, plans: CommandPlans, cid: str, event: int, stamp: Stamp) -> None:
        self.plans, self.cid, self.event = plans, cid, event
        self.now, self.stamp, self.ts = stamp
        self.lines: list[tuple[int, str, str, EventType]] = []

    def step(self) -> Run:
        return Run(self.plans.store.say_run(self.cid, self.event, self.stamp, self.lines), self.respond, self.expand)

    def respond(self, fx: Effects, replies: list[list[Any]]) -> None:
        """Every line went through: each `['ok', nick, room, gateways, ts, room seq]` -> its room event,
        those to the same gateways next to each other in one group (`Effects.rooms`)."""
        cid, now, stamp = self.cid, self.ts, self.stamp
        gateways: list[str] | None = None
        events: list[RoomEvent] = []
        for (seq, _, text, kind), res in zip(self.lines, replies, strict=True):
            room, ts = res[2], res[4]
            if res[3] != gateways:
                gateways = res[3]
                events = fx.rooms(tuple(dict.fromkeys(res[3])))
            event = _new_event(kind, text, room, res[1], "", f"{cid}/{seq}", now if ts == stamp else float(ts), cid,
                               "", "", ())
            events.append(_new_room_event(room, res[5], event, "", 0))

    def expand(self) -> list[Step]:
        """The steps of the lines alone (`CommandPlans.to_room`)."""
        cid, event, now = self.cid, self.event, self.now
        return [self.plans.to_room(At(cid, event, seq, now), room or None, text, kind)
                for seq, room, text, kind in self.lines]


class PrivateRun:
    """Private messages of one event, in order: each line (its number, target nick), as
    `Store.private_run` takes them, and its text."""

    __slots__ = ("cid", "event", "lines", "now", "plans", "stamp", "texts", "ts")

    def __init__(self, plans: CommandPlans, cid: str, event: int, stamp: Stamp) -> None:
        self.plans, self.cid, self.event = plans, cid, event
        self.now, self.stamp, self.ts = stamp
        self.lines: list[tuple[int, str]] = []
        self.texts: list[str] = []

    def step(self) -> Run:
        return Run(self.plans.store.private_run(self.cid, self.event, self.stamp, self.lines), self.respond,
                   self.expand)

    def respond(self, fx: Effects, replies: list[list[Any]]) -> None:
        """Every line went through: each `['ok', nick, to cid, to nick, ts]` -> its delivery, as
        `CommandPlans.private` makes it."""
        cid, now, stamp, out = self.cid, self.ts, self.stamp, fx.items
        for (seq, _), text, res in zip(self.lines, self.texts, replies, strict=True):
            to_cid, ts = res[2], res[4]
            # to yourself: no origin, so text mode shows it once (`*nick* text`), as JSON mode does
            origin = "" if to_cid == cid else cid
            event = _new_event(_PRIVATE, text, "", res[1], res[3], f"{cid}/{seq}",
                               now if ts == stamp else float(ts), origin, "", "", ())
            out.append(_new_deliver((to_cid, cid) if origin else (cid,), event))

    def expand(self) -> list[Step]:
        """The steps of the lines alone (`CommandPlans.private`)."""
        cid, event, now = self.cid, self.event, self.now
        return [self.plans.private(At(cid, event, seq, now), target, text)
                for (seq, target), text in zip(self.lines, self.texts, strict=True)]


class EventPlan:
    """The steps of one event's lines, in order, its like lines next to each other in runs (at most
    BATCH_MAX lines each, as the store joins calls)."""

    __slots__ = ("cid", "event", "plans", "run", "stamp", "steps")

    def __init__(self, plans: CommandPlans, cid: str, event: int, stamp: Stamp) -> None:
        self.plans, self.cid, self.event, self.stamp = plans, cid, event, stamp
        self.steps: list[Step | Run] = []
        self.run: RoomRun | PrivateRun | None = None

    def add(self, step: Step) -> None:
        """A line's own step, after the run before it."""
        self._close()
        self.steps.append(step)

    def say(self, seq: int, text: str, room: str | None = None, kind: EventType = _MESSAGE) -> None:
        """Line `seq`: a room message, `text` to `room` (None: the current one)."""
        run = self.run
        if type(run) is not RoomRun or len(run.lines) == BATCH_MAX:
            run = self._room()
        run.lines.append((seq, room or "", text, kind))

    def private(self, seq: int, target: str, text: str) -> None:
        """Line `seq`: a private message, `text` to the nick `target`."""
        run = self.run
        if type(run) is not PrivateRun or len(run.lines) == BATCH_MAX:
            run = self._private()
        run.lines.append((seq, target))
        run.texts.append(text)

    def joins(self, seq: int, cmd: c.Command) -> bool:
        """Line `seq`'s command added to a run -> whether it is one that runs take."""
        if type(cmd) is c.Msg:
            if cmd.target.startswith("#"):
                self.say(seq, cmd.text, cmd.target)
            else:
                self.private(seq, cmd.target, cmd.text)
        elif type(cmd) is c.Me:
            self.say(seq, cmd.text, cmd.room, _ACTION)
        elif type(cmd) is c.Say:  # plain text the chat did not take as such at once (long, or //)
            self.say(seq, cmd.text)
        else:
            return False
        return True

    def done(self) -> list[Step | Run]:
        self._close()
        return self.steps

    def _room(self) -> RoomRun:
        self._close()
        run = self.run = RoomRun(self.plans, self.cid, self.event, self.stamp)
        return run

    def _private(self) -> PrivateRun:
        self._close()
        run = self.run = PrivateRun(self.plans, self.cid, self.event, self.stamp)
        return run

    def _close(self) -> None:
        if self.run is not None:
            self.steps.append(self.run.step())
            self.run = None
