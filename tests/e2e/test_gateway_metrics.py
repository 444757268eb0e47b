"""The gateway's Prometheus metrics and JSON logs, from real processes on loopback.

A cluster (Valkey, broker, two workers) and a gateway with `--metrics-listen
127.0.0.1:0 --log-format json`: the scrape counts accepts, lines, deliveries,
the event latency, a refusal by reason and a flooder's cut by cause; every log
line the gateway wrote parses as JSON and names its instance.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from stack.children import Child, python_module, start
from tests.e2e.chatclient import ChatClient, connect_when_open
from tests.e2e.cluster import FAST, Cluster, gateway_instance, start_cluster
from tests.e2e.load import wait_until
from tests.e2e.scrape import Scrape
from tests.e2e.test_hostile_link import RECONNECT, paused

G = "chat_gateway_"


def start_metered_gateway(cluster: Cluster, name: str, log_path: Path, *args: str) -> tuple[Child, int, Scrape]:
    """A gateway with metrics on a free port and JSON logs -> (child, client port, scrape)."""
    eps = cluster.endpoints
    with log_path.open("wb") as log_file:
        child = start(name, python_module(
            "gateway.cli", "--listen", "127.0.0.1:0", "--frontend", eps["frontend"], "--pub-out", eps["pub-out"],
            "--id", name, "--metrics-listen", "127.0.0.1:0", "--log-format", "json", *args),
            f"chat-gateway {name}.", stderr=log_file.fileno())
    match = re.fullmatch(r"chat-gateway (\S+) listening on 127\.0\.0\.1:(\d+) metrics=(\S+)", child.ready_line)
    assert match, child.ready_line
    return child, int(match.group(2)), Scrape(match.group(3))


@pytest.fixture
def metered(tmp_path: Path) -> Iterator[tuple[Scrape, int, Path, Child, str]]:
    cluster = start_cluster(tmp_path, workers=2, gateways=0, broker_args=FAST, worker_args=FAST)
    log_path = tmp_path / "gateway.log"
    try:
        gateway, port, scrape = start_metered_gateway(
            cluster, "gwm", log_path, "--rate-limit", "1000", "--max-waiting-lines", "10",
            "--max-per-address", "3", *FAST)
        cluster.children["gwm"] = gateway
        yield scrape, port, log_path, gateway, cluster.redis_url
    finally:
        cluster.stop()


def test_the_scrape_counts_traffic_refusals_and_cuts(metered) -> None:  # type: ignore[no-untyped-def]
    scrape, port, log_path, _, _ = metered
    wait_until(lambda: scrape.value(G + "broker_up") == 1 and scrape.value(G + "serving") == 1, 10, "serving")
    with ChatClient(port) as a, ChatClient(port) as b:
        a.join("#m")
        b.join("#m")
        a.send(*(f"hello {n}" for n in range(5)))
        a.sync()
        b.expect(lambda line: line.endswith("hello 4"))
        assert scrape.value(G + "connections_accepted_total") == 2
        assert scrape.value(G + "lines_in_total") >= 8  # 2 /join, 5 lines, a /ping
        assert scrape.value(G + "deliveries_out_total") >= 5 + 4  # b got 5, and the replies
        assert scrape.value(G + "event_latency_seconds_count") >= 4
        assert scrape.value(G + "events_sent_total") >= 4
        wait_until(lambda: scrape.value(G + "connections") == 2, 10, "two connections shown")
        wait_until(lambda: scrape.value(G + "connections_parked") == 2, 10, "both idle: parked, no task each")
        with ChatClient(port) as c, ChatClient(port, greet=False) as refused:
            c.sync()
            assert refused.wait_closed()[0].startswith("! too many connections from your address")
        assert scrape.value(G + 'connections_refused_total{reason="per_address"}') == 1
    wait_until(lambda: scrape.value(G + "connections") == 0, 10, "the clients gone")
    with ChatClient(port) as flooder:
        flooder.send_raw(b"x\n" * 50)
        assert any(line.startswith("! flooding") for line in flooder.wait_closed())
    wait_until(lambda: scrape.value(G + 'drops_total{cause="flood_cut"}') == 1, 10, "the flood cut counted")
    assert scrape.value(G + 'drops_total{cause="sequence_gap"}') == 0
    assert scrape.value(G + "fences_total") == 0
    _check_json_log(log_path)


def _check_json_log(log_path: Path) -> None:
    lines = [line for line in log_path.read_text().splitlines() if line.strip()]
    assert lines, "the gateway logged nothing"
    objects = [json.loads(line) for line in lines]
    assert all(o["part"] == "chat-gateway" and o["instance"].startswith("gwm.") for o in objects), objects


def test_a_fence_is_counted_and_the_logs_name_the_new_instance(metered) -> None:  # type: ignore[no-untyped-def]
    scrape, port, log_path, gateway, redis_url = metered
    wait_until(lambda: scrape.value(G + "serving") == 1, 10, "serving")
    with ChatClient(port) as client, redis.Redis.from_url(redis_url) as r:
        client.send("/nick fenceme")
        client.expect("* you are now fenceme")
        with paused(gateway.pid):  # past the liveness window: the broker fences it, its sessions go
            wait_until(lambda: r.get("chat:nick:fenceme") is None, 15, "the stopped gateway given up")
        assert RECONNECT in client.wait_closed(10)
    wait_until(lambda: scrape.value(G + "fences_total") == 1, 15, "the fence counted")
    wait_until(lambda: scrape.value(G + "serving") == 1 and scrape.value(G + "broker_up") == 1, 15, "serving again")
    with connect_when_open(port) as again:  # `serving` may be scraped before the port is open again
        again.sync()
    objects = [json.loads(line) for line in log_path.read_text().splitlines() if line.strip()]
    rejoined = [o for o in objects if o["event"].startswith("re-joined as ")]
    assert rejoined, objects
    new = rejoined[0]["event"].removeprefix("re-joined as ")
    assert rejoined[0]["instance"] == new and new != gateway_instance(gateway)


def test_a_quit_departs_in_its_own_event_and_a_client_that_goes_still_departs(metered) -> None:  # type: ignore[no-untyped-def]
    """A /quit's departure runs in its own event and the worker's Close says so: the gateway
    sends no Disconnected after it (3 events: connect, /nick, /quit), and the nick is free at
    once. A client that just goes still costs its gateway a Disconnected, which frees it."""
    scrape, port, _, _, redis_url = metered
    wait_until(lambda: scrape.value(G + "serving") == 1, 10, "serving")
    before = scrape.value(G + "events_sent_total")
    with ChatClient(port) as quitter:
        quitter.send("/nick quitter")
        quitter.expect("* you are now quitter")
        quitter.send("/quit")
        assert "* bye" in quitter.wait_closed()
    with ChatClient(port) as goer, redis.Redis.from_url(redis_url) as r:
        # its lines are handled after the quitter's end (the gateway told the session, then closed the socket)
        goer.send("/nick quitter")
        goer.expect("* you are now quitter")
        assert scrape.value(G + "events_sent_total") == before + 3 + 2  # no Disconnected for the quitter
        goer.close()
        wait_until(lambda: r.get("chat:nick:quitter") is None, 10, "the goer's departure freed its nick")
    assert scrape.value(G + "events_sent_total") == before + 3 + 3


def test_a_bad_metrics_listen_is_a_clear_error() -> None:
    done = subprocess.run([sys.executable, "-m", "gateway.cli", "--listen", "127.0.0.1:0",
                           "--metrics-listen", "nonsense"], capture_output=True, text=True, timeout=30, check=False)
    assert done.returncode == 2 and "expected HOST:PORT" in done.stderr, done.stderr
