"""`chat-probe` against real gateways: ok, and each way it can fail."""

from __future__ import annotations

import re
import signal
import socket
import subprocess
import sys
import urllib.request

from stack.children import python_module, start, stop
from tests.e2e.cluster import Cluster
from tests.e2e.load import wait_until


def run_probe(*args: str, timeout: float = 20) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "stack.probe", *args], capture_output=True, text=True,
                          timeout=timeout, check=False)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_probe_succeeds_through_a_gateway(cluster: Cluster) -> None:
    done = run_probe("--port", str(cluster.ports[1]))
    assert done.returncode == 0, done.stdout + done.stderr
    assert re.fullmatch(r"ok: round trip [0-9.]+ ms \(#chat-probe, message \S+/\d+\)\n", done.stdout), done.stdout


def test_probe_fails_when_nothing_listens() -> None:
    done = run_probe("--port", str(free_port()), "--timeout", "2")
    assert done.returncode == 1
    assert done.stdout.startswith("failed: connect to 127.0.0.1:"), done.stdout


def test_probe_fails_when_the_gateway_has_no_broker() -> None:
    gateway = start("lonely", python_module(
        "gateway.cli", "--listen", "127.0.0.1:0", "--frontend", f"tcp://127.0.0.1:{free_port()}",
        "--pub-out", f"tcp://127.0.0.1:{free_port()}"), "chat-gateway")
    try:
        port = gateway.ready_line.rsplit(":", 1)[1]
        done = run_probe("--port", port, "--timeout", "1.5")
        assert done.returncode == 1
        assert done.stdout == "failed: greeting: timed out\n", done.stdout
    finally:
        stop(gateway)


def test_probe_rejects_a_bad_room() -> None:
    done = run_probe("--room", "nohash")
    assert done.returncode == 2
    assert "invalid room name" in done.stderr


def scrape(url: str) -> str:
    with urllib.request.urlopen(url, timeout=5) as reply:
        return reply.read().decode()


def test_probe_every_serves_metrics(cluster: Cluster) -> None:
    probe = start("probe", python_module(
        "stack.probe", "--port", str(cluster.ports[0]), "--every", "0.2",
        "--metrics-listen", "127.0.0.1:0"), "chat-probe metrics on")
    try:
        url = f"http://{probe.ready_line.split()[-1]}/metrics"

        def two_ok() -> bool:
            found = re.search(r'^chat_probe_runs_total\{result="ok"\} ([0-9.]+)$', scrape(url), re.M)
            return found is not None and float(found.group(1)) >= 2

        wait_until(two_ok, 20, "two successful probes in the metrics")
        text = scrape(url)
        assert re.search(r"^chat_probe_up 1\.0$", text, re.M)
        assert re.search(r"^chat_probe_round_trip_seconds_count [1-9]", text, re.M)
        probe.proc.send_signal(signal.SIGTERM)
        assert probe.proc.wait(10) == 0
    finally:
        stop(probe)
