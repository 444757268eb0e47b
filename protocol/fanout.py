"""A batch's deliveries grouped into runs: one push per client per run, not per delivery.

A gateway shows a pub-out batch's deliveries `(cids, event)` in order. Most
of them go to an audience it has seen just before: the room table hands out
one tuple object for a room's members while nobody joins or leaves it
(protocol.rooms), and a batch carries a room's messages a dozen at a time.
So deliveries to the same tuple are kept together as a run (the events, in
order) until one to a client of theirs comes between, and each client of the
run gets them all at once: one rendering per event and view, one join, one
push per client.

Order: every client must get its events in the order they came. Runs that
are open at the same time never share a client: a delivery to an audience
that shares a client with the open runs hands them all on first (`emit`,
what came before it). So a client's events are in at most one open run, in
order, and the runs handed on before it hold its earlier events. `settle`
hands on what is open (runs that share no client, in any order): before
anything that acts on a client otherwise (a mode change, a close) and at the
end of the batch. The checks are set operations, not a Python step per client.

An audience is known by its identity (`id`), while its run is open (the run
holds the tuple, so the id cannot be reused meanwhile). Equal tuples that are
different objects are different audiences: correct, only not grouped. An
audience that names a client twice (only an outside publisher's can) is
never grouped: it is handed on at once, each copy in a row, as before.
Pure: no I/O, `emit` is the caller's.
"""

from __future__ import annotations

from collections.abc import Callable

from protocol.messages import ChatEvent

Emit = Callable[[tuple[str, ...], list[ChatEvent]], None]


class Runs:
    """The open runs of one batch, by audience."""

    __slots__ = ("_emit", "_open", "_taken")

    def __init__(self, emit: Emit) -> None:
        self._emit = emit
        self._open: dict[int, tuple[tuple[str, ...], list[ChatEvent]]] = {}  # id(audience) -> run
        self._taken: set[str] = set()  # the clients of the open runs

    def add(self, cids: tuple[str, ...], event: ChatEvent) -> None:
        """Show `event` to `cids` after everything added before."""
        run = self._open.get(id(cids))
        if run is not None:
            run[1].append(event)
            return
        taken = self._taken
        if not taken.isdisjoint(cids):  # some of them have events waiting: those go first
            self.settle()
        before = len(taken)
        taken.update(cids)
        if len(taken) - before < len(cids):  # a cid twice (an outside publisher's): each copy in a row, now
            taken.difference_update(cids)
            self._emit(cids, [event])
            return
        self._open[id(cids)] = (cids, [event])

    def settle(self) -> None:
        """Hand on every open run (they share no client: the order between them is free)."""
        if self._open:
            runs = list(self._open.values())
            self._open.clear()
            self._taken.clear()
            for cids, events in runs:
                self._emit(cids, events)
