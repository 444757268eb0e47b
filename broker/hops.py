"""The broker's clocks for sampled events (protocol.hops): queue and publish times.

An event whose key carries the sampled flag starts a clock when it is
queued; its dispatch stops it (hop `queue`) and remembers its (cid, seq);
the Done that names it is timed from its arrival to its publication (hop
`publish`). Keys are read, bodies never. At most MAX_TRACKED clocks run
at once (a sampled event lost with its worker or its gateway ages out,
the oldest first), and with no sampled event about, each step costs one
test of an empty dict.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

from protocol import codec
from protocol.hops import MAX_TRACKED, Hop, HopTimes, is_sampled

K = TypeVar("K")


def _bounded_put(clocks: dict[K, float], key: K, now: float) -> None:
    if len(clocks) >= MAX_TRACKED:
        del clocks[next(iter(clocks))]
    clocks[key] = now


class BrokerHops:
    """Clocks of the sampled events between their arrival and their Done."""

    __slots__ = ("_dispatched", "_queued", "times")

    def __init__(self, times: HopTimes) -> None:
        self.times = times
        self._queued: dict[bytes, float] = {}  # key -> when it was queued
        self._dispatched: dict[tuple[str, int], float] = {}  # (cid, seq) -> when it was dispatched

    def queued(self, key: bytes, now: float) -> None:
        """An event was queued (a first arrival, not a duplicate)."""
        if is_sampled(key):
            _bounded_put(self._queued, key, now)

    def dispatched(self, frames: list[bytes], clock: Callable[[], float] = time.monotonic) -> None:
        """A dispatch [key, event, ...] went to a worker (the clock is read only for a sampled one)."""
        if not self._queued:
            return
        now = clock()
        for key in frames[::2]:
            started = self._queued.pop(key, None)
            if started is not None:  # a key queued here: it decodes
                self.times.observe(Hop.QUEUE, now - started)
                _bounded_put(self._dispatched, codec.decode_key(key), now)

    def answered(self, events: tuple[tuple[str, int], ...]) -> bool:
        """A Done came for `events` -> whether one of them was sampled (its publish is timed)."""
        if not self._dispatched:
            return False
        hit = False
        for event in events:
            hit = self._dispatched.pop(event, None) is not None or hit
        return hit

    def published(self, arrived: float, now: float) -> None:
        self.times.observe(Hop.PUBLISH, now - arrived)
