"""`chat-stack` itself: it starts, serves a client, and stops leaving nothing behind."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import urllib.request

import psutil

from stack.children import Child, python_module, start, stop
from tests.e2e.chatclient import ChatClient
from tests.e2e.doors import IrcClient, http_get
from tests.e2e.test_tls import TlsClient, make_cert


def _free_port_pair() -> int:
    """A port p such that p and p + 1 are both free now (chat-stack takes consecutive ports)."""
    for _ in range(50):
        with socket.socket() as a, socket.socket() as b:
            a.bind(("127.0.0.1", 0))
            port = a.getsockname()[1]
            try:
                b.bind(("127.0.0.1", port + 1))
            except OSError:
                continue
            return port
    raise RuntimeError("no two consecutive free ports")


NO_DOORS = ("--irc-port", "off", "--web-port", "off")  # the defaults 6667 and 8080 may be taken here


def test_stack_serves_and_stops_cleanly(tmp_path) -> None:
    port = _free_port_pair()
    env = {**os.environ, "TMPDIR": str(tmp_path)}
    child: Child = start("stack", python_module(
        "stack.cli", "--port", str(port), "--host", "127.0.0.1", "--workers", "1", *NO_DOORS, "--gateways", "2"),
        "chat-stack ready", timeout=60, env=env)
    try:
        parts = psutil.Process(child.pid).children(recursive=True)
        assert len(parts) >= 5  # valkey, broker, pool + 1 worker, 2 gateways
        with ChatClient(port) as a, ChatClient(port + 1) as b:
            a.send("/nick stackA")
            a.expect("* you are now stackA")
            b.send("/msg stackA over the stack")
            a.expect(lambda l: l.endswith("* over the stack"))
        child.proc.send_signal(signal.SIGTERM)
        assert child.proc.wait(30) == 0
        _, alive = psutil.wait_procs(parts, timeout=10)
        assert not alive, f"left running: {alive}"
        assert not list(tmp_path.iterdir()), "temporary files left behind"
    finally:
        stop(child)


def test_stack_gateways_share_one_port_with_reuse_port(tmp_path) -> None:
    port = _free_port_pair()
    child: Child = start("stack", python_module(
        "stack.cli", "--port", str(port), "--host", "127.0.0.1", "--workers", "1", *NO_DOORS, "--gateways", "2",
        "--reuse-port"), "chat-stack ready", timeout=60, env={**os.environ, "TMPDIR": str(tmp_path)})
    try:
        gateways = set()
        for n in range(20):
            with ChatClient(port) as c:
                c.send("/json", f"/join #rp{n}", "where am I")
                own = c.expect_json(lambda o: o["type"] == "message")
                gateways.add(own["id"].split(".")[0])  # ids are <gateway>.<tag>:<n>/<seq>
        assert gateways == {"gw1", "gw2"}  # the kernel spread the connections over both
    finally:
        stop(child)


def _scrape(address: str) -> str:
    with urllib.request.urlopen(f"http://{address}/metrics", timeout=5) as resp:
        return resp.read().decode()


def test_stack_metrics_tls_json(tmp_path) -> None:
    port, tls_port = _free_port_pair(), _free_port_pair()
    cert, key = make_cert(tmp_path)
    env = {**os.environ, "TMPDIR": str(tmp_path), "CHAT_METRICS_LISTEN": "127.0.0.1:1"}  # not for the parts
    log_path = tmp_path / "stack.log"
    with log_path.open("wb") as log_file:
        child: Child = start("stack", python_module(
            "stack.cli", "--port", str(port), "--host", "127.0.0.1", "--workers", "1", *NO_DOORS, "--gateways", "2",
            "--tls-port", str(tls_port), "--tls-cert", cert, "--tls-key", key, "--log-format", "json"),
            "chat-stack ready", timeout=60, env=env, stderr=log_file.fileno())
    try:
        line = child.ready_line
        assert f"TLS on port(s) {tls_port}, {tls_port + 1}" in line, line
        where = dict(re.findall(r"(broker|workers|gw1|gw2)=(127\.0\.0\.1:\d+)", line))
        assert set(where) == {"broker", "workers", "gw1", "gw2"}, line
        assert len(set(where.values())) == 4  # a port each
        with ChatClient(port) as plain, TlsClient(socket.create_connection(("127.0.0.1", tls_port + 1)), cert) as sec:
            plain.send("/nick plain")
            plain.expect("* you are now plain")
            sec.send("/msg plain over tls")
            plain.expect(lambda l: l.endswith("* over tls"))
        assert "chat_broker_events_received_total" in _scrape(where["broker"])
        assert "chat_worker_events_total" in _scrape(where["workers"])
        assert re.search(r"^chat_gateway_connections_accepted_total 1.0$", _scrape(where["gw2"]), re.MULTILINE)
    finally:
        stop(child)
    parts = {json.loads(l)["part"] for l in log_path.read_text().splitlines() if l.startswith("{")}
    assert {"chat-broker", "chat-gateway"} <= parts, parts


def test_stack_metrics_off_and_consecutive_ports(tmp_path) -> None:
    port = _free_port_pair()
    env = {**os.environ, "TMPDIR": str(tmp_path), "CHAT_METRICS_LISTEN": "127.0.0.1:1"}
    child: Child = start("stack", python_module(
        "stack.cli", "--port", str(port), "--host", "127.0.0.1", "--workers", "1", *NO_DOORS, "--metrics-port", "off"),
        "chat-stack ready", timeout=60, env=env)
    try:
        assert "Metrics" not in child.ready_line
        with ChatClient(port) as c:
            c.sync()
    finally:
        stop(child)
    bad = subprocess.run(python_module("stack.cli", "--tls-port", "7443"), capture_output=True, text=True,
                         timeout=30, check=False)
    assert bad.returncode == 2 and "TLS needs all of" in bad.stderr, bad.stderr


def test_stack_opens_irc_and_web_doors_on_consecutive_ports(tmp_path) -> None:
    port, irc_port, web_port = _free_port_pair(), _free_port_pair(), _free_port_pair()
    child: Child = start("stack", python_module(
        "stack.cli", "--port", str(port), "--host", "127.0.0.1", "--workers", "1", "--gateways", "2",
        "--irc-port", str(irc_port), "--web-port", str(web_port), "--irc-server-name", "irc.stack.test"),
        "chat-stack ready", timeout=60, env={**os.environ, "TMPDIR": str(tmp_path)})
    try:
        line = child.ready_line
        assert f"IRC on port(s) {irc_port}, {irc_port + 1}" in line, line
        assert f"web on port(s) {web_port}, {web_port + 1}" in line, line
        irc = IrcClient(irc_port + 1)
        try:
            assert irc.register("stackirc")[0].startswith(":irc.stack.test 001 stackirc ")
        finally:
            irc.close()
        page = http_get(web_port + 1, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        assert page.startswith(b"HTTP/1.1 200 ")
    finally:
        stop(child)
