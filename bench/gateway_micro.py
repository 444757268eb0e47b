"""Micro-benchmark of the gateway's W1 path: pub-out batches of room messages to rooms of
local clients on real loopback TCP connections, flushed once per burst of batches.

    python -m bench.gateway_micro [--rooms 10] [--members 50] [--senders 5] [--lines 6]
                                  [--burst 12] [--batches 20000]

Each batch is one sender's event as W1 makes it: its `Mark` and `--lines` `RoomEvent`s
of its room (the sender is a member: text mode leaves its own lines out). The senders
take turns over the rooms; `_flush` runs after every `--burst` batches, as the SUB
pump's `after_burst` does. It builds a real `Gateway` (its ZeroMQ sockets connect
nowhere), real `Client`s on TCP connections over 127.0.0.1, joins them to their rooms
through the room table, and times `_on_batch` + `_flush` in CPU time of the thread
(the kernel's part of a send included; the receiving ends are drained outside the
timed part). Prints microseconds per delivery. It runs against the tree it is started
from: the same file with an older checkout on PYTHONPATH gives the before figure.
"""

from __future__ import annotations

import argparse
import socket
import time

import trio
import zmq

from gateway.client import Client, ClientHooks
from gateway.server import Gateway, GatewayConfig
from protocol import codec
from protocol.doors import LineDoor
from protocol.messages import Batch, BatchItem, ChatEvent, EventType, Mark, RoomEvent, topic_of


def _pairs(count: int) -> list[tuple[socket.socket, socket.socket]]:
    """`count` TCP connections over loopback: (our end, the client's end)."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(count)
        pairs = []
        for _ in range(count):
            theirs = socket.create_connection(listener.getsockname())
            ours, _ = listener.accept()
            ours.setblocking(False)
            theirs.setblocking(False)
            pairs.append((ours, theirs))
        return pairs


def _joins(rooms: list[list[str]]) -> list[BatchItem]:
    joined = ChatEvent(EventType.INFO, "joined")
    return [RoomEvent(f"#r{r}", seq, joined, cid, 1)
            for r, cids in enumerate(rooms) for seq, cid in enumerate(cids, 1)]


def _batches(rooms: list[list[str]], senders: int, lines: int, count: int) -> list[tuple[BatchItem, ...]]:
    out: list[tuple[BatchItem, ...]] = []
    for n in range(count):
        r = n % len(rooms)
        sender = rooms[r][(n // len(rooms)) % senders]
        items: list[BatchItem] = [Mark(sender, n + 1)]
        for k in range(lines):
            event = ChatEvent(EventType.MESSAGE, f"bench {n}.{k} some text of a typical length for a chat",
                              room=f"#r{r}", sender=f"nick{sender[-4:]}", origin=sender, id=f"{sender}/{n}.{k}",
                              ts=1.7e9)
            items.append(RoomEvent(f"#r{r}", len(rooms[r]) + 1 + n, event))
        out.append(tuple(items))
    return out


async def run(rooms: int, members: int, senders: int, lines: int, burst: int, batches: int) -> tuple[float, int]:
    ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    gateway = Gateway(GatewayConfig(frontend="tcp://127.0.0.1:1", pub_out="tcp://127.0.0.1:1"), ctx)
    pairs = _pairs(rooms * members)
    try:
        async with trio.open_nursery() as nursery:
            gateway._nursery = nursery
            hooks = ClientHooks(gateway.config.limits, nursery.start_soon, gateway._on_lines, None, None, None)
            cids = [f"{gateway.instance}:{n}" for n in range(1, len(pairs) + 1)]
            for cid, (ours, _) in zip(cids, pairs, strict=True):
                gateway.clients[cid] = Client(cid, ours, LineDoor(4096), "bench", hooks)
            by_room = [cids[r * members:(r + 1) * members] for r in range(rooms)]
            topic = topic_of(gateway.instance)
            items = [tuple(_joins(by_room)), *_batches(by_room, senders, lines, batches)]
            frames = [[topic, (0).to_bytes(8, "big") + (n + 1).to_bytes(8, "big"), codec.encode(Batch(batch))]
                      for n, batch in enumerate(items)]
            spent = 0.0
            for n, batch in enumerate(frames):
                started = time.thread_time()
                gateway._on_batch(batch)
                if n % burst == burst - 1:
                    gateway._flush()
                spent += time.thread_time() - started
                if n % (burst * 4) == burst * 4 - 1:
                    _drain(pairs)
            gateway._flush()
            _drain(pairs)
            nursery.cancel_scope.cancel()
        return spent, gateway.metrics.deliveries
    finally:
        for a, b in pairs:
            a.close()
            b.close()
        gateway.close()
        ctx.term()


def _drain(pairs: list[tuple[socket.socket, socket.socket]]) -> None:
    for _, theirs in pairs:
        try:
            while theirs.recv(1 << 20):
                pass
        except BlockingIOError:
            pass


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rooms", type=int, default=10)
    parser.add_argument("--members", type=int, default=50)
    parser.add_argument("--senders", type=int, default=5)
    parser.add_argument("--lines", type=int, default=6, help="room messages a batch (one sender's event)")
    parser.add_argument("--burst", type=int, default=12, help="batches between two flushes")
    parser.add_argument("--batches", type=int, default=20_000)
    args = parser.parse_args()
    spent, deliveries = trio.run(run, args.rooms, args.members, args.senders, args.lines, args.burst, args.batches)
    print(f"W1 shape: {args.rooms}x{args.members} members, {args.lines} lines a batch, flush every {args.burst}: "
          f"{spent / max(deliveries, 1) * 1e6:.3f} us/delivery ({deliveries} deliveries, {spent:.2f} s)")


if __name__ == "__main__":
    main()
