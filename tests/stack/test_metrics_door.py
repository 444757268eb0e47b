"""The metrics door has limits: a bounded number of connections at once, a deadline for each.

A real HTTP server on loopback, scraped and abused over real sockets.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator

import pytest
from prometheus_client import CollectorRegistry, Counter

from stack.metrics import MetricsServer, start_metrics_server

DEADLINE = 1.0


@pytest.fixture
def door() -> Iterator[MetricsServer]:
    registry = CollectorRegistry()
    Counter("door_test_scrapes", "a counter to find in the answer", registry=registry).inc()
    server = start_metrics_server(registry, "127.0.0.1", 0, slots=2, deadline=DEADLINE)
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()


def connect(server: MetricsServer) -> socket.socket:
    sock = socket.create_connection(server.server_address[:2], timeout=10)
    sock.settimeout(10)
    return sock


def read_all(sock: socket.socket) -> bytes:
    """Everything until the server closes (or resets) the connection."""
    chunks = []
    while True:
        try:
            chunk = sock.recv(65536)
        except ConnectionResetError:
            break
        if not chunk:
            break
        chunks.append(chunk)
    return b"".join(chunks)


def scrape(server: MetricsServer) -> bytes:
    with connect(server) as sock:
        sock.sendall(b"GET /metrics HTTP/1.0\r\nHost: x\r\n\r\n")
        return read_all(sock)


def test_a_scrape_gets_the_registry(door: MetricsServer) -> None:
    answer = scrape(door)
    assert answer.startswith(b"HTTP/1.0 200") and b"door_test_scrapes_total 1.0" in answer


def test_connections_past_the_slots_are_closed_unanswered_and_held_ones_are_cut(door: MetricsServer) -> None:
    held = [connect(door), connect(door)]  # say nothing: each holds a slot until its deadline
    try:  # one thread accepts in the kernel's (FIFO) order: both are taken before the scrape below
        began = time.monotonic()
        assert scrape(door) == b""  # every slot taken: closed unanswered
        assert door.refused >= 1
        for sock in held:
            assert read_all(sock) == b""  # cut at the deadline
        assert time.monotonic() - began < DEADLINE + 5
    finally:
        for sock in held:
            sock.close()
    deadline = time.monotonic() + 10
    while (answer := scrape(door)) == b"" and time.monotonic() < deadline:
        time.sleep(0.05)  # poll: the slots come back once the cut threads have ended
    assert answer.startswith(b"HTTP/1.0 200")


def test_a_trickling_request_is_cut_at_the_deadline_in_all(door: MetricsServer) -> None:
    """A byte every 0.1 s never hits a read timeout; the deadline counts from the connect."""
    with connect(door) as sock:
        began = time.monotonic()
        cut = False
        for byte in b"GET /metrics HTTP/1.0\r\nX-Slow: " + b"a" * 200:
            try:
                sock.send(bytes([byte]))
            except (BrokenPipeError, ConnectionResetError):
                cut = True
                break
            time.sleep(0.1)  # pacing of the slow client, the thing under test
            if time.monotonic() - began > DEADLINE + 3:
                break
        assert cut or read_all(sock) == b""
        assert time.monotonic() - began < DEADLINE + 3
    assert scrape(door).startswith(b"HTTP/1.0 200")


def test_an_overlong_request_line_is_refused_and_the_door_lives(door: MetricsServer) -> None:
    with connect(door) as sock:
        sock.sendall(b"GET /" + b"a" * 70_000 + b" HTTP/1.0\r\n\r\n")
        assert read_all(sock).startswith(b"HTTP/1.0 414")
    assert scrape(door).startswith(b"HTTP/1.0 200")


def test_a_flood_of_connections_costs_at_most_the_slots_threads(door: MetricsServer) -> None:
    before = threading.active_count()
    flood = [connect(door) for _ in range(50)]
    try:
        assert scrape(door) == b""  # the two slots are held by the first two of the flood
        # a thread and a deadline timer for each slot, no more: the other 48 were closed unanswered
        assert threading.active_count() - before <= 4
        assert door.refused >= 49
    finally:
        for sock in flood:
            sock.close()
