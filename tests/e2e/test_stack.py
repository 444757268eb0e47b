"""`chat-stack` itself: it starts, serves a client, and stops leaving nothing behind."""

from __future__ import annotations

import os
import signal
import socket

import psutil

from stack.children import Child, python_module, start, stop
from tests.e2e.chatclient import ChatClient


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


def test_stack_serves_and_stops_cleanly(tmp_path) -> None:
    port = _free_port_pair()
    env = {**os.environ, "TMPDIR": str(tmp_path)}
    child: Child = start("stack", python_module(
        "stack.cli", "--port", str(port), "--host", "127.0.0.1", "--workers", "1", "--gateways", "2"),
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
        "stack.cli", "--port", str(port), "--host", "127.0.0.1", "--workers", "1", "--gateways", "2",
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
