"""chat-bench runs end to end in its quick mode, its stack loses nothing, its IRC dialect works on ngIRCd,
and its WebSocket dialect works on the stack's web door."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from bench.cli import WORKLOADS
from bench.config import QUICK
from bench.handshake import ClientSpec, open_clients, settle
from bench.loadgen import Loop
from bench.measure import Result
from bench.peers import find_binary
from bench.servers import start_irc_peer, start_stack, start_stack_ws, stop_server
from bench.workloads import Context, run_workload


def test_quick_benchmark_runs_and_loses_nothing(tmp_path) -> None:
    out = tmp_path / "bench"
    run = subprocess.run(
        [sys.executable, "-m", "bench.cli", "--quick", "--workloads", "W1,W4,W5", "--out", str(out)],
        capture_output=True, text=True, timeout=180, check=False,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    rows = json.loads((out / "results.json").read_text())["results"]
    assert {r["workload"] for r in rows} == {"W1", "W4", "W5"}
    for row in rows:
        assert row["error"] is None, row
        if row["workload"] in ("W1", "W4"):
            assert row["deliveries"] > 0 and row["lost"] == 0 and row["duplicated"] == 0, row
            hops = row["extra"]["hops"]  # the stack's sampled events, per hop
            assert hops["gateway.round_trip"]["n"] > 0 and hops["gateway.round_trip"]["mean_ms"] > 0, hops
            assert "transit" in hops and "worker.redis" in hops, hops
    markdown = (out / "results.md").read_text()
    assert markdown.startswith("# chat-bench results")
    assert "## Where the milliseconds go (per hop)" in markdown


@pytest.mark.skipif(find_binary("ngircd") is None, reason="ngircd is not installed (make bench installs it as root)")
def test_irc_dialect_against_ngircd(tmp_path) -> None:
    """W1, W2 (with QUICKACK receivers), W4 and W5 speak IRC to a real ngIRCd and lose nothing."""
    shape = QUICK
    server = start_irc_peer("ngircd", tmp_path)
    try:
        ctx = Context(server, shape, "irct")
        rows: list[Result] = []
        for name in ("W1", "W2", "W4", "W5"):
            rows += run_workload(name, ctx, WORKLOADS)
        assert server.peer is not None and server.peer.proc.poll() is None
    finally:
        stop_server(server)
    assert server.peer.proc.poll() is not None
    by_name = {row.workload: row for row in rows}
    for row in rows:
        assert row.error is None, row
    for name in ("W1", "W2-30%", "W4"):
        row = by_name[name]
        assert row.deliveries and row.lost == 0 and row.duplicated == 0 and row.reordered == 0, row
    assert by_name["W2-30%"].extra["quickack_deliveries"] > 0
    assert by_name["W5"].extra["cycles"] > 0 and by_name["W5"].extra["failed"] == 0


def test_websocket_door_runs_w1_and_w5_and_loses_nothing(tmp_path) -> None:
    """stack-ws: W1 over the web door (masked frames out, JSON objects in, each sender's own copy counted)."""
    server = start_stack_ws(1, 1, tmp_path)
    try:
        assert server.name == "stack-ws" and server.dialect == "ws"
        ctx = Context(server, QUICK, "wsbt")
        rows: list[Result] = []
        for name in ("W1", "W5"):
            rows += run_workload(name, ctx, WORKLOADS)
        assert server.child is not None and server.child.proc.poll() is None
    finally:
        stop_server(server)
    by_name = {row.workload: row for row in rows}
    for row in rows:
        assert row.error is None, row
    w1 = by_name["W1"]
    assert w1.sent and w1.lost == 0 and w1.duplicated == 0 and w1.reordered == 0, w1
    assert w1.deliveries == w1.sent * QUICK.members == w1.extra["expected"], w1  # every member, the sender too
    assert w1.extra["other_lines"] == 0 and w1.extra["receivers_closed"] == 0, w1
    assert by_name["W5"].extra["cycles"] > 0 and by_name["W5"].extra["failed"] == 0, by_name["W5"]


def test_unknown_door_is_a_usage_error(tmp_path) -> None:
    run = subprocess.run([sys.executable, "-m", "bench.cli", "--quick", "--doors", "ws,gopher",
                          "--out", str(tmp_path)], capture_output=True, text=True, timeout=60, check=False)
    assert run.returncode == 2 and "unknown door(s) gopher" in run.stderr


@pytest.mark.skipif(find_binary("ngircd") is None, reason="ngircd is not installed (make bench installs it as root)")
def test_w3_against_ngircd_does_not_overflow_its_listen_queue(tmp_path) -> None:
    """ngIRCd listens with a backlog of 10: connections it has not answered yet are capped, not only connects.

    Capping only the connects let the kernel's accept queue overflow (our connect completes when the
    kernel queues it), and each dropped SYN waited 1, 3, 7 s for its retransmission: 200 clients took
    about 11 s. ngIRCd's own 1 s penalty on JOIN leaves about 1 s per half of W3.
    """
    server = start_irc_peer("ngircd", tmp_path)
    try:
        (row,) = run_workload("W3", Context(server, QUICK, "ngq"), WORKLOADS)
    finally:
        stop_server(server)
    assert row.error is None, row
    assert row.connect_s is not None and row.connect_s < 6.0, row
    assert "closed_while_idle" not in row.extra, row


def test_unknown_peer_is_a_usage_error(tmp_path) -> None:
    run = subprocess.run([sys.executable, "-m", "bench.cli", "--quick", "--peers", "ngircd,unrealircd",
                          "--out", str(tmp_path)], capture_output=True, text=True, timeout=60, check=False)
    assert run.returncode == 2 and "unknown peer(s) unrealircd" in run.stderr


def test_w6_spreads_connections_over_gateways_and_processes(tmp_path) -> None:
    """W6 in small: 300 connections at most 100 a process -> 3 gateways, 3 load generators; the probe arrives."""
    out = tmp_path / "bench"
    run = subprocess.run([sys.executable, "-m", "bench.cli", "--quick", "--workloads", "W6", "--out", str(out)],
                         capture_output=True, text=True, timeout=180, check=False)
    assert run.returncode == 0, run.stderr[-3000:]
    data = json.loads((out / "results.json").read_text())
    assert "--gateways 3" in data["meta"]["stack"]
    (row,) = data["results"]
    assert row["error"] is None, row
    assert row["extra"]["loadgen_processes"] == 3
    assert row["extra"]["probe_received"] == row["extra"]["probe_members"] - 1 == 29 and row["lost"] == 0
    assert row["max_ms"] < 1000 and row["connect_s"] > 0 and row["rss_per_conn_kib"]["all"] > 0


def test_curve_and_tls_variants_run_and_lose_nothing(tmp_path) -> None:
    """--variants nocurve,tls: the stack without CURVE and with TLS clients beside it, and the cost table."""
    out = tmp_path / "bench"
    run = subprocess.run([sys.executable, "-m", "bench.cli", "--quick", "--workloads", "W1", "--variants",
                          "nocurve,tls", "--out", str(out)], capture_output=True, text=True, timeout=180, check=False)
    assert run.returncode == 0, run.stderr[-3000:]
    rows = json.loads((out / "results.json").read_text())["results"]
    assert [r["server"] for r in rows] == ["stack", "stack-nocurve", "stack-tls"]
    for row in rows:
        assert row["error"] is None and row["deliveries"] > 0 and row["lost"] == 0, row
    text = (out / "results.md").read_text()
    assert "What CURVE and TLS cost" in text and "stack-tls vs stack" in text


@pytest.mark.parametrize("door", ["chat", "ws"])
def test_settle_reads_the_notices_of_later_joiners_before_a_measurement(tmp_path, door) -> None:
    """A member registered before others joined is told of them after its own `you joined`: `settle`
    reads those notices (up to each client's pong), so a flow attached after it sees no stray line."""
    server = (start_stack_ws if door == "ws" else start_stack)(1, 1, tmp_path)
    loop = Loop(ws=door == "ws")
    try:
        addr = server.addrs[0]
        first = open_clients(loop, [ClientSpec(f"st{door}{i}", "#settle", addr) for i in range(2)], 30,
                             speech=server.dialect)
        settle(loop, first, 30, server.dialect)  # whichever of the two joined second told the other
        for conn in first:
            conn.lines_in = 0
        late = open_clients(loop, [ClientSpec(f"st{door}late", "#settle", addr)], 30, speech=server.dialect)
        already = sum(conn.lines_in for conn in first)  # notices read before the settling
        drained = settle(loop, [*first, *late], 30, server.dialect)
        assert already + drained == 2, (already, drained)  # the late one's join, told to each of the first two
    finally:
        for conn in list(loop.conns):
            conn.close()
        stop_server(server)
