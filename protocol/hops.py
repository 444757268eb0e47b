"""Per-hop times of a sample of events: the hops, their metric, the sampling flag.

One client event in `--hop-sample` N (chosen by its gateway) is timed at
every hop it passes, each process on its own monotonic clock (so nothing
depends on clocks agreeing across machines):

    gateway  wait        a client's read -> its event sent (behind the one in flight)
    gateway  round_trip  the event sent -> its answer (Mark) received
    broker   queue       the event in -> dispatched to a worker
    worker   work        the dispatch in -> its Done sent
    worker   redis       of which the Redis round trips
    broker   publish     the Done in -> published on pub-out
    gateway  flush       the pub-out batch with the answer received -> written to the clients

Each process shows its hops as one histogram family, `chat_<part>_hop_seconds`,
label `hop`. What the gateway's round trip holds beyond the broker's and the
worker's residences is transit: the network and the ZeroMQ queues.

A sampled event is marked in its key frame, the frame the broker routes on
(protocol.codec): the top bit of the key's 8-byte seq, which no real seq
reaches. The broker and the worker see the flag without reading a body.
"""

from __future__ import annotations

import bisect
import enum


class Hop(enum.StrEnum):
    """A stretch of a sampled event's way (label `hop`)."""

    WAIT = "wait"
    ROUND_TRIP = "round_trip"
    QUEUE = "queue"
    WORK = "work"
    REDIS = "redis"
    PUBLISH = "publish"
    FLUSH = "flush"


GATEWAY_HOPS = (Hop.WAIT, Hop.ROUND_TRIP, Hop.FLUSH)
BROKER_HOPS = (Hop.QUEUE, Hop.PUBLISH)
WORKER_HOPS = (Hop.WORK, Hop.REDIS)
# the residences inside the gateway's round trip: what is left of it is transit
INSIDE_ROUND_TRIP = (Hop.QUEUE, Hop.WORK, Hop.PUBLISH)

HOP_METRIC = "hop_seconds"  # after each part's prefix: chat_gateway_, chat_broker_, chat_worker_
HOP_HELP = "Per-hop times of a sample of client events (one in --hop-sample), by hop."
# seconds: 50 us to 5 s, roughly 1-2.5-5 a decade
HOP_BUCKETS = (0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
               2.5, 5.0)

SAMPLED_BIT = 0x80  # in the first byte of a key frame (the top bit of its seq)
MAX_HOP_SAMPLE = 1_000_000
MAX_TRACKED = 1024  # sampled events a process keeps a clock for at once (the oldest goes first)


def is_sampled(key: bytes) -> bool:
    """Whether a key frame carries the sampled flag."""
    return bool(key) and key[0] & SAMPLED_BIT != 0


class Sampler:
    """Picks one in `every` (0: none, and costs one comparison)."""

    __slots__ = ("_count", "every")

    def __init__(self, every: int) -> None:
        if not 0 <= every <= MAX_HOP_SAMPLE:
            raise ValueError(f"a hop sample is 0 (off) to {MAX_HOP_SAMPLE}, not {every}")
        self.every = every
        self._count = 0

    def pick(self) -> bool:
        if not self.every:
            return False
        self._count += 1
        if self._count < self.every:
            return False
        self._count = 0
        return True


class Histogram:
    """A Prometheus histogram as plain ints: cheap to observe from one thread, read by another."""

    __slots__ = ("bounds", "counts", "total")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)  # the last one: above every bound
        self.total = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.bounds, value)] += 1
        self.total += value

    def buckets(self) -> list[tuple[str, float]]:
        """Cumulative (le, count) pairs, +Inf last."""
        counts = list(self.counts)
        out: list[tuple[str, float]] = []
        running = 0
        for bound, count in zip((*map(str, self.bounds), "+Inf"), counts, strict=True):
            running += count
            out.append((bound, running))
        return out


class HopTimes:
    """One histogram per hop of a part (plain ints, as `Histogram`)."""

    __slots__ = ("hops",)

    def __init__(self, hops: tuple[Hop, ...]) -> None:
        self.hops = {hop: Histogram(HOP_BUCKETS) for hop in hops}

    def observe(self, hop: Hop, seconds: float) -> None:
        self.hops[hop].observe(max(0.0, seconds))


def quantile(buckets: list[tuple[float, float]], q: float) -> float | None:
    """The q-quantile of cumulative (upper bound, count) buckets, +Inf last, interpolated
    linearly inside its bucket (as Prometheus' histogram_quantile) -> None if empty."""
    if not buckets or buckets[-1][1] <= 0:
        return None
    rank = q * buckets[-1][1]
    lower, below = 0.0, 0.0
    for upper, count in buckets:
        if count >= rank and count > below:
            if upper == float("inf"):
                return lower  # above the last bound: the last bound is all we know
            return lower + (upper - lower) * (rank - below) / (count - below)
        lower, below = (upper if upper != float("inf") else lower), count
    return lower
