"""bench.hops: reading the parts' hop histograms from their scrape text, and the summary."""

from __future__ import annotations

import os

import pytest
from prometheus_client import generate_latest

from bench import hops
from bench.measure import Result
from bench.procstats import run_queue_wait
from bench.servers import metrics_of
from broker.metrics import BrokerMetrics
from gateway.metrics import GatewayMetrics
from protocol.hops import Hop


def _texts(n: int) -> list[str]:
    """The scrapes of a gateway, a broker and a worker pool after `n` sampled events."""
    gateway, broker = GatewayMetrics(), BrokerMetrics()
    for _ in range(n):
        gateway.hops.observe(Hop.WAIT, 0.001)
        gateway.hops.observe(Hop.ROUND_TRIP, 0.010)
        gateway.hops.observe(Hop.FLUSH, 0.0005)
        broker.hops.observe(Hop.QUEUE, 0.002)
        broker.hops.observe(Hop.PUBLISH, 0.0001)
    worker = (b'# TYPE chat_worker_hop_seconds histogram\n'
              + b"".join(f'chat_worker_hop_seconds_bucket{{hop="{h}",le="{le}"}} {n}\n'.encode()
                         for h in ("work", "redis") for le in ("0.005", "+Inf"))
              + f'chat_worker_hop_seconds_sum{{hop="work"}} {0.004 * n}\n'.encode()
              + f'chat_worker_hop_seconds_count{{hop="work"}} {n}\n'.encode()
              + f'chat_worker_hop_seconds_sum{{hop="redis"}} {0.003 * n}\n'.encode()
              + f'chat_worker_hop_seconds_count{{hop="redis"}} {n}\n'.encode())
    return [generate_latest(gateway.registry()).decode(), generate_latest(broker.registry()).decode(),
            worker.decode()]


def test_the_summary_of_a_difference_has_every_hop_and_transit() -> None:
    empty = hops.merge([hops.parse(t) for t in _texts(0)])
    after = hops.merge([hops.parse(t) for t in _texts(4)])
    summary = hops.summary(empty, after)
    assert list(summary) == ["gateway.wait", "broker.queue", "worker.work", "worker.redis", "broker.publish",
                             "gateway.round_trip", "gateway.flush", "transit"]
    assert summary["gateway.round_trip"]["n"] == 4
    assert summary["gateway.round_trip"]["mean_ms"] == pytest.approx(10.0)
    assert summary["transit"]["mean_ms"] == pytest.approx(10.0 - 2.0 - 4.0 - 0.1)
    assert 5.0 <= summary["gateway.round_trip"]["p50_ms"] <= 10.0  # inside its bucket (5, 10] ms


def test_two_gateways_add_up_and_nothing_sampled_is_no_summary() -> None:
    one = hops.parse(_texts(4)[0])
    both = hops.merge([one, one])
    assert both[("gateway", "wait")].count == 8
    assert hops.summary(both, both) == {}
    assert hops.summary(None, both) == {}


def test_other_families_and_garbage_labels_are_ignored() -> None:
    text = ('# TYPE chat_gateway_deliveries_out counter\nchat_gateway_deliveries_out_total 5\n'
            '# TYPE chat_other_hop_seconds histogram\nchat_other_hop_seconds_count{hop="x"} 1\n')
    assert hops.parse(text) == {}


def test_the_table_shows_a_row_per_result_with_hops() -> None:
    result = Result("W2-30%", "stack", p50_ms=1.0, p99_ms=3.0)
    result.extra["hops"] = hops.summary(hops.merge([hops.parse(t) for t in _texts(0)]),
                                        hops.merge([hops.parse(t) for t in _texts(4)]))
    result.extra["run_queue_ms_per_s"] = {"gateway": 120.4, "valkey": 0.1, "load-gen": 30.0}
    rows = hops.rows([result, Result("W3", "stack")])
    assert len(rows) == 1 and rows[0][:3] == ["W2-30%", "stack", "4"]
    assert rows[0][-2:] == ["1.00 / 3.00", "gateway 120, load-gen 30"] and len(rows[0]) == len(hops.COLUMNS)


def test_run_queue_wait_of_a_live_process_is_read_and_grows() -> None:
    """This process's threads' run-queue wait: a number of seconds, never going back."""
    first = run_queue_wait(os.getpid())
    assert first >= 0 and run_queue_wait(os.getpid()) >= first
    assert run_queue_wait(2**22 + 12345) == 0.0  # no such process: nothing, no error


def test_the_stack_ready_line_names_each_part_metrics() -> None:
    line = ("chat-stack ready: 2 gateway(s) on port(s) 7000, 7001, 2 worker(s). Metrics: broker=127.0.0.1:9001 "
            "workers=127.0.0.1:9002 gw1=127.0.0.1:9003 gw2=127.0.0.1:9004. Connect with: nc localhost 7000")
    assert metrics_of(line) == {"broker": "127.0.0.1:9001", "workers": "127.0.0.1:9002",
                                "gw1": "127.0.0.1:9003", "gw2": "127.0.0.1:9004"}
    assert metrics_of("chat-stack ready: 1 gateway(s) on port(s) 7000, 1 worker(s). Connect with: nc") == {}
