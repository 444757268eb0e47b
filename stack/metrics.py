"""Prometheus metrics, served over HTTP: what every part shares.

Each process keeps its metrics in a registry of its own (never the
library's global one) and serves it on `--metrics-listen HOST:PORT` from
the library's small HTTP server thread. Off unless the option is given.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import HistogramMetricFamily

from protocol.hops import HOP_HELP, HOP_METRIC, HopTimes


def parse_listen(value: str) -> tuple[str, int]:
    """HOST:PORT (IPv6 in brackets) -> (host, port); raises ValueError."""
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or int(port) > 65535:
        raise ValueError(f"expected HOST:PORT, got {value!r}")
    return host.strip("[]") or "0.0.0.0", int(port)


def serve_metrics(registry: CollectorRegistry, host: str, port: int) -> tuple[str, int]:
    """Serve `registry` on host:port (port 0: any free one) -> the address bound.

    The server runs in a daemon thread for the life of the process.
    """
    server, _thread = start_http_server(port, addr=host, registry=registry)
    bound_host, bound_port = server.server_address[:2]
    return str(bound_host), int(bound_port)


def hop_family(prefix: str, times: HopTimes) -> HistogramMetricFamily:
    """A part's per-hop times of sampled events as one histogram family, label `hop` (protocol.hops)."""
    family = HistogramMetricFamily(prefix + HOP_METRIC, HOP_HELP, labels=["hop"])
    for hop, histogram in times.hops.items():
        family.add_metric([hop.value], histogram.buckets(), histogram.total)
    return family
