"""Which way to bridge pyzmq into Trio: a measurement.

`python -m bench.bridge` runs a ROUTER echo peer in a separate process and,
from one Trio program, pushes messages through a DEALER three ways:

- pump: `gateway.zmq_pump.ZmqPump`, the gateway's own (one task owns the
  socket; it reads ZMQ_EVENTS, moves bursts with NOBLOCK, and sleeps on
  `trio.lowlevel.wait_readable(ZMQ_FD)` only when nothing can move);
- thread: a dedicated thread owns the socket and polls it together with an
  inproc PAIR that Trio pokes when it has queued something; what it receives
  goes to Trio in bursts through `TrioToken.run_sync_soon`;
- zmq-anyio: `zmq_anyio.Socket` on Trio through AnyIO, if it is installed.

For each: throughput (N messages of 100 bytes pushed at once, counted back:
messages/s, and the Trio process's CPU seconds per 100,000 messages from
`time.process_time`, which counts every thread) and latency (sequential
round trips: p50/p99 in microseconds). Everything is on 127.0.0.1 with
ports the OS picks, and closed at the end.
"""

from __future__ import annotations

import multiprocessing
import os
import queue
import statistics
import threading
import time
from collections.abc import Awaitable, Callable

import trio
import zmq

from gateway.zmq_pump import ZmqPump

PAYLOAD = b"x" * 100
MESSAGES = 100_000
ROUND_TRIPS = 2_000


def echo_peer(ready: multiprocessing.synchronize.Event, port: multiprocessing.sharedctypes.Synchronized) -> None:
    """The other side: a ROUTER that sends every message back to its sender."""
    ctx = zmq.Context()
    sock = ctx.socket(zmq.ROUTER)
    sock.setsockopt(zmq.SNDHWM, 0)
    sock.setsockopt(zmq.RCVHWM, 0)
    port.value = sock.bind_to_random_port("tcp://127.0.0.1")
    ready.set()
    while True:
        frames = sock.recv_multipart()
        if frames[-1] == b"stop":
            break
        sock.send_multipart(frames)
    sock.close()
    ctx.term()


def _dealer(ctx: zmq.Context[zmq.Socket[bytes]], endpoint: str) -> zmq.Socket[bytes]:
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.SNDHWM, 0)
    sock.setsockopt(zmq.RCVHWM, 0)
    sock.connect(endpoint)
    return sock


class Counter:
    """Counts replies; wakes whoever waits for the n-th."""

    def __init__(self) -> None:
        self.count = 0
        self.want = 0
        self.reached = trio.Event()

    def expect(self, want: int) -> None:
        self.count, self.want, self.reached = 0, want, trio.Event()

    def on_message(self, frames: list[bytes]) -> None:
        self.count += 1
        if self.count >= self.want:
            self.reached.set()


# --- the three bridges, each as: start(counter) -> send(frames) -------------------------

Send = Callable[[list[bytes]], None]


async def with_pump(endpoint: str, body: Callable[[Send, Counter], Awaitable[None]]) -> None:
    ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    sock = _dealer(ctx, endpoint)
    counter = Counter()
    pump = ZmqPump(sock, counter.on_message, capacity=10 * MESSAGES)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(pump.run)
        await body(pump.put_nowait, counter)
        nursery.cancel_scope.cancel()
    sock.close()
    ctx.term()


class ThreadBridge:
    """A thread owns the DEALER; Trio queues frames and pokes it through an inproc PAIR."""

    def __init__(self, ctx: zmq.Context[zmq.Socket[bytes]], endpoint: str, deliver: Callable[[list[bytes]], None]):
        self.outbox: queue.SimpleQueue[list[bytes]] = queue.SimpleQueue()
        self.token = trio.lowlevel.current_trio_token()
        self.deliver = deliver
        self.poke_in = ctx.socket(zmq.PAIR)
        self.poke_in.bind(f"inproc://poke-{id(self)}")
        self.poke = ctx.socket(zmq.PAIR)  # Trio's end
        self.poke.connect(f"inproc://poke-{id(self)}")
        self.sock = _dealer(ctx, endpoint)
        self.running = True
        self.poked = False
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def send(self, frames: list[bytes]) -> None:
        self.outbox.put(frames)
        if not self.poked:  # one poke wakes the thread for everything queued until it drains
            self.poked = True
            self.poke.send(b"")

    def _run(self) -> None:
        poller = zmq.Poller()
        poller.register(self.sock, zmq.POLLIN)
        poller.register(self.poke_in, zmq.POLLIN)
        while self.running:
            ready = dict(poller.poll(100))
            if self.poke_in in ready:
                while self.poke_in.poll(0):
                    self.poke_in.recv()
                self.poked = False
                while not self.outbox.empty():
                    self.sock.send_multipart(self.outbox.get())
            if self.sock in ready:
                burst: list[list[bytes]] = []
                while self.sock.poll(0) and len(burst) < 256:
                    burst.append(self.sock.recv_multipart())
                self.token.run_sync_soon(self._hand_over, burst)

    def _hand_over(self, burst: list[list[bytes]]) -> None:
        for frames in burst:
            self.deliver(frames)

    def close(self) -> None:
        self.running = False
        self.thread.join()
        for sock in (self.sock, self.poke, self.poke_in):
            sock.close()


async def with_thread(endpoint: str, body: Callable[[Send, Counter], Awaitable[None]]) -> None:
    ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    counter = Counter()
    bridge = ThreadBridge(ctx, endpoint, counter.on_message)
    try:
        await body(bridge.send, counter)
    finally:
        bridge.close()
        ctx.term()


async def with_zmq_anyio(endpoint: str, body: Callable[[Send, Counter], Awaitable[None]]) -> None:
    import zmq_anyio

    ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    counter = Counter()
    async with zmq_anyio.Socket(_dealer(ctx, endpoint)) as sock, trio.open_nursery() as nursery:

        async def receive() -> None:
            while True:
                future = sock.arecv_multipart()  # copy=True: the frames are bytes
                await future.wait()
                counter.on_message(future.return_value)  # type: ignore[arg-type]

        nursery.start_soon(receive)
        await body(sock.send_multipart, counter)
        nursery.cancel_scope.cancel()
    ctx.term()


# --- the measurements ---------------------------------------------------------------------


async def measure(bridge: Callable[..., Awaitable[None]], endpoint: str) -> dict[str, float]:
    out: dict[str, float] = {}

    async def body(send: Send, counter: Counter) -> None:
        counter.expect(1)  # warm up: the connection is there
        send([PAYLOAD])
        await counter.reached.wait()
        counter.expect(MESSAGES)
        wall, cpu = time.perf_counter(), time.process_time()
        for i in range(MESSAGES):
            send([PAYLOAD])
            if i % 1000 == 999:
                await trio.lowlevel.checkpoint()
        with trio.fail_after(60):
            await counter.reached.wait()
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        out.update(msgs_per_s=MESSAGES / wall, cpu_per_100k=cpu * 100_000 / MESSAGES)
        rtts = []
        for _ in range(ROUND_TRIPS):
            counter.expect(1)
            start = time.perf_counter()
            send([PAYLOAD])
            await counter.reached.wait()
            rtts.append((time.perf_counter() - start) * 1e6)
        q = statistics.quantiles(rtts, n=100)
        out.update(p50_us=q[49], p99_us=q[98])

    await bridge(endpoint, body)
    return out


def bridges() -> dict[str, Callable[..., Awaitable[None]]]:
    found: dict[str, Callable[..., Awaitable[None]]] = {"pump": with_pump, "thread": with_thread}
    try:
        import zmq_anyio  # noqa: F401
    except ImportError:
        print("zmq-anyio is not installed: skipped (pip install zmq-anyio to include it)")
    else:
        found["zmq-anyio"] = with_zmq_anyio
    return found


def main() -> None:
    spawn = multiprocessing.get_context("spawn")
    ready, port = spawn.Event(), spawn.Value("i", 0)
    peer = spawn.Process(target=echo_peer, args=(ready, port), daemon=True)
    peer.start()
    try:
        if not ready.wait(20):
            raise SystemExit("the echo peer did not start")
        endpoint = f"tcp://127.0.0.1:{port.value}"
        print(f"load average {os.getloadavg()}; {MESSAGES:,} messages of {len(PAYLOAD)} B, "
              f"{ROUND_TRIPS:,} round trips\n")
        print("| bridge | msgs/s | CPU-s per 100k | p50 us | p99 us |\n|---|---|---|---|---|")
        for name, bridge in bridges().items():
            try:
                r = trio.run(measure, bridge, endpoint)
            except Exception as exc:  # one bridge failing must not hide the others' figures
                print(f"| {name} | failed: {type(exc).__name__}: {exc} | | | |")
                continue
            print(f"| {name} | {r['msgs_per_s']:,.0f} | {r['cpu_per_100k']:.2f} | {r['p50_us']:.0f} | "
                  f"{r['p99_us']:.0f} |", flush=True)
    finally:
        ctx = zmq.Context()
        stopper = _dealer(ctx, f"tcp://127.0.0.1:{port.value}")
        stopper.send(b"stop")
        peer.join(5)
        if peer.is_alive():
            peer.kill()
        stopper.close()
        ctx.term()


if __name__ == "__main__":
    main()
