"""The gateway's client side against hostile and unlucky clients, with real processes.

Floods of every kind against the DEFAULT rate limit (the shared e2e cluster
turns it off), half-closed clients, and a gateway short of file descriptors.
"""

from __future__ import annotations

import socket
import statistics
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from stack.children import Child, start, stop
from tests.e2e.chatclient import ChatClient
from tests.e2e.cluster import Cluster, start_cluster, start_gateway
from tests.e2e.load import wait_until

FLOODING = "! flooding: too many lines at once; disconnecting"
FLOODS = {
    "invalid UTF-8": b"\xc3\n",
    "empty lines": b"\n",
    "telnet negotiation": b"\xff\xfb\x01",
    "over-long lines": b"x" * 5000 + b"\n",
}
FLOODERS = 8
FLOOD_FOR = 20.0  # seconds a flooder keeps trying before it gives up (the test then fails)


@pytest.fixture(scope="module")
def defaults(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """One broker, one worker, one gateway with the gateway's default limits."""
    c = start_cluster(tmp_path_factory.mktemp("valkey"), workers=1, gateways=1, gateway_args=())
    yield c
    c.stop()


class Flooder(threading.Thread):
    """Connects and sends `payload` over and over until the gateway cuts it off."""

    def __init__(self, port: int, payload: bytes, stop_at: float) -> None:
        super().__init__(daemon=True)
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=5)
        self.chunk = payload * max(1, 4096 // len(payload))
        self.stop_at = stop_at
        self.sent = 0
        self.cut = False

    def run(self) -> None:
        self.sock.settimeout(0.5)
        try:
            while time.monotonic() < self.stop_at:
                try:
                    self.sent += self.sock.send(self.chunk)
                except TimeoutError:
                    continue  # the gateway holds us back: try again
        except OSError:  # reset or broken pipe: the gateway closed the connection
            self.cut = True
        finally:
            self.sock.close()


def ping_round_trips(client: ChatClient, n: int) -> list[float]:
    """n sequential /ping round trips, in seconds."""
    times = []
    for _ in range(n):
        started = time.monotonic()
        client.send("/ping")
        client.expect("* pong", timeout=10)
        times.append(time.monotonic() - started)
    return times


@pytest.mark.parametrize("kind", list(FLOODS))
def test_floods_of_every_kind_are_cut_and_bystanders_keep_their_latency(defaults: Cluster, kind: str) -> None:
    port = defaults.ports[0]
    with ChatClient(port) as bystander:
        flooders = [Flooder(port, FLOODS[kind], time.monotonic() + FLOOD_FOR) for _ in range(FLOODERS)]
        try:
            for flooder in flooders:
                flooder.start()
            rtts = ping_round_trips(bystander, 30)
            while any(f.is_alive() for f in flooders):  # and on, for as long as the flood lasts
                rtts += ping_round_trips(bystander, 1)
        finally:
            for flooder in flooders:
                flooder.stop_at = 0.0
                flooder.join(5)
        assert [f.cut for f in flooders] == [True] * FLOODERS, f"not cut off: {[f.sent for f in flooders]} bytes sent"
        assert statistics.median(rtts) < 0.150, f"/ping round trips (s): {sorted(rtts)}"
        assert bystander.sync() == []  # the bystander is still served


def test_endless_lines_are_held_to_the_rate_not_burnt_on(defaults: Cluster) -> None:
    """Bytes with no newline end no line: such a client is slowed (its bytes cost), not cut."""
    port = defaults.ports[0]
    gateway = psutil.Process(defaults.children["gw1"].pid)
    with ChatClient(port) as bystander:
        flooders = [Flooder(port, b"x" * 4096, time.monotonic() + 3.0) for _ in range(FLOODERS)]
        cpu = sum(gateway.cpu_times()[:2])
        try:
            for flooder in flooders:
                flooder.start()
            rtts = ping_round_trips(bystander, 30)
            while any(f.is_alive() for f in flooders):
                rtts += ping_round_trips(bystander, 1)
        finally:
            for flooder in flooders:
                flooder.stop_at = 0.0
                flooder.join(5)
        assert sum(gateway.cpu_times()[:2]) - cpu < 1.5, "the gateway burnt its CPU on the flood"
        assert statistics.median(rtts) < 0.150, f"/ping round trips (s): {sorted(rtts)}"
        assert bystander.sync() == []


def test_a_flooder_is_told_why(defaults: Cluster) -> None:
    with ChatClient(defaults.ports[0]) as flooder:
        flooder.send_raw(b"\xc3\n" * 100)
        lines = flooder.wait_closed(10)
        assert lines[-1] == FLOODING
        assert 0 < lines.count("! invalid UTF-8") <= 20  # error replies are bounded too


def test_a_few_bad_lines_are_answered_and_the_client_goes_on(defaults: Cluster) -> None:
    with ChatClient(defaults.ports[0]) as client:
        client.send_raw(b"\xc3\n\n\n\xff\xfb\x01" + b"y" * 5000 + b"\n")
        assert client.sync() == ["! invalid UTF-8", "! line too long (max 4096 bytes)"]


def read_until_closed(sock: socket.socket, timeout: float) -> tuple[list[str], bool]:
    """Read until EOF -> (lines, whether EOF came within `timeout`)."""
    deadline = time.monotonic() + timeout
    data = b""
    while (remaining := deadline - time.monotonic()) > 0:
        sock.settimeout(remaining)
        try:
            chunk = sock.recv(65536)
        except TimeoutError:
            break
        if not chunk:
            return data.decode().splitlines(), True
        data += chunk
    return data.decode().splitlines(), False


def test_a_half_closed_client_gets_its_replies_then_the_end(defaults: Cluster) -> None:
    port = defaults.ports[0]
    with ChatClient(port) as watcher:
        watcher.join("#halfclose")
        sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        try:
            sock.sendall(b"/nick halfway\n/join #halfclose\nbye all\n/ping\n")
            sock.shutdown(socket.SHUT_WR)  # as `printf ... | nc -q 3` does
            lines, closed = read_until_closed(sock, 10)
        finally:
            sock.close()
        assert closed, f"still open after its replies: {lines}"
        assert lines[0].startswith("* welcome")
        assert len(lines) == 4 and lines[1] == "* you are now halfway" and lines[3] == "* pong"
        assert lines[2].startswith("* you joined #halfclose (2 here: ")
        watcher.expect("#halfclose <halfway> bye all")
        watcher.expect(lambda line: line.startswith("* halfway quit"))


def test_a_reset_still_closes_at_once(defaults: Cluster) -> None:
    port = defaults.ports[0]
    with ChatClient(port) as watcher:
        watcher.join("#reset")
        with ChatClient(port) as rude:
            rude.send("/nick rude", "/join #reset")
            watcher.expect("* rude joined #reset")
            rude.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
            started = time.monotonic()
            rude.close()  # SO_LINGER 0: a RST, no FIN
        watcher.expect("* rude quit (connection reset)", timeout=5)
        assert time.monotonic() - started < 2.0


def test_half_close_without_a_broker_is_bounded(tmp_path: Path) -> None:
    nowhere = {"frontend": "tcp://127.0.0.1:9", "pub-out": "tcp://127.0.0.1:9"}  # no broker answers
    child, port = start_gateway(nowhere, "gwlonely", "--half-close-wait", "1")
    try:
        sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        try:
            sock.sendall(b"/ping\n")
            started = time.monotonic()
            sock.shutdown(socket.SHUT_WR)
            lines, closed = read_until_closed(sock, 10)
        finally:
            sock.close()
        assert closed and lines == []
        assert 0.5 < time.monotonic() - started < 5.0
    finally:
        stop(child)


# --- running out of file descriptors ----------------------------------------------

NOFILE = 96  # the gateway's hard and soft open-file limit in the test below
LIMITED = (
    "import resource, runpy, sys; "
    f"resource.setrlimit(resource.RLIMIT_NOFILE, ({NOFILE}, {NOFILE})); "
    "sys.argv = ['chat-gateway', *sys.argv[1:]]; "
    "runpy.run_module('gateway.cli', run_name='__main__')"
)


def start_limited_gateway(eps: dict[str, str], log: Path) -> tuple[Child, int]:
    with log.open("wb") as stderr:
        child = start("gwfd", [sys.executable, "-c", LIMITED, "--listen", "127.0.0.1:0",
                               "--frontend", eps["frontend"], "--pub-out", eps["pub-out"], "--id", "gwfd",
                               "--max-per-address", "0"], "chat-gateway", stderr=stderr.fileno())
    return child, int(child.ready_line.rsplit(":", 1)[1])


def first_line(port: int) -> str | None:
    client = ChatClient(port, greet=False)
    try:
        return client.read_line(time.monotonic() + 5)
    finally:
        client.close()


def test_out_of_file_descriptors_every_client_gets_a_word(defaults: Cluster, tmp_path: Path) -> None:
    log = tmp_path / "gateway.log"
    child, port = start_limited_gateway(defaults.endpoints, log)
    clients: list[ChatClient] = []
    try:
        firsts = []
        for _ in range(NOFILE + 30):  # more than the process could hold open
            client = ChatClient(port, greet=False)
            clients.append(client)
            firsts.append(client.read_line(time.monotonic() + 5))
        welcomed = sum(1 for line in firsts if line and line.startswith("* welcome"))
        refusals = [line for line in firsts if not (line and line.startswith("* welcome"))]
        assert welcomed > 0
        assert set(refusals) == {f"! server full ({welcomed} connections): try again later"}
        for client in clients[:5]:
            client.close()
        wait_until(lambda: (first_line(port) or "").startswith("* welcome"), 10, "a freed slot")
    finally:
        for client in clients:
            client.close()
        stop(child)
    text = log.read_text()
    assert f"open-file limit {NOFILE}" in text
    assert "Traceback" not in text
