"""`chat-worker -n 2 --metrics-listen`: one endpoint for the whole pool, scraped over HTTP,
through lines, a child killed, a Redis outage and a hostile scraper; and `--log-format json`."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
from prometheus_client.parser import text_string_to_metric_families

from stack.children import python_module, start, stop
from stack.valkey import start_valkey
from tests.e2e.chatclient import ChatClient
from tests.e2e.cluster import FAST, FAST_GATEWAY, Cluster, start_broker, start_gateway
from tests.e2e.load import wait_until

WORKER_ARGS = (*FAST, "--redis-timeout", "0.25")


@pytest.fixture(scope="module")
def metered(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Cluster, str]]:
    """Valkey, a broker, `chat-worker -n 2 --metrics-listen 127.0.0.1:0`, a gateway -> (cluster, /metrics URL)."""
    cluster = Cluster("", {}, [])
    try:
        cluster.children["valkey"], cluster.redis_url = start_valkey(tmp_path_factory.mktemp("valkey"))
        cluster.children["broker"], cluster.endpoints = start_broker(*FAST)
        cluster.children["workers"] = start("workers", python_module(
            "workers.cli", "-n", "2", "--backend", cluster.endpoints["backend"], "--redis-url", cluster.redis_url,
            "--metrics-listen", "127.0.0.1:0", *WORKER_ARGS), "chat-worker metrics on")
        cluster.children["gw1"], port = start_gateway(cluster.endpoints, "gw1", *FAST_GATEWAY)
        cluster.ports.append(port)
        yield cluster, f"http://{cluster.children['workers'].ready_line.split()[-1]}/metrics"
    finally:
        cluster.stop()


def scrape(url: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """/metrics, parsed by the library's own parser -> {(sample name, labels): value}."""
    with urllib.request.urlopen(url, timeout=5) as reply:
        text = reply.read().decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def sample(url: str, name: str, **labels: str) -> float:
    return scrape(url).get((name, tuple(sorted(labels.items()))), 0.0)


def worker_pids(workers_pid: int) -> list[int]:
    pids = []
    for p in psutil.Process(workers_pid).children():
        try:
            if any("spawn_main" in part for part in p.cmdline()):
                pids.append(p.pid)
        except psutil.Error:  # a zombie the pool has not reaped yet
            continue
    return pids


def send_counted(port: int, n: int) -> None:
    with ChatClient(port) as c:
        c.send("/join #metered")
        c.send(*[f"line {i}" for i in range(n - 2)])
        c.sync()  # /ping: the n-th line


def test_lines_are_counted_over_all_children_and_survive_a_kill(metered: tuple[Cluster, str]) -> None:
    cluster, url = metered
    wait_until(lambda: sample(url, "chat_worker_processes_alive") == 2, 20, "two workers alive")
    before = sample(url, "chat_worker_lines_total")
    send_counted(cluster.ports[0], 60)
    wait_until(lambda: sample(url, "chat_worker_lines_total") >= before + 60, 20, "60 more lines counted")
    counted = sample(url, "chat_worker_lines_total")
    restarts = sample(url, "chat_worker_restarts_total")
    pids = worker_pids(cluster.children["workers"].pid)
    assert len(pids) == 2
    os.kill(pids[0], signal.SIGKILL)
    wait_until(lambda: sample(url, "chat_worker_restarts_total") >= restarts + 1
               and sample(url, "chat_worker_processes_alive") == 2, 30, "the pool to restart the killed worker")
    assert sample(url, "chat_worker_lines_total") >= counted  # the dead child's counts stay
    send_counted(cluster.ports[0], 40)
    wait_until(lambda: sample(url, "chat_worker_lines_total") >= counted + 40, 20, "40 more lines counted")
    text = scrape(url)
    assert text[("chat_worker_events_total", (("kind", "connect"),))] >= 2
    assert text[("chat_worker_dispatches_total", ())] >= 1
    assert text[("chat_worker_redis_round_trip_seconds_count", ())] >= 1


def test_a_redis_outage_shows_in_the_errors(metered: tuple[Cluster, str]) -> None:
    cluster, url = metered
    errors = sample(url, "chat_worker_redis_errors_total", cause="timeout")
    refused = sample(url, "chat_worker_lines_refused_total", cause="unavailable")
    with ChatClient(cluster.ports[0]) as c:
        c.sync()
        valkey = cluster.children["valkey"]
        os.kill(valkey.pid, signal.SIGSTOP)  # Redis hangs: calls time out
        try:
            c.send("/who")
            c.expect("! service temporarily unavailable", timeout=10)
        finally:
            os.kill(valkey.pid, signal.SIGCONT)
        wait_until(lambda: sample(url, "chat_worker_redis_errors_total", cause="timeout") > errors, 10,
                   "the timeout counted")
        assert sample(url, "chat_worker_lines_refused_total", cause="unavailable") > refused
        # served again once the breaker's cooldown (a second) is over: until then a line may still be refused
        deadline = time.monotonic() + 15
        while True:
            c.send("/rooms")
            answer = c.expect(lambda line: line.startswith(("* rooms", "* no rooms", "! service temporarily")),
                              timeout=10)
            if not answer.startswith("!"):
                break
            assert time.monotonic() < deadline, "still refused 15 s after Redis came back"


def test_a_hostile_scraper_costs_nothing(metered: tuple[Cluster, str]) -> None:
    cluster, url = metered
    host, port = url.split("/")[2].rsplit(":", 1)
    for junk in (b"\x00\xff" * 4096 + b"\r\n\r\n", b"GET /" + b"a" * 100_000 + b" HTTP/1.1\r\n\r\n",
                 b"GET /metrics HTTP/1.1\r\nHost: x\r\n" + b"X: y\r\n" * 200 + b"\r\n"):
        with socket.create_connection((host, int(port)), timeout=5) as s:
            try:
                s.sendall(junk)
                s.shutdown(socket.SHUT_WR)
                while s.recv(65536):
                    pass
            except OSError:  # the server may reset a garbage request: that is a fine answer
                pass
    silent = [socket.create_connection((host, int(port)), timeout=5) for _ in range(20)]  # say nothing
    try:
        assert sample(url, "chat_worker_processes_alive") == 2  # still served while they idle
    finally:
        for s in silent:
            s.close()
    assert cluster.children["workers"].proc.poll() is None


def _multiproc_dir(pid: int) -> str:
    env = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    return next(v.split(b"=", 1)[1].decode() for v in env if v.startswith(b"PROMETHEUS_MULTIPROC_DIR="))


def test_the_metrics_directory_is_private_and_removed_on_exit(tmp_path: Path) -> None:
    broker, eps = start_broker()
    workers = None
    try:
        workers = start("workers", python_module(
            "workers.cli", "-n", "1", "--backend", eps["backend"], "--redis-url", f"unix://{tmp_path}/none.sock",
            "--metrics-listen", "127.0.0.1:0"), "chat-worker started")
        wait_until(lambda: len(worker_pids(workers.pid)) == 1, 20, "the child")
        path = _multiproc_dir(worker_pids(workers.pid)[0])
        assert os.path.isdir(path) and (os.stat(path).st_mode & 0o077) == 0  # mkdtemp: the owner's only
        assert stop(workers) == 0
        assert not os.path.exists(path)
    finally:
        if workers is not None:
            stop(workers)
        stop(broker)


def run_worker_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*python_module("workers.cli", "--backend", "tcp://127.0.0.1:1", *args)],
                          capture_output=True, text=True, timeout=30, check=False)


@pytest.mark.parametrize("bad", ["nonsense", "127.0.0.1:99999", "127.0.0.1:", ":x"])
def test_a_bad_metrics_address_is_a_clear_usage_error(bad: str) -> None:
    done = run_worker_cli("--metrics-listen", bad)
    assert done.returncode == 2
    assert "--metrics-listen" in done.stderr and "expected HOST:PORT" in done.stderr, done.stderr


def test_a_metrics_port_in_use_is_a_clear_error() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        done = run_worker_cli("--metrics-listen", f"127.0.0.1:{taken.getsockname()[1]}")
    assert done.returncode == 1
    assert "cannot serve metrics on 127.0.0.1:" in done.stderr and "Traceback" not in done.stderr, done.stderr
    assert "chat-worker started" not in done.stdout


def test_log_format_json_every_line_of_every_process(tmp_path: Path) -> None:
    broker = start("broker", python_module(
        "broker.cli", "--frontend", "tcp://127.0.0.1:*", "--backend", "tcp://127.0.0.1:*", "--pub-in",
        "tcp://127.0.0.1:*", "--pub-out", "tcp://127.0.0.1:*", *FAST), "chat-broker ready")
    backend = broker.ready_line.split("backend=")[1].split()[0]
    log_path = tmp_path / "workers.log"
    workers = None
    try:
        with log_path.open("wb") as log_file:
            workers = start("workers", python_module(
                "workers.cli", "-n", "2", "--backend", backend, "--redis-url", f"unix://{tmp_path}/none.sock",
                "--log-format", "json", *FAST), "chat-worker started", stderr=log_file.fileno())
        stop(broker)  # the children notice the silence and say so, in JSON

        def child_lines() -> list[dict[str, object]]:
            objs = [json.loads(line) for line in log_path.read_text().splitlines() if line.startswith("{")]
            return [o for o in objs if str(o.get("instance", "")).startswith("w-")]

        wait_until(lambda: len({o["pid"] for o in child_lines()}) == 2, 20, "both children to log")
        assert stop(workers) == 0
    finally:
        if workers is not None:
            stop(workers)
        stop(broker)
    lines = log_path.read_text().splitlines()
    assert lines
    for line in lines:
        obj = json.loads(line)
        assert obj["part"] == "chat-worker" and obj["level"] in {"debug", "info", "warning", "error", "critical"}
        assert obj["instance"] and isinstance(obj["event"], str), obj
    parent = [json.loads(line) for line in lines if json.loads(line)["pid"] == workers.pid]
    assert any("started as pid" in str(o["event"]) for o in parent)
    assert all(str(o["instance"]).startswith("pool-") for o in parent)


def test_a_bad_redis_url_is_a_clear_usage_error() -> None:
    done = run_worker_cli("--redis-url", "foo://x")
    assert done.returncode == 2
    assert "--redis-url" in done.stderr and "unsupported Redis URL scheme" in done.stderr, done.stderr


def test_a_crashing_child_logs_its_death_as_json(tmp_path: Path) -> None:
    log_path = tmp_path / "workers.log"
    workers = None
    try:
        with log_path.open("wb") as log_file:
            workers = start("workers", python_module(
                "workers.cli", "-n", "1", "--backend", "not-an-endpoint", "--log-format", "json"),
                "chat-worker started", stderr=log_file.fileno())

        def crashed() -> bool:
            return any('"worker crashed"' in line for line in log_path.read_text().splitlines())

        wait_until(crashed, 20, "the child's crash in the log")
    finally:
        if workers is not None:
            stop(workers)
    for line in log_path.read_text().splitlines():
        obj = json.loads(line)  # no bare traceback from a dying child
        assert obj["part"] == "chat-worker", obj
    crash = next(json.loads(line) for line in log_path.read_text().splitlines() if "worker crashed" in line)
    assert crash["level"] == "error" and "ZMQError" in crash["exception"]
