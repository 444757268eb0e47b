"""One row of results, and the meter that fills in what it cost.

A workload calls `Meter.begin()` after its clients are set up and
`Meter.end(result)` after its drain: between the two the meter takes the
wall time, the load generator's own CPU (getrusage) and the CPU of every
process of the server under test (per-PID utime+stime differences, see
`procstats`). CPU per 100,000 deliveries divides the server's CPU by all
the deliveries of the measured phase, drain included, as they were paid
for in it. Latencies are summarised as p50/p99/max and as a histogram on
log-spaced bins for the plot. Given the stack's metrics endpoints, the meter
also reads the per-hop times of the sampled events before and after
(bench.hops) into `extra["hops"]`, outside the CPU it counts.
"""

from __future__ import annotations

import bisect
import itertools
import os
import time
from array import array
from dataclasses import dataclass, field
from typing import Any

from bench import hops
from bench.procstats import ProcessTree, Sample, cpu_used, own_cpu, run_queue_by_part, run_queue_wait

SATURATED = 0.9  # a load generator above this share of one core may be what limits the figures
HIST_EDGES_MS = [0.01 * (10 ** (i / 10)) for i in range(61)]  # 10 us .. 10 s, 10 bins a decade


@dataclass
class Result:
    workload: str
    server: str
    what: str = ""
    seconds: float | None = None  # the measured phase (sending), drain excluded
    sent: int | None = None
    deliveries: int | None = None  # benchmark lines received, all receivers, drain included
    msgs_per_s: float | None = None
    deliveries_per_s: float | None = None
    p50_ms: float | None = None
    p99_ms: float | None = None
    max_ms: float | None = None
    lost: int | None = None
    reordered: int | None = None
    duplicated: int | None = None
    server_cpu_s: float | None = None
    cpu_by_part: dict[str, float] = field(default_factory=dict)
    cpu_per_100k: float | None = None
    cpu_ms_per_op: float | None = None  # W3: a registration, W5: a cycle
    loadgen_cpu_share: float | None = None  # of one core
    loadgen_saturated: bool = False
    rss_per_conn_kib: dict[str, float] = field(default_factory=dict)
    connect_s: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    histogram_ms: list[int] = field(default_factory=list)
    error: str | None = None


class Meter:
    def __init__(self, tree: ProcessTree | None, metrics: dict[str, str] | None = None) -> None:
        self.tree = tree
        self.metrics = metrics or {}  # part -> HOST:PORT of its metrics: the per-hop times
        self._wall = 0.0
        self._own = 0.0
        self._snap: dict[int, Sample] = {}
        self._hops: hops.Snapshot | None = None
        self._own_runq = 0.0

    def begin(self) -> None:
        self._hops = hops.scrape(self.metrics) if self.metrics else None
        self._snap = self.tree.snapshot() if self.tree is not None else {}
        self._own = own_cpu()
        self._own_runq = run_queue_wait(os.getpid())
        self._wall = time.monotonic()

    def end(self, result: Result, deliveries: int) -> None:
        wall = max(time.monotonic() - self._wall, 1e-9)
        share = (own_cpu() - self._own) / wall
        result.loadgen_cpu_share = round(share, 3)
        result.loadgen_saturated = share > SATURATED
        if self.tree is not None:
            self._cpu(result, deliveries)
        if self._hops is not None:
            result.extra["hops"] = hops.summary(self._hops, hops.scrape(self.metrics))

    def _cpu(self, result: Result, deliveries: int) -> None:
        assert self.tree is not None
        after = self.tree.snapshot()
        total, by_part = cpu_used(self._snap, after)
        wall = max(time.monotonic() - self._wall, 1e-9)
        waited = run_queue_by_part(self._snap, after)
        waited["load-gen"] = run_queue_wait(os.getpid()) - self._own_runq
        if any(waited.values()):  # ms a second that each part's threads were runnable but not running
            result.extra["run_queue_ms_per_s"] = {part: round(s / wall * 1000, 1) for part, s in sorted(waited.items())}
        result.server_cpu_s = round(total, 3)
        result.cpu_by_part = {part: round(cpu, 3) for part, cpu in sorted(by_part.items())}
        if deliveries:
            result.cpu_per_100k = round(total / deliveries * 100_000, 3)


def add_latency(result: Result, latencies_ns: array) -> None:
    """p50/p99/max in ms and the histogram, from raw latencies in ns."""
    if not latencies_ns:
        return
    ordered = sorted(latencies_ns)
    n = len(ordered)
    result.p50_ms = round(ordered[n // 2] / 1e6, 3)
    result.p99_ms = round(ordered[min(n - 1, (n * 99) // 100)] / 1e6, 3)
    result.max_ms = round(ordered[-1] / 1e6, 3)
    edges_ns = [edge * 1e6 for edge in HIST_EDGES_MS]
    cuts = [bisect.bisect_left(ordered, edge) for edge in edges_ns]
    result.histogram_ms = [cuts[0]] + [b - a for a, b in itertools.pairwise(cuts)] + [n - cuts[-1]]


def rate(count: int | None, seconds: float | None) -> float | None:
    if count is None or not seconds:
        return None
    return round(count / seconds, 1)
