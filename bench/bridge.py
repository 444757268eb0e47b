"""Which way to bridge pyzmq into Trio: a measurement.

`python -m bench.bridge` starts a ROUTER echo peer in a separate process (plain
pyzmq: `zmq.proxy(router, router)` sends every message back to its sender, in C,
so the peer is not the bottleneck) and then, from one Trio program, drives a
DEALER to it through three bridges, one after the other:

- pump: `gateway.zmq_pump.ZmqPump`, the gateway's own. One Trio task owns the
  socket, reads ZMQ_EVENTS, moves bursts of messages with NOBLOCK and sleeps on
  `trio.lowlevel.wait_readable(ZMQ_FD)` only when nothing can move. Frames go in
  with `put_nowait`, replies come out through the `on_message` callback.
- thread: a dedicated thread owns the socket and runs a `zmq.Poller` loop. Trio
  puts frames on a `queue.Queue` and wakes the thread through an inproc PAIR
  (only when it has not already done so since the thread last looked); the
  thread hands each burst of replies to Trio with `TrioToken.run_sync_soon`.
- zmq-anyio: `zmq_anyio.Socket` on Trio through AnyIO, used as documented:
  `await sock.asend_multipart(frames).wait()` to send, and a task that loops on
  `await sock.arecv_multipart().wait()` to receive. Skipped, with the reason,
  if it cannot be imported.

All three use the DEALER options the gateway uses (HWM 100,000 each way). For
each bridge, after a warm-up:

1. throughput: one task sends MESSAGES messages of 100 bytes as fast as the
   bridge takes them (yielding to Trio every 256), and the run ends when the
   last reply is counted. Reported: messages/s (wall clock), and CPU seconds
   per 100,000 messages of the whole benchmark process (`time.process_time`:
   every thread, so the bridge thread and libzmq's I/O thread count too) and of
   the Trio thread alone (`time.thread_time`).
2. latency: ROUND_TRIPS sequential round trips (send one message, wait until
   its reply has reached Trio), p50 and p99 in microseconds.

Everything is on tcp://127.0.0.1 with ports the OS picks; every socket and
context is closed at the end, and the peer is stopped by its PID (SIGTERM,
then SIGKILL if it does not exit).
"""

from __future__ import annotations

import multiprocessing
import os
import platform
import queue
import signal
import statistics
import threading
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from types import FrameType

import trio
import zmq

from gateway.zmq_pump import ZmqPump

PAYLOAD = b"x" * 100
MESSAGES = 200_000
ROUND_TRIPS = 2_000
WARMUP_MESSAGES = 5_000
WARMUP_ROUND_TRIPS = 100
BURST = 256  # messages moved (or sent by the driver) before yielding
HWM = 100_000  # as the gateway's DEALER
THROUGHPUT_LIMIT_S = 30.0  # a bridge slower than this is reported as timed out

Frames = list[bytes]
OnMessage = Callable[[Frames], None]
Send = Callable[[Frames], Awaitable[None]]
Context = zmq.Context[zmq.Socket[bytes]]
Bridge = Callable[[Context, str, OnMessage], AbstractAsyncContextManager[Send]]


# --- the echo peer (a separate process) ----------------------------------------------


def _raise_system_exit(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(0)


def echo_peer(conn: Connection) -> None:
    """Echo every message back to its sender until SIGTERM; then close cleanly."""
    signal.signal(signal.SIGTERM, _raise_system_exit)
    ctx: Context = zmq.Context()
    sock = ctx.socket(zmq.ROUTER)
    sock.setsockopt(zmq.SNDHWM, 0)  # a ROUTER drops at its HWM: never drop a reply
    try:
        conn.send(sock.bind_to_random_port("tcp://127.0.0.1"))
        conn.close()
        zmq.proxy(sock, sock)  # frontend == backend: libzmq routes each message back
    finally:
        sock.close(linger=0)
        ctx.term()


def start_peer() -> tuple[BaseProcess, str]:
    spawn = multiprocessing.get_context("spawn")
    ours, theirs = spawn.Pipe()
    peer = spawn.Process(target=echo_peer, args=(theirs,), name="echo-peer")
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


def stop_peer(peer: BaseProcess) -> None:
    if peer.pid is not None and peer.is_alive():
        os.kill(peer.pid, signal.SIGTERM)
        peer.join(5)
        if peer.is_alive():
            os.kill(peer.pid, signal.SIGKILL)
    peer.join()


def dealer(ctx: Context, endpoint: str) -> zmq.Socket[bytes]:
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.SNDHWM, HWM)
    sock.setsockopt(zmq.RCVHWM, HWM)
    sock.connect(endpoint)
    return sock


# --- bridge (a): the gateway's pump -------------------------------------------------


@asynccontextmanager
async def open_pump(ctx: Context, endpoint: str, on_message: OnMessage) -> AsyncIterator[Send]:
    sock = dealer(ctx, endpoint)
    pump = ZmqPump(sock, on_message)

    async def send(frames: Frames) -> None:
        pump.put_nowait(frames)

    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(pump.run)
            yield send
            nursery.cancel_scope.cancel()
    finally:
        sock.close()


# --- bridge (b): a dedicated thread ---------------------------------------------------


class ThreadBridge:
    """A thread owns the DEALER; Trio feeds it through a queue.Queue and gets bursts back."""

    def __init__(self, ctx: Context, endpoint: str, on_message: OnMessage) -> None:
        self._token = trio.lowlevel.current_trio_token()
        self._on_message = on_message
        self._outbox: queue.Queue[Frames | None] = queue.Queue()  # None: stop
        wake_address = f"inproc://bridge-wake-{id(self)}"
        self._wake_rx = ctx.socket(zmq.PAIR)  # the thread's
        self._wake_rx.bind(wake_address)
        self._wake_tx = ctx.socket(zmq.PAIR)  # Trio's
        self._wake_tx.connect(wake_address)
        self._sock = dealer(ctx, endpoint)  # the thread's
        self._wake_sent = False  # set by Trio, cleared by the thread before it reads the queue
        self._thread = threading.Thread(target=self._run, name="zmq-bridge", daemon=True)
        self._thread.start()

    async def send(self, frames: Frames) -> None:
        self._outbox.put(frames)
        self._wake()

    def close(self) -> None:
        self._outbox.put(None)
        self._wake()
        self._thread.join()
        for sock in (self._sock, self._wake_tx, self._wake_rx):
            sock.close(linger=0)

    def _wake(self) -> None:
        if not self._wake_sent:
            self._wake_sent = True
            self._wake_tx.send(b"")

    def _run(self) -> None:
        pending: deque[Frames] = deque()
        poller = zmq.Poller()
        poller.register(self._wake_rx, zmq.POLLIN)
        poller.register(self._sock, zmq.POLLIN)
        while True:
            ready = dict(poller.poll())
            if self._wake_rx in ready and not self._take_outbox(pending):
                return
            if pending:
                self._send_burst(pending)
            if self._sock in ready:
                self._receive_burst()
            poller.modify(self._sock, zmq.POLLIN | (zmq.POLLOUT if pending else 0))

    def _take_outbox(self, pending: deque[Frames]) -> bool:
        """Move what Trio queued to `pending`; False once told to stop."""
        while True:
            try:
                self._wake_rx.recv(zmq.NOBLOCK)
            except zmq.Again:
                break
        self._wake_sent = False
        while True:
            try:
                frames = self._outbox.get_nowait()
            except queue.Empty:
                return True
            if frames is None:
                return False
            pending.append(frames)

    def _send_burst(self, pending: deque[Frames]) -> None:
        for _ in range(min(BURST, len(pending))):
            try:
                self._sock.send_multipart(pending[0], zmq.NOBLOCK)
            except zmq.Again:
                return
            pending.popleft()

    def _receive_burst(self) -> None:
        burst: list[Frames] = []
        for _ in range(BURST):
            try:
                burst.append(self._sock.recv_multipart(zmq.NOBLOCK))
            except zmq.Again:
                break
        if burst:
            self._token.run_sync_soon(self._deliver, burst)

    def _deliver(self, burst: list[Frames]) -> None:  # runs in Trio's thread
        for frames in burst:
            self._on_message(frames)


@asynccontextmanager
async def open_thread(ctx: Context, endpoint: str, on_message: OnMessage) -> AsyncIterator[Send]:
    bridge = ThreadBridge(ctx, endpoint, on_message)
    try:
        yield bridge.send
    finally:
        bridge.close()


# --- bridge (c): zmq-anyio ------------------------------------------------------------


@asynccontextmanager
async def open_zmq_anyio(ctx: Context, endpoint: str, on_message: OnMessage) -> AsyncIterator[Send]:
    import zmq_anyio

    async def receive_forever(sock: zmq_anyio.Socket) -> None:
        while True:
            future = sock.arecv_multipart()
            await future.wait()
            on_message(future.return_value)  # type: ignore[arg-type]

    # the zmq_anyio.Socket shadows the DEALER and closes it when it stops
    async with zmq_anyio.Socket(dealer(ctx, endpoint)) as sock, trio.open_nursery() as nursery:

        async def send(frames: Frames) -> None:
            await sock.asend_multipart(frames).wait()

        nursery.start_soon(receive_forever, sock)
        yield send
        nursery.cancel_scope.cancel()


def bridges() -> dict[str, Bridge]:
    found: dict[str, Bridge] = {"pump (gateway/zmq_pump.py)": open_pump, "dedicated thread": open_thread}
    try:
        import zmq_anyio
    except ImportError as exc:
        print(f"zmq-anyio skipped: it cannot be imported ({exc})\n")
    else:
        from importlib.metadata import version

        found[f"zmq-anyio {version('zmq-anyio')}"] = open_zmq_anyio
        del zmq_anyio
    return found


# --- the measurements -----------------------------------------------------------------


class Replies:
    """Counts replies and wakes the one waiting for the n-th."""

    def __init__(self) -> None:
        self.count = 0
        self._target = 0
        self._reached = trio.Event()

    def expect(self, n: int) -> None:
        self.count, self._target, self._reached = 0, n, trio.Event()

    def on_message(self, frames: Frames) -> None:
        self.count += 1
        if self.count == self._target:
            self._reached.set()

    async def wait(self) -> None:
        await self._reached.wait()


@dataclass
class Result:
    msgs_per_s: float
    cpu_per_100k: float
    trio_cpu_per_100k: float
    p50_us: float
    p99_us: float
    timed_out: bool


async def push(send: Send, replies: Replies, n: int) -> tuple[float, float, float, bool]:
    """Send n messages, wait for n replies: (wall s, process CPU s, Trio-thread CPU s, timed out)."""
    replies.expect(n)
    wall, cpu, trio_cpu = time.perf_counter(), time.process_time(), time.thread_time()
    with trio.move_on_after(THROUGHPUT_LIMIT_S) as deadline:
        for i in range(n):
            await send([PAYLOAD])
            if i % BURST == BURST - 1:
                await trio.lowlevel.checkpoint()
        await replies.wait()
    return (
        time.perf_counter() - wall,
        time.process_time() - cpu,
        time.thread_time() - trio_cpu,
        deadline.cancelled_caught,
    )


async def round_trips(send: Send, replies: Replies, n: int) -> list[float]:
    """n sequential round trips, in microseconds each."""
    times = []
    for _ in range(n):
        replies.expect(1)
        start = time.perf_counter_ns()
        await send([PAYLOAD])
        await replies.wait()
        times.append((time.perf_counter_ns() - start) / 1_000)
    return times


async def measure(bridge: Bridge, endpoint: str) -> Result:
    ctx: Context = zmq.Context()
    replies = Replies()
    try:
        async with bridge(ctx, endpoint, replies.on_message) as send:
            await push(send, replies, WARMUP_MESSAGES)
            await round_trips(send, replies, WARMUP_ROUND_TRIPS)
            wall, cpu, trio_cpu, timed_out = await push(send, replies, MESSAGES)
            done = replies.count if timed_out else MESSAGES
            rtts = [] if timed_out else await round_trips(send, replies, ROUND_TRIPS)
    finally:
        ctx.term()
    q = statistics.quantiles(rtts, n=100) if rtts else [float("nan")] * 99
    per_100k = 100_000 / max(done, 1)
    return Result(done / wall, cpu * per_100k, trio_cpu * per_100k, q[49], q[98], timed_out)


def row(name: str, r: Result) -> str:
    rate = f"{r.msgs_per_s:,.0f}" + (f" (timed out after {THROUGHPUT_LIMIT_S:.0f} s)" if r.timed_out else "")
    return f"| {name} | {rate} | {r.cpu_per_100k:.2f} | {r.trio_cpu_per_100k:.2f} | {r.p50_us:.0f} | {r.p99_us:.0f} |"


def header() -> str:
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    return (
        f"Python {platform.python_version()}, pyzmq {zmq.pyzmq_version()} (libzmq {zmq.zmq_version()}), "
        f"trio {trio.__version__}; {os.cpu_count()} CPUs, load average {load}\n"
        f"{MESSAGES:,} messages of {len(PAYLOAD)} B through a ROUTER echo in another process; "
        f"{ROUND_TRIPS:,} sequential round trips\n\n"
        "| bridge | messages/s | CPU s per 100k (process) | CPU s per 100k (Trio thread) "
        "| round trip p50 (us) | p99 (us) |\n"
        "|---|---|---|---|---|---|"
    )


def main() -> None:
    chosen = bridges()
    peer, endpoint = start_peer()
    try:
        print(header(), flush=True)
        for name, bridge in chosen.items():
            try:
                result = trio.run(measure, bridge, endpoint)
            except Exception as exc:  # one bridge failing must not hide the others' figures
                print(f"| {name} | failed: {type(exc).__name__}: {exc} | | | | |", flush=True)
            else:
                print(row(name, result), flush=True)
    finally:
        stop_peer(peer)
    print(f"\nload average at the end: {', '.join(f'{x:.2f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
