"""`chat-probe`: an end-to-end check of the chat, as a client sees it.

One probe connects to a gateway (through the balancer, if you point it
there), switches to JSON mode, joins a room, sends a message carrying a
random token and waits for its own copy of that message to come back
through the whole path: gateway, broker, a worker, Redis, the broker's
publisher, the gateway. The time from sending the line to receiving the
echo is the round trip. Then it says `/quit`.

It prints one line and exits 0 (ok) or 1 (failed), so it fits a cron job,
a Kubernetes probe or HAProxy's external check. With `--every SECONDS` it
keeps probing, prints a line per probe, and serves its results as
Prometheus metrics on `--metrics-listen`.
"""

from __future__ import annotations

import json
import secrets
import signal
import socket
import ssl
import sys
import threading
import time
from dataclasses import dataclass

import click
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from stack.metrics import parse_listen, serve_metrics

MAX_LINE = 1 << 16  # a reply longer than this is not the chat talking


class ProbeFailed(Exception):
    """The probe did not complete; the text says at which step."""


@dataclass(frozen=True, slots=True)
class ProbeConfig:
    host: str = "127.0.0.1"
    port: int = 7000
    room: str = "#chat-probe"
    timeout: float = 5.0
    tls: bool = False
    tls_ca: str | None = None
    tls_server_name: str | None = None


@dataclass(frozen=True, slots=True)
class ProbeResult:
    ok: bool
    round_trip: float  # seconds; 0 when it failed
    detail: str

    def line(self) -> str:
        if self.ok:
            return f"ok: round trip {self.round_trip * 1000:.1f} ms ({self.detail})"
        return f"failed: {self.detail}"


class _Lines:
    """Lines from a socket, each read bounded by the probe's deadline."""

    def __init__(self, sock: socket.socket, deadline: float) -> None:
        self.sock = sock
        self.deadline = deadline
        self._buf = b""

    def send(self, *lines: str) -> None:
        self.sock.sendall("".join(line + "\n" for line in lines).encode())

    def next(self) -> str:
        while b"\n" not in self._buf:
            remaining = self.deadline - time.monotonic()
            if remaining <= 0:
                raise ProbeFailed("timed out")
            if len(self._buf) > MAX_LINE:
                raise ProbeFailed("a reply line too long")
            self.sock.settimeout(remaining)
            try:
                data = self.sock.recv(65536)
            except TimeoutError:
                raise ProbeFailed("timed out") from None
            if not data:
                raise ProbeFailed("the server closed the connection")
            self._buf += data
        raw, _, self._buf = self._buf.partition(b"\n")
        return raw.decode(errors="replace")

    def until(self, wanted, step: str) -> dict[str, object]:  # type: ignore[no-untyped-def]
        """Read JSON lines until `wanted(obj)`; an error line for us fails the probe."""
        while True:
            try:
                line = self.next()
            except ProbeFailed as exc:
                raise ProbeFailed(f"{step}: {exc}") from None
            obj = _json(line)
            if obj is None:
                continue
            if wanted(obj):
                return obj
            if obj.get("type") == "error":
                raise ProbeFailed(f"{step}: the server said: {obj.get('text', '')}")


def _json(line: str) -> dict[str, object] | None:
    if not line.startswith("{"):
        return None
    try:
        obj = json.loads(line)
    except ValueError:
        return None
    return obj if isinstance(obj, dict) else None


def _connect(config: ProbeConfig, deadline: float) -> socket.socket:
    try:
        sock = socket.create_connection((config.host, config.port), timeout=max(0.01, deadline - time.monotonic()))
    except OSError as exc:
        raise ProbeFailed(f"connect to {config.host}:{config.port}: {exc}") from None
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    if not config.tls:
        return sock
    context = ssl.create_default_context(cafile=config.tls_ca)
    try:
        return context.wrap_socket(sock, server_hostname=config.tls_server_name or config.host)
    except (OSError, ssl.SSLError) as exc:
        sock.close()
        raise ProbeFailed(f"TLS handshake: {exc}") from None


def probe(config: ProbeConfig) -> ProbeResult:
    """One probe: connect, /json, /join, a message to ourselves through the room, /quit."""
    deadline = time.monotonic() + config.timeout
    try:
        sock = _connect(config, deadline)
    except ProbeFailed as exc:
        return ProbeResult(False, 0.0, str(exc))
    try:
        return _converse(_Lines(sock, deadline), config.room)
    except ProbeFailed as exc:
        return ProbeResult(False, 0.0, str(exc))
    except OSError as exc:
        return ProbeResult(False, 0.0, f"connection: {exc}")
    finally:
        sock.close()


def _converse(conn: _Lines, room: str) -> ProbeResult:
    try:
        greeting = conn.next()
    except ProbeFailed as exc:
        raise ProbeFailed(f"greeting: {exc}") from None
    if not greeting.startswith("* "):
        raise ProbeFailed(f"greeting: unexpected {greeting[:80]!r}")
    conn.send("/json", f"/join {room}")
    conn.until(lambda o: o.get("type") == "info" and str(o.get("text", "")).startswith("you joined"), "join")
    token = f"probe {secrets.token_hex(8)}"
    sent = time.monotonic()
    conn.send(token)
    echo = conn.until(lambda o: o.get("type") == "message" and o.get("text") == token, "message")
    round_trip = time.monotonic() - sent
    conn.send("/quit probe done")
    return ProbeResult(True, round_trip, f"{room}, message {echo.get('id', '?')}")


class ProbeMetrics:
    """What `--every` exposes: one registry per probe process."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.up = Gauge("chat_probe_up", "1 if the last probe succeeded, else 0", registry=self.registry)
        self.runs = Counter("chat_probe_runs", "Probes run, by result", ["result"], registry=self.registry)
        self.round_trip = Histogram(
            "chat_probe_round_trip_seconds", "A message's round trip through the whole chat",
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0),
            registry=self.registry,
        )
        self.last_success = Gauge("chat_probe_last_success_timestamp_seconds",
                                  "When a probe last succeeded (Unix time)", registry=self.registry)

    def record(self, result: ProbeResult) -> None:
        self.up.set(1 if result.ok else 0)
        self.runs.labels("ok" if result.ok else "failed").inc()
        if result.ok:
            self.round_trip.observe(result.round_trip)
            self.last_success.set(time.time())


def run_every(config: ProbeConfig, every: float, metrics_listen: str | None, count: int) -> None:
    """Probe every `every` seconds until SIGTERM/SIGINT (or `count` probes, if not 0)."""
    metrics = ProbeMetrics()
    if metrics_listen:
        host, port = parse_listen(metrics_listen)
        bound = serve_metrics(metrics.registry, host, port)
        print(f"chat-probe metrics on {bound[0]}:{bound[1]}", flush=True)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    done = 0
    while not stop.is_set():
        result = probe(config)
        metrics.record(result)
        print(result.line(), flush=True)
        done += 1
        if count and done >= count:
            return
        stop.wait(every)  # the interval between probes; a signal ends the wait at once


@click.command(context_settings={"show_default": True})
@click.option("--host", default="127.0.0.1", envvar="CHAT_PROBE_HOST", show_envvar=True,
              help="The gateway or balancer to probe.")
@click.option("--port", default=7000, envvar="CHAT_PROBE_PORT", show_envvar=True, type=click.IntRange(1, 65535))
@click.option("--room", default="#chat-probe", envvar="CHAT_PROBE_ROOM", show_envvar=True,
              help="The room the probe sends its message through.")
@click.option("--timeout", default=5.0, envvar="CHAT_PROBE_TIMEOUT", show_envvar=True,
              type=click.FloatRange(0.1, 300), help="Seconds one probe may take in all.")
@click.option("--tls", is_flag=True, envvar="CHAT_PROBE_TLS", show_envvar=True, help="Connect with TLS.")
@click.option("--tls-ca", default=None, envvar="CHAT_PROBE_TLS_CA", show_envvar=True,
              type=click.Path(exists=True, dir_okay=False),
              help="CA file to verify the server (default: the system's).")
@click.option("--tls-server-name", default=None, envvar="CHAT_PROBE_TLS_SERVER_NAME", show_envvar=True,
              help="Name to verify in the server's certificate (default: --host).")
@click.option("--every", default=0.0, envvar="CHAT_PROBE_EVERY", show_envvar=True, type=click.FloatRange(0),
              help="Keep probing, every this many seconds (0: probe once and exit 0 or 1).")
@click.option("--count", default=0, type=click.IntRange(0),
              help="With --every: stop after this many probes (0: never).")
@click.option("--metrics-listen", default=None, envvar="CHAT_METRICS_LISTEN", show_envvar=True,
              help="With --every: serve Prometheus metrics on HOST:PORT.")
def main(host: str, port: int, room: str, timeout: float, tls: bool, tls_ca: str | None,
         tls_server_name: str | None, every: float, count: int, metrics_listen: str | None) -> None:
    """Check the chat end to end: a message to ourselves through a room."""
    from protocol.commands import check_room
    from protocol.errors import CommandError

    try:
        room = check_room(room)
    except CommandError as exc:
        raise click.BadParameter(str(exc), param_hint="--room") from None
    config = ProbeConfig(host, port, room, timeout, tls, tls_ca, tls_server_name)
    if every:
        run_every(config, every, metrics_listen, count)
        return
    result = probe(config)
    print(result.line(), flush=True)
    sys.exit(0 if result.ok else 1)


if __name__ == "__main__":
    main()
