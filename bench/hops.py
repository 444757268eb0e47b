"""Where an event's milliseconds go: the stack's per-hop histograms (protocol.hops), per workload.

The stack runs with `CHAT_HOP_SAMPLE` (its gateways time one event in N at
every hop). A workload's meter scrapes every part's metrics endpoint before
and after it (`snapshot`); `summary` turns the difference into, per hop, the
number of samples, the mean and p50/p99 (from the histogram buckets,
interpolated as Prometheus does), and adds `transit`: the gateway's round
trip minus the residences it contains (broker queue, worker work, broker
publish), the network and ZeroMQ queues between them.

Each part's hops come from its own clock, and means add up where
percentiles do not: transit is a difference of means.
"""

from __future__ import annotations

import urllib.request
from dataclasses import dataclass, field
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from protocol.hops import HOP_METRIC, INSIDE_ROUND_TRIP, Hop, quantile

PARTS = ("gateway", "broker", "worker")
# the rows of the table, in the order an event meets them
ORDER = (("gateway", Hop.WAIT), ("broker", Hop.QUEUE), ("worker", Hop.WORK), ("worker", Hop.REDIS),
         ("broker", Hop.PUBLISH), ("gateway", Hop.ROUND_TRIP), ("gateway", Hop.FLUSH))
SCRAPE_TIMEOUT = 5.0


@dataclass
class HopCounts:
    """One hop's histogram, summed over the processes of a part."""

    buckets: dict[float, float] = field(default_factory=dict)  # upper bound -> cumulative count
    total: float = 0.0
    count: float = 0.0

    def add(self, other: HopCounts, sign: float = 1.0) -> None:
        for bound, n in other.buckets.items():
            self.buckets[bound] = self.buckets.get(bound, 0.0) + sign * n
        self.total += sign * other.total
        self.count += sign * other.count


Snapshot = dict[tuple[str, str], HopCounts]  # (part, hop) -> counts


def parse(text: str) -> Snapshot:
    """A scrape's text -> its per-hop histograms, by (part, hop); other families are ignored."""
    out: Snapshot = {}
    for family in text_string_to_metric_families(text):
        part = family.name.removeprefix("chat_").removesuffix("_" + HOP_METRIC)
        if part not in PARTS or family.name != f"chat_{part}_{HOP_METRIC}":
            continue
        for sample in family.samples:
            hop = sample.labels.get("hop")
            if hop is None:
                continue
            counts = out.setdefault((part, hop), HopCounts())
            if sample.name.endswith("_bucket"):
                bound = float(sample.labels["le"])
                counts.buckets[bound] = counts.buckets.get(bound, 0.0) + sample.value
            elif sample.name.endswith("_sum"):
                counts.total += sample.value
            elif sample.name.endswith("_count"):
                counts.count += sample.value
    return out


def merge(snapshots: list[Snapshot]) -> Snapshot:
    out: Snapshot = {}
    for snap in snapshots:
        for key, counts in snap.items():
            out.setdefault(key, HopCounts()).add(counts)
    return out


def scrape(addresses: dict[str, str]) -> Snapshot | None:
    """Every part's hops, summed (None if a part does not answer: no hop figures then)."""
    texts = []
    for address in addresses.values():
        try:
            with urllib.request.urlopen(f"http://{address}/metrics", timeout=SCRAPE_TIMEOUT) as resp:
                texts.append(resp.read().decode())
        except OSError:
            return None
    return merge([parse(text) for text in texts])


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 3)


def hop_summary(counts: HopCounts) -> dict[str, Any]:
    ordered = sorted(counts.buckets.items())
    n = round(counts.count)
    return {"n": n, "mean_ms": _ms(counts.total / counts.count) if n else None,
            "p50_ms": _ms(quantile(ordered, 0.5)) if n else None,
            "p99_ms": _ms(quantile(ordered, 0.99)) if n else None}


def summary(before: Snapshot | None, after: Snapshot | None) -> dict[str, dict[str, Any]]:
    """The hops of what happened between two snapshots -> {"gateway.wait": {n, mean_ms, p50_ms, p99_ms}, ...,
    "transit": {mean_ms}}; {} when a snapshot is missing or nothing was sampled."""
    if before is None or after is None:
        return {}
    out: dict[str, dict[str, Any]] = {}
    for part, hop in ORDER:
        delta = HopCounts()
        delta.add(after.get((part, hop.value), HopCounts()))
        delta.add(before.get((part, hop.value), HopCounts()), -1.0)
        if delta.count >= 1:
            out[f"{part}.{hop.value}"] = hop_summary(delta)
    round_trip = out.get("gateway.round_trip")
    inside = [out.get(f"{part}.{hop.value}") for part, hop in ORDER if hop in INSIDE_ROUND_TRIP]
    if round_trip is not None and all(row is not None for row in inside):
        rest = round_trip["mean_ms"] - sum(row["mean_ms"] for row in inside if row is not None)
        out["transit"] = {"n": round_trip["n"], "mean_ms": round(rest, 3), "p50_ms": None, "p99_ms": None}
    return out


COLUMNS = ("workload", "server", "sampled", "gw wait", "broker queue", "worker work", "of it Redis",
           "broker publish", "transit", "gw round trip", "gw flush", "client p50 / p99", "run queue ms/s")
_CELLS = ("gateway.wait", "broker.queue", "worker.work", "worker.redis", "broker.publish", "transit",
          "gateway.round_trip", "gateway.flush")


def _cell(row: dict[str, Any] | None) -> str:
    """`mean (p99)` in ms, or the mean alone (transit), or '-'."""
    if row is None or row.get("mean_ms") is None:
        return "-"
    p99 = row.get("p99_ms")
    return f"{row['mean_ms']:.2f}" + (f" ({p99:.2f})" if p99 is not None else "")


def rows(results: list[Any]) -> list[list[str]]:
    """One row per result that has hop figures (bench.measure.Result), for the Markdown table."""
    out = []
    for result in results:
        found = result.extra.get("hops") if result.error is None else None
        if not found:
            continue
        sampled = found.get("gateway.round_trip", {}).get("n", 0)
        client = "-" if result.p50_ms is None or result.p99_ms is None else f"{result.p50_ms:.2f} / {result.p99_ms:.2f}"
        waited = result.extra.get("run_queue_ms_per_s") or {}
        runq = ", ".join(f"{part} {ms:.0f}" for part, ms in waited.items() if ms >= 0.5) or "-"
        out.append([result.workload, result.server, f"{sampled:,}", *(_cell(found.get(c)) for c in _CELLS), client,
                    runq])
    return out


LEGEND = """Per-hop times of the sampled events (one in CHAT_HOP_SAMPLE, chosen by the gateway), in ms: mean
(p99 from the histogram buckets). gw wait: a client's read to its event sent (behind the connection's one event in
flight); broker queue: event in to dispatched; worker work: dispatch in to Done sent, of which the Redis round
trips; broker publish: Done in to published; transit: the gateway's round trip (event sent to its Mark received)
minus those residences (the network, ZeroMQ queues, waiting for a poll loop); gw flush: the pub-out batch with the
answer received to written to the clients. A client's latency is about wait + round trip + flush + its own read.
Run queue ms/s: per part (and the load generator), the milliseconds a second its threads were runnable but waited
for a CPU (/proc schedstat); 1000 is one thread waiting all the time."""
