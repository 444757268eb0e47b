"""Prometheus metrics, served over HTTP: what every part shares.

Each process keeps its metrics in a registry of its own (never the
library's global one) and serves it on `--metrics-listen HOST:PORT` from
a small HTTP server in threads of its own (the library's WSGI app). Off
unless the option is given.

The door has limits: at most `MAX_SCRAPES` connections are served at
once (one thread each) and any more are closed at once, unanswered; a
connection gets `SCRAPE_DEADLINE` seconds in all to send its request and
take the answer, however slowly it trickles, and is cut after that. A
scraper that holds a connection open, or a flood of them, costs at most
those threads for that long, never the process. Bind it to a private
address: it has no authentication.
"""

from __future__ import annotations

import contextlib
import socket
import threading
from socketserver import ThreadingMixIn
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer

from prometheus_client import CollectorRegistry, make_wsgi_app
from prometheus_client.core import HistogramMetricFamily

from protocol.hops import HOP_HELP, HOP_METRIC, HopTimes

MAX_SCRAPES = 64  # connections served at once (a thread each); more are closed unanswered
SCRAPE_DEADLINE = 10.0  # seconds a connection may take in all, request and answer


def parse_listen(value: str) -> tuple[str, int]:
    """HOST:PORT (IPv6 in brackets) -> (host, port); raises ValueError."""
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or int(port) > 65535:
        raise ValueError(f"expected HOST:PORT, got {value!r}")
    return host.strip("[]") or "0.0.0.0", int(port)


class _QuietHandler(WSGIRequestHandler):
    timeout = SCRAPE_DEADLINE  # no single read or write waits longer than the whole deadline

    def log_message(self, format: str, *args: Any) -> None:
        """Log nothing per request."""


class MetricsServer(ThreadingMixIn, WSGIServer):
    """A thread per connection, at most `slots` at once, each cut after `deadline` seconds."""

    daemon_threads = True
    request_queue_size = 128  # the listen backlog: a burst of connects is accepted (or refused) in order

    def __init__(self, address: tuple[str, int], family: socket.AddressFamily, slots: int, deadline: float) -> None:
        self.address_family = family
        self.deadline = deadline
        self.refused = 0  # connections closed unanswered because every slot was taken
        self._slots = threading.BoundedSemaphore(slots)
        super().__init__(address, _QuietHandler)

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self._slots.acquire(blocking=False):
            self.refused += 1
            self.shutdown_request(request)
            return
        try:
            super().process_request(request, client_address)
        except Exception:  # the thread did not start (the server logs it): its slot is still ours
            self._slots.release()
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        cut = threading.Timer(self.deadline, _cut, (request,))
        cut.daemon = True
        cut.start()
        try:
            super().process_request_thread(request, client_address)
        finally:
            cut.cancel()
            self._slots.release()


def _cut(sock: socket.socket) -> None:
    """The deadline passed: end the connection's reads and writes, which ends its thread."""
    with contextlib.suppress(OSError):  # closed already
        sock.shutdown(socket.SHUT_RDWR)


def start_metrics_server(registry: CollectorRegistry, host: str, port: int, slots: int = MAX_SCRAPES,
                         deadline: float = SCRAPE_DEADLINE) -> MetricsServer:
    """Serve `registry` on host:port (port 0: any free one) from daemon threads; `shutdown()` stops it."""
    family, _, _, _, sockaddr = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0]
    server = MetricsServer((str(sockaddr[0]), port), family, slots, deadline)
    server.set_app(make_wsgi_app(registry))
    threading.Thread(target=server.serve_forever, name="metrics-http", daemon=True).start()
    return server


def serve_metrics(registry: CollectorRegistry, host: str, port: int) -> tuple[str, int]:
    """Serve `registry` on host:port for the life of the process -> the address bound."""
    bound_host, bound_port = start_metrics_server(registry, host, port).server_address[:2]
    return str(bound_host), int(bound_port)


def hop_family(prefix: str, times: HopTimes) -> HistogramMetricFamily:
    """A part's per-hop times of sampled events as one histogram family, label `hop` (protocol.hops)."""
    family = HistogramMetricFamily(prefix + HOP_METRIC, HOP_HELP, labels=["hop"])
    for hop, histogram in times.hops.items():
        family.add_metric([hop.value], histogram.buckets(), histogram.total)
    return family
