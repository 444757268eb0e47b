"""The multi-host infrastructure itself: two hosts reach each other through the bridge, a
cut link stops that and a restored one brings it back, nothing leaves the namespaces, and
teardown leaves no namespace or link behind, also after a failure or a dead run."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.e2e.load import wait_until
from tests.hosts import netns

pytestmark = pytest.mark.skipif(bool(netns.unavailable()), reason=netns.unavailable() or "")

PORT = 7700
# a "ping" over TCP: no ping program needed; it prints ok or the error
TCP_PING = """
import errno, socket, sys
try:
    socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=float(sys.argv[3])).close()
    print("ok")
except OSError as exc:
    print(errno.errorcode.get(exc.errno or 0, type(exc).__name__))
"""
SERVER = """
import socket
s = socket.create_server(("0.0.0.0", 7700))
print("listening", flush=True)
while True:
    s.accept()[0].close()
"""


def ping(net: netns.Hosts, source: str, address: str, port: int = PORT, timeout: float = 1.0) -> str:
    return net.run(source, [sys.executable, "-c", TCP_PING, address, str(port), str(timeout)]).stdout.strip()


def serve(net: netns.Hosts, host: str) -> None:
    proc = net.start(host, [sys.executable, "-c", SERVER], stdout=subprocess.PIPE)
    assert proc.stdout is not None and proc.stdout.readline() == b"listening\n"


def links() -> str:
    return subprocess.run(["ip", "-o", "link", "show"], capture_output=True, text=True, check=True).stdout


def test_two_hosts_reach_each_other_until_the_link_is_cut() -> None:
    links_before = links()
    with netns.hosts("a", "b") as net:
        names = [net["a"].netns, net["b"].netns, net.bridge]
        assert set(names) <= set(netns.namespaces())
        serve(net, "a")
        serve(net, "b")
        assert ping(net, "a", net["b"].address) == "ok"
        assert ping(net, "b", net["a"].address) == "ok"
        net.cut("b")
        assert ping(net, "a", net["b"].address) != "ok"
        assert ping(net, "b", net["a"].address) != "ok"
        net.restore("b")
        wait_until(lambda: ping(net, "a", net["b"].address) == "ok", 10, "b back")
    assert not set(names) & set(netns.namespaces())
    assert links() == links_before  # nothing was ever made in our own namespace


def test_nothing_leaves_the_hosts() -> None:
    with netns.hosts("a") as net:
        for address in ("10.78.0.1", "192.0.2.1", "2001:db8::1"):
            assert ping(net, "a", address) in ("EHOSTUNREACH", "ENETUNREACH")  # at once, not a timeout
        assert ping(net, "a", "10.77.0.99") != "ok"  # the subnet has only what we made


def test_teardown_after_a_failure() -> None:
    with pytest.raises(RuntimeError), netns.hosts("a") as net:
        names = [net["a"].netns, net.bridge]
        serve(net, "a")  # a process still running keeps nothing alive
        raise RuntimeError("the test failed")
    assert not set(names) & set(netns.namespaces())


def test_sweep_deletes_what_a_dead_run_left() -> None:
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)
    name = f"{netns.PREFIX}{dead.stdout.strip()}-1-br"
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        assert name in netns.sweep()
        assert name not in netns.namespaces()
    finally:
        if name in netns.namespaces():
            subprocess.run(["ip", "netns", "del", name], check=False)


def test_bad_host_names_are_refused() -> None:
    for bad in ("", "a b", "x" * 13, "br", "a/b"):
        with pytest.raises(ValueError), netns.hosts(bad):
            pass
    with pytest.raises(ValueError), netns.hosts("a", "a"):
        pass
