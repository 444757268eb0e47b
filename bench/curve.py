"""What CURVE costs on a link: a measurement.

`python -m bench.curve [--messages N] [--runs R]` starts a ROUTER echo peer in
another process (`zmq.proxy(router, router)` sends every message back to its
sender, in C) and drives a plain pyzmq DEALER against it, on tcp://127.0.0.1
with a port the OS picks, twice per run: without keys, and with CURVE as the
broker serves it (`stack.curve.serve_curve` and the ZAP authenticator on the
peer, `connect_curve` on the DEALER, keys made by `stack.certs` in a temporary
directory).

Each pass, after a warm-up: the DEALER keeps up to WINDOW messages of 100
bytes in flight until N replies are back. Reported: messages/s (wall clock),
CPU seconds per 100,000 messages of the sending process and of the echo peer
(user + system, every thread: libzmq's I/O threads do the encryption), and
p50 / p99 of ROUND_TRIPS sequential round trips. Not a test: figures only.
"""

from __future__ import annotations

import multiprocessing
import signal
import statistics
import tempfile
import time
from dataclasses import dataclass
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from pathlib import Path

import click
import psutil
import zmq

from bench.bridge import _raise_system_exit, stop_peer
from stack.certs import write_key_pair
from stack.curve import connect_curve, open_authenticator, serve_curve

SIZE = 100
WINDOW = 10_000
WARMUP = 20_000
ROUND_TRIPS = 2_000

Context = zmq.Context[zmq.Socket[bytes]]


@dataclass(frozen=True, slots=True)
class Result:
    mode: str
    rate: float  # messages/s
    cpu_sender: float  # CPU-s per 100k messages
    cpu_peer: float
    p50_us: float
    p99_us: float


def echo_peer(conn: Connection, key_dir: str | None) -> None:
    """Echo until SIGTERM; with `key_dir`, as a CURVE server with the broker's key and authenticator."""
    signal.signal(signal.SIGTERM, _raise_system_exit)
    ctx: Context = zmq.Context()
    auth = open_authenticator(ctx, Path(key_dir) / "clients") if key_dir else None
    sock = ctx.socket(zmq.ROUTER)
    sock.setsockopt(zmq.SNDHWM, 0)
    try:
        if auth is not None and key_dir:
            serve_curve(sock, Path(key_dir) / "broker.key_secret", "frontend", auth)
        conn.send(sock.bind_to_random_port("tcp://127.0.0.1"))
        conn.close()
        zmq.proxy(sock, sock)
    finally:
        sock.close(linger=0)
        if auth is not None:
            auth.close()
        ctx.term()


def start_peer(key_dir: str | None) -> tuple[BaseProcess, str]:
    spawn = multiprocessing.get_context("spawn")
    ours, theirs = spawn.Pipe()
    peer = spawn.Process(target=echo_peer, args=(theirs, key_dir), name="echo-peer")
    peer.start()
    theirs.close()
    try:
        if not ours.poll(20):
            raise EOFError
        port = ours.recv()
    except EOFError:
        stop_peer(peer)
        raise SystemExit("the echo peer did not start") from None
    finally:
        ours.close()
    return peer, f"tcp://127.0.0.1:{port}"


def pump(sock: zmq.Socket[bytes], count: int) -> None:
    """Keep up to WINDOW messages in flight until `count` replies are back."""
    payload = b"x" * SIZE
    sent = received = 0
    while received < count:
        while sent < count and sent - received < WINDOW:
            try:
                sock.send(payload, zmq.NOBLOCK)
            except zmq.Again:
                break
            sent += 1
        if sock.poll(10_000) == 0:
            raise SystemExit(f"no reply for 10 s ({received}/{count})")
        while received < count:
            try:
                sock.recv(zmq.NOBLOCK)
            except zmq.Again:
                break
            received += 1


def round_trips(sock: zmq.Socket[bytes]) -> list[float]:
    times = []
    for _ in range(ROUND_TRIPS):
        start = time.perf_counter()
        sock.send(b"x" * SIZE)
        sock.recv()
        times.append((time.perf_counter() - start) * 1e6)
    return times


def cpu(proc: psutil.Process) -> float:
    t = proc.cpu_times()
    return t.user + t.system


def one_pass(mode: str, key_dir: str, messages: int) -> Result:
    peer, endpoint = start_peer(key_dir if mode == "curve" else None)
    ctx: Context = zmq.Context()
    sock = ctx.socket(zmq.DEALER)
    try:
        sock.setsockopt(zmq.LINGER, 0)
        if mode == "curve":
            connect_curve(sock, Path(key_dir) / "gw.key_secret", Path(key_dir) / "broker.key")
        sock.connect(endpoint)
        pump(sock, WARMUP)
        me, them = psutil.Process(), psutil.Process(peer.pid)
        cpu_me, cpu_them, start = cpu(me), cpu(them), time.perf_counter()
        pump(sock, messages)
        elapsed = time.perf_counter() - start
        per_100k = 100_000 / messages
        used_me, used_them = (cpu(me) - cpu_me) * per_100k, (cpu(them) - cpu_them) * per_100k
        rtt = round_trips(sock)
    finally:
        sock.close()
        ctx.term()
        stop_peer(peer)
    q = statistics.quantiles(rtt, n=100)
    return Result(mode, messages / elapsed, used_me, used_them, q[49], q[98])


def make_keys(directory: Path) -> None:
    write_key_pair(directory, "broker", "broker")
    write_key_pair(directory, "gw", "gateway")
    (directory / "clients").mkdir()
    (directory / "clients" / "gw.key").write_bytes((directory / "gw.key").read_bytes())


@click.command()
@click.option("--messages", default=200_000, type=click.IntRange(1000), help="Messages per pass.")
@click.option("--runs", default=3, type=click.IntRange(1, 20), help="Passes of each mode, alternating.")
def main(messages: int, runs: int) -> None:
    """Messages/s and CPU through a DEALER -> ROUTER echo, without and with CURVE."""
    with tempfile.TemporaryDirectory(prefix="chat-curve-bench-") as tmp:
        make_keys(Path(tmp))
        print(f"{messages} messages of {SIZE} bytes, window {WINDOW}, {ROUND_TRIPS} round trips; "
              f"libzmq {zmq.zmq_version()}, pyzmq {zmq.__version__}")
        print("| link | messages/s | CPU-s per 100k (sender) | CPU-s per 100k (echo) | round trip p50 | p99 |")
        print("|---|---|---|---|---|---|")
        for _ in range(runs):
            for mode in ("plain", "curve"):
                r = one_pass(mode, tmp, messages)
                print(f"| {r.mode} | {r.rate:,.0f} | {r.cpu_sender:.3f} | {r.cpu_peer:.3f} | "
                      f"{r.p50_us:.0f} us | {r.p99_us:.0f} us |", flush=True)


if __name__ == "__main__":
    main()
