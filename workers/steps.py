"""The vocabulary between the driver (`workers.logic`) and the plans (`workers.plans`).

A line of a client becomes a `Step`: at most one store call
(`workers.store.Call`) and a function that turns the call's result into
effects. `At` says where the line stands (its connection, event, number
and the time); `ChatLimits` what one envelope or connection may cost.
`At` and `Step` are named tuples: every line makes one of each, and a
tuple is built twice as fast as a frozen dataclass.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NamedTuple

from protocol.lines import DEFAULT_MAX_LINE
from protocol.messages import MAX_EVENT_LINES
from workers.effects import Effects
from workers.store import Call


@dataclass(frozen=True, slots=True)
class ChatLimits:
    """What one envelope or one connection may cost, enforced where the data is stored."""

    max_line: int = DEFAULT_MAX_LINE  # bytes of UTF-8, as the gateway counts them
    max_event_lines: int = MAX_EVENT_LINES  # lines of one event
    rooms_shown: int = 50  # /rooms lists the biggest this many, then counts the rest

Respond = Callable[[Effects, Any], None]


class At(NamedTuple):
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


class Step(NamedTuple):
    """One line's work: a store call (or none) and what its result causes."""

    call: Call | None
    respond: Respond
    last: bool = False  # the connection is gone after this step (/quit)


class Run(NamedTuple):
    """A run of like lines of one event (`workers.runs`): one store call for all of them.

    `call`'s result is, when every line went through as planned, the script's reply, for
    `respond` to turn into all the lines' effects at once; otherwise (a line refused, a lost
    session, an error) the run is `expand`ed into the steps its lines would have been alone,
    which take each line's own result in turn (`workers.store.Grouped`)."""

    call: Call
    respond: Respond
    expand: Callable[[], list[Step]]
    last: bool = False  # a run never ends its connection


def reply(kind: str, cid: str, text: str, code: str = "", args: tuple[str, ...] = ()) -> Step:
    """A step with no store call: an info or error line for the sender."""
    if kind == "error":
        return Step(None, lambda fx, _: fx.error(cid, text, code, args))
    return Step(None, lambda fx, _: fx.info(cid, text, code, args))
