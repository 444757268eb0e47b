"""The worker's Prometheus metrics: a fixed set, every label value from a fixed enum.

`WorkerMetrics` lives in each worker process, on a registry of its own
(never the library's global one). Under `chat-worker -n N` the pool
parent runs prometheus_client's multiprocess mode: it makes a private
directory, names it in PROMETHEUS_MULTIPROC_DIR before it spawns the
children (a spawned child inherits the environment at exec, so the
library reads it on import), and serves a `MultiProcessCollector` over
that directory. The counters and the histogram of a child that died are
kept, so totals never go back; the breaker gauge is `livesum`: the number
of live processes whose breaker is open, a dead one's gone with it.

A restarted child writes new files (they are named by pid), so a crash
loop would grow the directory and every scrape without bound:
`ChildMetrics.retire` folds a dead child's counters and histogram into
one archive file per type and removes its files, under the lock that each
scrape takes, so no scrape sees a total go down or counted twice.

The parent's own metrics (processes alive, restarts) are not library
values at all (which would take the multiprocess path and write files of
their own): `PoolMetrics` is a collector that reports two numbers the
pool keeps.
"""

from __future__ import annotations

import enum
import os
import threading
from collections.abc import Iterator

import redis
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.mmap_dict import MmapedDict
from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead
from prometheus_client.registry import Collector

from protocol.hops import HOP_BUCKETS, HOP_HELP, HOP_METRIC, WORKER_HOPS, Hop
from protocol.messages import Connected, Disconnected, GatewayLost, Lines, WorkItem

# buffered metrics (`WorkerMetrics.flush`): written at least this often while some wait, and at once
# when this many round trips wait
FLUSH_EVERY = 0.25
FLUSH_MAX = 1024

# seconds: 0.5 ms to 2.5 s, roughly 1-2.5-5 a decade
REDIS_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


class EventKind(enum.StrEnum):
    CONNECT = "connect"
    LINES = "lines"
    DISCONNECT = "disconnect"
    GATEWAY_LOST = "gateway_lost"


class RedisCause(enum.StrEnum):
    CONNECTION = "connection"  # no link to Redis (refused, reset, closed)
    TIMEOUT = "timeout"  # no answer within --redis-timeout
    RESPONSE = "response"  # Redis answered with an error (OOM, a script error) or garbage
    BREAKER_OPEN = "breaker_open"  # a dispatch failed fast: no round trip was tried


class RefusedCause(enum.StrEnum):
    TOO_LONG = "too_long"
    TOO_MANY_LINES = "too_many_lines"
    UNAVAILABLE = "unavailable"


_KINDS: dict[type, EventKind] = {
    Connected: EventKind.CONNECT,
    Lines: EventKind.LINES,
    Disconnected: EventKind.DISCONNECT,
    GatewayLost: EventKind.GATEWAY_LOST,
}


def event_kind(item: WorkItem) -> EventKind:
    return _KINDS[type(item)]


def redis_cause(exc: redis.RedisError) -> RedisCause:
    """The fixed cause of a Redis failure (never its text)."""
    if isinstance(exc, redis.TimeoutError):
        return RedisCause.TIMEOUT
    if isinstance(exc, redis.ConnectionError):
        return RedisCause.CONNECTION
    return RedisCause.RESPONSE


class WorkerMetrics:
    """One worker process's metrics, updated by the handler, the chat and the store.

    `buffered`: what every dispatch adds (its events, lines, the round trip's time) is kept in plain
    numbers and written to the library's values by `flush`, which the worker loop calls at least every
    FLUSH_EVERY seconds while there is something to write: under the pool's multiprocess mode each
    write is a locked write to a shared file, several a dispatch. Unbuffered, each is written at once."""

    def __init__(self, registry: CollectorRegistry | None = None, buffered: bool = False) -> None:
        self.registry = CollectorRegistry() if registry is None else registry
        r = self.registry
        self.events = Counter("chat_worker_events", "Events taken from the broker, by kind "
                              "(an event sent again counts again)", ["kind"], registry=r)
        self.lines = Counter("chat_worker_lines", "Client lines in the events taken", registry=r)
        self.dispatches = Counter("chat_worker_dispatches", "Dispatches (messages of events) from the broker",
                                  registry=r)
        self.redis_round_trip = Histogram("chat_worker_redis_round_trip_seconds",
                                          "One pipelined round trip to Redis, failed ones included",
                                          buckets=REDIS_BUCKETS, registry=r)
        self.redis_errors = Counter("chat_worker_redis_errors", "Redis failures, by cause", ["cause"], registry=r)
        self.internal_errors = Counter("chat_worker_internal_errors",
                                       "Events that cost '! internal error' (a bug)", registry=r)
        self.malformed = Counter("chat_worker_malformed", "Frames from the broker dropped unread: not a "
                                 "message, or an event whose body is not the one its key names", registry=r)
        self.lines_refused = Counter("chat_worker_lines_refused", "Lines refused, by cause", ["cause"], registry=r)
        self.breaker_open = Gauge("chat_worker_breaker_open", "Worker processes failing fast after a Redis failure",
                                  multiprocess_mode="livesum", registry=r)
        self._breaker_shown: bool | None = None
        self.hops = Histogram("chat_worker_" + HOP_METRIC, HOP_HELP, ["hop"], buckets=HOP_BUCKETS, registry=r)
        self.redis_spent = 0.0  # seconds of Redis round trips so far: a sampled dispatch's share is a difference
        for hop in WORKER_HOPS:
            self.hops.labels(hop)
        self._events_of = {kind: self.events.labels(kind) for kind in EventKind}  # labels() costs a lookup a call
        for cause in RedisCause:
            self.redis_errors.labels(cause)
        for refused in RefusedCause:
            self.lines_refused.labels(refused)
        self.buffered = buffered
        self._dispatches = 0  # what `flush` has still to write
        self._kinds: dict[EventKind, int] = dict.fromkeys(EventKind, 0)
        self._lines = 0
        self._round_trips: list[float] = []
        self.pending = False  # something is waiting for `flush`

    def took(self, items: list[WorkItem], dispatches: int = 1) -> None:
        """A dispatch of events from the broker (or `dispatches` of them, served together)."""
        if not items:
            return
        self._dispatches += dispatches
        kinds = self._kinds
        for item in items:
            kinds[event_kind(item)] += 1
            if isinstance(item, Lines):
                self._lines += len(item.lines)
        self._wrote()

    def redis_observed(self, seconds: float) -> None:
        """One pipelined round trip to Redis (the store calls this)."""
        self._round_trips.append(seconds)
        self.redis_spent += seconds
        self._wrote()

    def _wrote(self) -> None:
        self.pending = True
        if not self.buffered or len(self._round_trips) >= FLUSH_MAX:
            self.flush()

    def flush(self) -> None:
        """Write what the dispatches since the last flush added."""
        if not self.pending:
            return
        if self._dispatches:
            self.dispatches.inc(self._dispatches)
            self._dispatches = 0
        for kind, n in self._kinds.items():
            if n:
                self._events_of[kind].inc(n)
                self._kinds[kind] = 0
        if self._lines:
            self.lines.inc(self._lines)
            self._lines = 0
        for seconds in self._round_trips:
            self.redis_round_trip.observe(seconds)
        self._round_trips.clear()
        self.pending = False

    def sampled_dispatch(self, work: float, redis_part: float) -> None:
        """A dispatch holding a sampled event (protocol.hops): in to Done out, and its Redis share."""
        self.hops.labels(Hop.WORK).observe(max(0.0, work))
        self.hops.labels(Hop.REDIS).observe(max(0.0, redis_part))

    def refused(self, cause: RefusedCause, lines: int = 1) -> None:
        if lines > 0:
            self.lines_refused.labels(cause).inc(lines)

    def redis_failed(self, cause: RedisCause) -> None:
        self.redis_errors.labels(cause).inc()

    def internal_error(self, events: int = 1) -> None:
        self.internal_errors.inc(events)

    def breaker(self, is_open: bool) -> None:
        if is_open is not self._breaker_shown:  # called on every message: write only a change
            self.breaker_open.set(1 if is_open else 0)
            self._breaker_shown = is_open


class PoolMetrics(Collector):
    """The pool parent's numbers, reported as they are at each scrape."""

    def __init__(self) -> None:
        self.alive = 0
        self.restarts = 0

    def collect(self) -> Iterator[Metric]:
        yield GaugeMetricFamily("chat_worker_processes_alive", "Worker processes running", value=self.alive)
        yield CounterMetricFamily("chat_worker_restarts", "Worker processes started again after one exited",
                                  value=self.restarts)


FOLDED_TYPES = ("counter", "histogram")  # what outlives a process; live gauges go with it


class ChildMetrics(Collector):
    """The children's metric files in `path`, summed at each scrape."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._files = MultiProcessCollector(None, path=path)
        self._lock = threading.Lock()  # a scrape (the HTTP thread) against a retirement (the pool)

    def collect(self) -> Iterator[Metric]:
        with self._lock:
            metrics = list(self._files.collect())
        yield from metrics

    def retire(self, pid: int) -> None:
        """A child exited: drop its live gauges, fold its totals into the archive."""
        with self._lock:
            mark_process_dead(pid, self.path)
            for typ in FOLDED_TYPES:
                self._fold(os.path.join(self.path, f"{typ}_{pid}.db"), os.path.join(self.path, f"{typ}_archive.db"))

    @staticmethod
    def _fold(dead: str, archive_path: str) -> None:
        if not os.path.exists(dead):
            return
        archive = MmapedDict(archive_path)
        try:
            for key, value, timestamp, _pos in MmapedDict.read_all_values_from_file(dead):
                archive.write_value(key, archive.read_value(key)[0] + value, timestamp)
        finally:
            archive.close()
        os.remove(dead)


def pool_registry(children: ChildMetrics, pool: PoolMetrics) -> CollectorRegistry:
    """What the pool parent serves: every child's files, and its own numbers."""
    registry = CollectorRegistry()
    registry.register(children)
    registry.register(pool)
    return registry
