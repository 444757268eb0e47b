"""Per-hop times of sampled events, from a real chat-stack (broker, worker pool, gateway, Valkey).

With CHAT_HOP_SAMPLE=1 every client event is timed at every hop: each part's
`chat_<part>_hop_seconds` shows its hops with sane values, and bench.hops
reads them back (transit included). With sampling off (0), traffic adds
nothing to any hop.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from bench import hops
from bench.servers import metrics_of
from protocol.hops import BROKER_HOPS, GATEWAY_HOPS, WORKER_HOPS, Hop
from stack.children import Child, python_module, start, stop
from tests.e2e.chatclient import ChatClient
from tests.e2e.load import wait_until

NO_DOORS = ("--irc-port", "off", "--web-port", "off")
LINES = 30
PARTS = {"gateway": GATEWAY_HOPS, "broker": BROKER_HOPS, "worker": WORKER_HOPS}


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _stack(tmp_path: Path, sample: int) -> Iterator[tuple[int, dict[str, str]]]:
    env = {**os.environ, "TMPDIR": str(tmp_path), "CHAT_HOP_SAMPLE": str(sample)}
    port = _free_port()
    with (tmp_path / "stack.log").open("wb") as log:
        child: Child = start("stack", python_module(
            "stack.cli", "--port", str(port), "--host", "127.0.0.1", "--workers", "1", *NO_DOORS,
            "--rate-limit", "0"), "chat-stack ready", timeout=60, env=env, stderr=log.fileno())
    try:
        yield port, metrics_of(child.ready_line)
    finally:
        stop(child)


@pytest.fixture
def sampled(tmp_path: Path) -> Iterator[tuple[int, dict[str, str]]]:
    yield from _stack(tmp_path, 1)


@pytest.fixture
def unsampled(tmp_path: Path) -> Iterator[tuple[int, dict[str, str]]]:
    yield from _stack(tmp_path, 0)


def _talk(port: int) -> None:
    """Two clients in a room; one says LINES lines, one at a time (each its own event)."""
    with ChatClient(port) as a, ChatClient(port) as b:
        a.join("#hops")
        b.join("#hops")
        for n in range(LINES):
            a.send(f"line {n}")
            b.expect(lambda line, n=n: line.endswith(f"line {n}"))  # type: ignore[misc]


def _scrape(metrics: dict[str, str]) -> hops.Snapshot:
    snap = hops.scrape(metrics)
    assert snap is not None, f"a part did not answer: {metrics}"
    return snap


def test_a_sampled_event_is_timed_at_every_hop(sampled) -> None:  # type: ignore[no-untyped-def]
    port, metrics = sampled
    assert {"broker", "workers", "gw1"} <= set(metrics), metrics
    before = _scrape(metrics)
    for hop in (*GATEWAY_HOPS, *BROKER_HOPS):  # shown from the start (a worker's, once it wrote its files)
        assert before[("gateway" if hop in GATEWAY_HOPS else "broker", hop.value)].count == 0, hop
    _talk(port)
    wait_until(lambda: _scrape(metrics)[("gateway", Hop.FLUSH.value)].count >= LINES, 10, "every line's flush")
    wait_until(lambda: _scrape(metrics)[("worker", Hop.WORK.value)].count >= LINES, 10, "every dispatch timed")
    after = _scrape(metrics)
    for part, part_hops in PARTS.items():
        for hop in part_hops:
            counts = after[(part, hop.value)]
            assert counts.count >= LINES, (part, hop, counts.count)  # the joins are sampled too
            assert 0 <= counts.total / counts.count < 1.0, (part, hop, counts.total / counts.count)
    # one clock on one machine: the residences lie inside the gateway's round trip (give or take
    # a process preempted between its last send and its clock read, on a busy machine)
    inside = sum(after[key].total for key in (("broker", "queue"), ("worker", "work"), ("broker", "publish")))
    assert inside <= after[("gateway", "round_trip")].total + 0.005 * LINES
    assert after[("worker", "redis")].total <= after[("worker", "work")].total
    summary = hops.summary(before, after)
    assert set(summary) == {"gateway.wait", "broker.queue", "worker.work", "worker.redis", "broker.publish",
                            "gateway.round_trip", "gateway.flush", "transit"}
    assert summary["transit"]["mean_ms"] >= -1.0  # each clock stops before its part's send, starts after
    # its receive; a process preempted between a send and its clock read is all that may overlap
    assert summary["gateway.round_trip"]["p99_ms"] >= summary["gateway.round_trip"]["p50_ms"] > 0


def test_sampling_off_adds_nothing(unsampled) -> None:  # type: ignore[no-untyped-def]
    port, metrics = unsampled
    _talk(port)
    after = _scrape(metrics)
    assert after, "the hop families are shown, empty"
    assert all(counts.count == 0 and counts.total == 0 for counts in after.values()), after
    assert hops.summary(after, after) == {}
