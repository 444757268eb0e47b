"""Micro-benchmark of the gateway's W1 path: pub-out batches of room messages to rooms of
local clients on real loopback TCP connections, flushed once per burst of batches.

    python -m bench.gateway_micro [--rooms 10] [--members 50] [--senders 5] [--lines 5]
                                  [--events 30] [--burst 1] [--batches 2000]

Each batch carries `--events` senders' events as a worker publishes them in W1: each a
`Mark` and `--lines` `RoomEvent`s of its room (the sender is a member: text mode leaves
its own lines out), the events taking turns over the rooms and each room's senders. In
W1 (measured: about one pub-out message a pass of the SUB pump, one flush a pass) a batch
holds some 150 room messages, a dozen or more per room, so the defaults flush after every
batch. It builds a real `Gateway` (its ZeroMQ sockets connect nowhere), real `Client`s on
TCP connections over 127.0.0.1, joins them to their rooms through the room table, and
times `_on_batch` + `_flush` (and `_settle`, where the tree has it) in CPU time of the
thread (the kernel's part of a send included; the receiving ends are drained outside the
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


def _batches(rooms: list[list[str]], senders: int, lines: int, events: int,
             count: int) -> list[tuple[BatchItem, ...]]:
    out: list[tuple[BatchItem, ...]] = []
    seq = 1 << 20  # after every join
    for n in range(count):
        items: list[BatchItem] = []
        for e in range(events):
            k = n * events + e
            r = k % len(rooms)
            sender = rooms[r][(k // len(rooms)) % senders]
            items.append(Mark(sender, k + 1))
            for j in range(lines):
                seq += 1
                event = ChatEvent(EventType.MESSAGE, f"bench {k}.{j} some text of a typical length for a chat",
                                  room=f"#r{r}", sender=f"nick{sender[-4:]}", origin=sender, id=f"{sender}/{k}.{j}",
                                  ts=1.7e9)
                items.append(RoomEvent(f"#r{r}", seq, event))
        out.append(tuple(items))
    return out


async def run(rooms: int, members: int, senders: int, lines: int, events: int, burst: int,
              batches: int) -> tuple[float, int]:
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
            items = [tuple(_joins(by_room)), *_batches(by_room, senders, lines, events, batches)]
            frames = [[topic, (0).to_bytes(8, "big") + (n + 1).to_bytes(8, "big"), codec.encode(Batch(batch))]
                      for n, batch in enumerate(items)]
            settle = getattr(gateway, "_settle", lambda: None)  # the SUB pump's end of a pass, where there is one
            gateway._on_batch(frames[0])  # the joins
            settle()
            gateway._flush()
            _drain(pairs)
            joined = gateway.metrics.deliveries
            spent = 0.0
            for n, batch in enumerate(frames[1:]):
                started = time.thread_time()
                gateway._on_batch(batch)
                settle()
                if n % burst == burst - 1:
                    gateway._flush()
                spent += time.thread_time() - started
                if n % burst == burst - 1:
                    _drain(pairs)
            gateway._flush()
            _drain(pairs)
            nursery.cancel_scope.cancel()
        return spent, gateway.metrics.deliveries - joined
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
    parser.add_argument("--lines", type=int, default=5, help="room messages of one sender's event")
    parser.add_argument("--events", type=int, default=30, help="senders' events a batch")
    parser.add_argument("--burst", type=int, default=1, help="batches between two flushes")
    parser.add_argument("--batches", type=int, default=2000)
    args = parser.parse_args()
    spent, deliveries = trio.run(run, args.rooms, args.members, args.senders, args.lines, args.events, args.burst,
                                 args.batches)
    print(f"W1 shape: {args.rooms}x{args.members} members, {args.events} events of {args.lines} lines a batch, "
          f"flush every {args.burst}: "
          f"{spent / max(deliveries, 1) * 1e6:.3f} us/delivery ({deliveries} deliveries, {spent:.2f} s)")


if __name__ == "__main__":
    main()
