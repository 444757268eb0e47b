"""The broker's Prometheus metrics and JSON logs, from real processes on loopback.

A broker with `--metrics-listen 127.0.0.1:0 --log-format json`, two workers,
one gateway and a client: the scrape counts the traffic and the peers, a
malformed frame sent to the frontend is counted under its cause, and every
log line the broker wrote parses as JSON.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import zmq

from stack.children import Child, python_module, start, stop
from stack.valkey import start_valkey
from tests.e2e.chatclient import ChatClient
from tests.e2e.cluster import FAST, GATEWAY_ARGS, ready_field, start_gateway, start_workers
from tests.e2e.load import wait_until
from tests.e2e.scrape import Scrape

ANY = "tcp://127.0.0.1:*"


@pytest.fixture
def parts(tmp_path: Path) -> Iterator[tuple[dict[str, str], Scrape, int, Path]]:
    children: list[Child] = []
    log_path = tmp_path / "broker.log"
    try:
        valkey, redis_url = start_valkey(tmp_path / "valkey")
        children.append(valkey)
        with log_path.open("wb") as log_file:
            broker = start("broker", python_module(
                "broker.cli", "--frontend", ANY, "--backend", ANY, "--pub-in", ANY, "--pub-out", ANY,
                "--metrics-listen", "127.0.0.1:0", "--log-format", "json", *FAST),
                "chat-broker ready", stderr=log_file.fileno())
        children.append(broker)
        eps = {name: ready_field(broker.ready_line, name) for name in ("frontend", "backend", "pub-in", "pub-out")}
        scrape = Scrape(ready_field(broker.ready_line, "metrics"))
        children.append(start_workers(2, eps["backend"], redis_url, *FAST))
        gateway, port = start_gateway(eps, "gw1", *GATEWAY_ARGS, *FAST)
        children.append(gateway)
        yield eps, scrape, port, log_path
    finally:
        for child in reversed(children):
            stop(child)


def test_the_scrape_counts_traffic_peers_and_a_malformed_frame(parts) -> None:  # type: ignore[no-untyped-def]
    eps, scrape, port, log_path = parts
    wait_until(lambda: scrape.value("chat_broker_workers_alive") == 2, 10, "two workers alive")
    wait_until(lambda: scrape.value("chat_broker_gateways_alive") == 1, 10, "one gateway alive")
    assert scrape.value("chat_broker_worker_credit") > 0
    with ChatClient(port) as a, ChatClient(port) as b:
        a.join("#m")
        b.join("#m")
        a.send(*(f"hello {n}" for n in range(20)))
        a.sync()
        b.expect(lambda line: line.endswith("hello 19"))
    # 2 Connected, 2 /join, at least one Lines for the 20 lines, a /ping
    wait_until(lambda: scrape.value("chat_broker_events_received_total") >= 6, 10, "events counted")
    assert scrape.value("chat_broker_events_dispatched_total") >= 6
    assert scrape.value("chat_broker_done_total") > 0
    assert scrape.value("chat_broker_batches_published_total") > 0
    malformed = 'chat_broker_drops_total{cause="malformed"}'
    frames = 'chat_broker_drops_total{cause="wrong_frame_count"}'
    assert scrape.value(malformed) == 0
    _send_to_frontend(eps["frontend"], [b"\xc1 not msgpack"], [b"a", b"b", b"c"])
    wait_until(lambda: scrape.value(malformed) == 1 and scrape.value(frames) == 1, 10, "the drops counted")
    assert scrape.value("chat_broker_gateways_lost_total") == 0
    assert scrape.value("chat_broker_workers_lost_total") == 0
    with ChatClient(port) as c:  # the broker still serves
        c.sync()
    _check_json_log(log_path)


def _send_to_frontend(endpoint: str, *messages: list[bytes]) -> None:
    ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    try:
        sock = ctx.socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 1000)  # let the frames leave before the socket closes
        sock.connect(endpoint)
        for frames in messages:
            sock.send_multipart(frames)
        sock.close()
    finally:
        ctx.term()


def _check_json_log(log_path: Path) -> None:
    lines = [line for line in log_path.read_text().splitlines() if line.strip()]
    assert lines, "the broker logged nothing"
    objects = [json.loads(line) for line in lines]
    assert all(o["part"] == "chat-broker" and o["instance"].startswith("broker.") for o in objects)
    drops = [o for o in objects if o.get("cause") == "malformed"]
    assert drops and drops[0]["level"] == "warning" and drops[0]["count"] == 1, drops


def test_a_bad_metrics_listen_is_a_clear_error() -> None:
    for value in ("nonsense", "127.0.0.1:99999"):
        done = subprocess.run([sys.executable, "-m", "broker.cli", "--frontend", ANY, "--backend", ANY,
                               "--pub-in", ANY, "--pub-out", ANY, "--metrics-listen", value],
                              capture_output=True, text=True, timeout=30, check=False)
        assert done.returncode == 2 and "expected HOST:PORT" in done.stderr, done.stderr


def test_a_metrics_port_in_use_is_a_clear_error() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        busy = f"127.0.0.1:{taken.getsockname()[1]}"
        done = subprocess.run([sys.executable, "-m", "broker.cli", "--frontend", ANY, "--backend", ANY,
                               "--pub-in", ANY, "--pub-out", ANY, "--metrics-listen", busy],
                              capture_output=True, text=True, timeout=30, check=False)
    assert done.returncode == 1 and "cannot listen" in done.stderr, done.stderr
    assert "chat-broker ready" not in done.stdout
