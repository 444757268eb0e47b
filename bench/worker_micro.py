"""Micro-benchmark of a worker's CPU per line: the handle path from a dispatch's frames to its Done.

    python -m bench.worker_micro [--dispatches 300] [--repeat 5] [--lines 14] [--events 5]

Starts a Valkey of its own (stack.valkey), registers W1's shape (10 rooms x 50
members on one gateway, 5 senders a room) and W4's (50 pairs), then times
`Handler.frames` (decode, `Chat.handle_batch`, the Done with its batches
encoded: everything a worker does but the ZeroMQ send) on dispatches as the
broker sends them: `--events` events of `--lines` lines each (a W1 event
carries about 14: a connection's lines waiting behind its event in flight).

`--shapes register` (W3's registration) times instead the Connected event and the
Lines event of `/nick` and `/join` into rooms filled to `REGISTER_ROOM` members one
after the other (a joiner finds about 10), `--events` events a dispatch as for the
others, per registration (both events).

Reports the CPU time of this thread (Valkey's is not counted) per line, best
of `--repeat` runs (the machine may be shared: alternate old and new runs). It
runs against the tree it is started from, so the same file run with an older
checkout first on PYTHONPATH gives the before figures.
"""

from __future__ import annotations

import argparse
import itertools
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import redis

from protocol import codec
from protocol.messages import Connected, Heartbeat, Lines
from stack.children import stop
from stack.process import tune_gc
from stack.valkey import start_valkey
from workers.handler import Breaker, Handler
from workers.logic import Chat
from workers.store import Store

GATEWAY = "gw0.bench"
TEXT = "1700000000.123456 17 4242 the quick brown"  # about 40 bytes, as the load generator's
REGISTER_ROOM = 20  # W3's rooms


@dataclass
class Conn:
    """One client: its cid, the seq of its next event, the line its next event starts with."""

    cid: str
    prefix: str = ""
    seq: int = 1
    sent: int = 0

    def event(self, lines: int) -> Lines:
        texts = tuple(f"{self.prefix}{TEXT} {self.sent + n}" for n in range(lines))
        event = Lines(self.cid, self.seq, texts)
        self.seq += lines
        self.sent += lines
        return event


def _setup(handler: Handler, conns: list[Conn], commands: dict[str, list[str]]) -> None:
    """Connect `conns`, then send each its setup lines, one event each."""
    for conn in conns:
        handler.frames(_frames([Connected(conn.cid, 0, "127.0.0.1:1")]), time.time(), time.monotonic(), 1)
    for conn in conns:
        for line in commands.get(conn.cid, []):
            handler.frames(_frames([Lines(conn.cid, conn.seq, (line,))]), time.time(), time.monotonic(), 1)
            conn.seq += 1


_HEARTBEAT = codec.encode(Heartbeat("broker-bench"))


def _frames(items: list[Connected | Lines]) -> list[bytes]:
    frames = [_HEARTBEAT]
    for item in items:
        frames += codec.event_frames(item)
    return frames


def w1(handler: Handler) -> list[Conn]:
    """10 rooms x 50 members on one gateway -> the 50 senders (5 a room)."""
    conns, commands, senders = [], {}, []
    for r in range(10):
        for m in range(50):
            conn = Conn(f"{GATEWAY}:{r * 50 + m + 1}")
            conns.append(conn)
            commands[conn.cid] = [f"/nick w1r{r}m{m}", f"/join #w1-{r}"]
            if m < 5:
                senders.append(conn)
    _setup(handler, conns, commands)
    return senders


def w4(handler: Handler) -> list[Conn]:
    """50 pairs, each sending the other private messages -> the 100 senders."""
    conns, commands = [], {}
    for p in range(50):
        a, b = Conn(f"{GATEWAY}:{1000 + 2 * p}"), Conn(f"{GATEWAY}:{1001 + 2 * p}")
        a.prefix, b.prefix = f"/msg w4b{p} ", f"/msg w4a{p} "
        commands[a.cid], commands[b.cid] = [f"/nick w4a{p}"], [f"/nick w4b{p}"]
        conns += [a, b]
    _setup(handler, conns, commands)
    return conns


def _dispatches(senders: list[Conn], count: int, events: int, lines: int) -> Iterator[list[bytes]]:
    ring = itertools.cycle(senders)
    for _ in range(count):
        yield _frames([next(ring).event(lines) for _ in range(events)])


def timed(handler: Handler, senders: list[Conn], args: argparse.Namespace) -> float:
    """CPU seconds of this thread per line, best of `--repeat` runs."""
    best = float("inf")
    for _ in range(args.repeat):
        dispatches = list(_dispatches(senders, args.dispatches, args.events, args.lines))
        started = time.thread_time()
        for frames in dispatches:
            done = handler.frames(frames, time.time(), time.monotonic(), 1)
            assert len(done.events) == args.events, done
        best = min(best, (time.thread_time() - started) / (args.dispatches * args.events * args.lines))
    return best


def _registration(conn: Conn, n: int) -> Lines:
    """The n-th connection's /nick and /join, in one event (as W3's clients send them)."""
    return Lines(conn.cid, 1, (f"/nick i{n}", f"/join #idle-{n // REGISTER_ROOM}"))


def registered(handler: Handler, args: argparse.Namespace) -> float:
    """W3's registrations, `--events` connections a dispatch: CPU seconds of this thread per registration
    (its Connected and its Lines of /nick and /join), best of `--repeat` runs, each with new connections."""
    best, made = float("inf"), 0
    per_run = args.dispatches * args.events
    for _ in range(args.repeat):
        conns = [Conn(f"{GATEWAY}:{100_000 + made + n}") for n in range(per_run)]
        connects = [_frames([Connected(conn.cid, 0, "127.0.0.1:1") for conn in conns[i:i + args.events]])
                    for i in range(0, per_run, args.events)]
        joins = [_frames([_registration(conn, made + i + k) for k, conn in enumerate(conns[i:i + args.events])])
                 for i in range(0, per_run, args.events)]
        made += per_run
        started = time.thread_time()
        for connect, join in zip(connects, joins, strict=True):
            assert len(handler.frames(connect, time.time(), time.monotonic(), 1).events) == args.events
            assert len(handler.frames(join, time.time(), time.monotonic(), 1).events) == args.events
        best = min(best, (time.thread_time() - started) / per_run)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dispatches", type=int, default=300, help="dispatches per run")
    parser.add_argument("--events", type=int, default=5, help="events per dispatch")
    parser.add_argument("--lines", type=int, default=14, help="lines per event")
    parser.add_argument("--repeat", type=int, default=5, help="runs; the best counts")
    parser.add_argument("--shapes", default="w1,w4", help="w1, w4 and/or register")
    args = parser.parse_args()
    shapes = args.shapes.split(",")
    with tempfile.TemporaryDirectory() as tmp:
        child, url = start_valkey(Path(tmp) / "valkey")
        client = redis.Redis.from_url(url, decode_responses=True)
        try:
            handler = Handler(Chat(Store(client, prefix="b:")), Breaker(1.0))
            for name, shape in (("W1 room message", w1), ("W4 private message", w4)):
                if shape.__name__ not in shapes:
                    continue
                senders = shape(handler)
                tune_gc()  # as a worker does once it is set up
                per_line = timed(handler, senders, args)
                print(f"{name:<24} {per_line * 1e6:8.2f} us CPU per line "
                      f"({args.events} events x {args.lines} lines a dispatch)")
            if "register" in shapes:
                tune_gc()
                print(f"{'W3 registration':<24} {registered(handler, args) * 1e6:8.2f} us CPU per registration "
                      f"({args.events} events a dispatch)")
        finally:
            client.close()
            stop(child)


if __name__ == "__main__":
    main()
