"""Micro-benchmark of the gateway's delivery path: `Gateway._on_batch` + `_flush`
for room messages to N local clients (socketpairs), per view.

    python -m bench.deliver_micro [--clients 50] [--rounds 20000] [--view text|json|ws|irc]
                                  [--room 16]

Each batch is one message as a `Deliver` to every client, or with `--room K`
K messages of one sender as `RoomEvent`s of a room every client joined (the
room table expands them: W1's shape, where a sender's event carries the lines
it wrote meanwhile).

It builds a real `Gateway` (its ZeroMQ sockets connect nowhere) and real
`Client`s on socketpairs, feeds pub-out frames straight to `_on_batch`, and
times `_on_batch` + `_flush` only, in CPU time of the thread (the machine may
be shared; the receiving ends are drained outside the timed part). Prints
microseconds per batch and per delivery. It runs against the tree it is
started from, so the same file run with an older checkout on PYTHONPATH gives
the before figure; views it does not know are skipped.
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
from protocol.doors import Door, IrcDoor, LineDoor, WebDoor
from protocol.irc import IrcSettings
from protocol.messages import Batch, BatchItem, ChatEvent, Deliver, EventType, Mark, RoomEvent, SetMode, topic_of
from protocol.websocket import WebConfig


def _door(view: str) -> Door:
    if view == "irc":
        irc = IrcDoor(IrcSettings("irc.bench"))
        irc.conn.registered, irc.conn.nick = True, "bench"
        return irc
    if view == "ws":
        web = WebDoor(WebConfig())
        web.conn.phase = type(web.conn.phase).OPEN
        return web
    return LineDoor(4096)


def _client(gateway: Gateway, cid: str, sock: socket.socket, view: str) -> Client:
    hooks = ClientHooks(gateway.config.limits, gateway._nursery.start_soon, gateway._on_lines, None, None, None)
    return Client(cid, sock, _door(view), "bench", hooks)


def _batches(cids: list[str], rounds: int, view: str, room: int) -> list[tuple[BatchItem, ...]]:
    """Each round's batch items (the first one also sets the mode or joins the room)."""
    first: list[BatchItem] = [SetMode(cid, True) for cid in cids] if view == "json" else []
    if room:
        join = ChatEvent(EventType.INFO, "joined")
        first += [RoomEvent("#bench", seq, join, cid, 1) for seq, cid in enumerate(cids, 1)]
    out = []
    for n in range(rounds):
        items: list[BatchItem] = list(first) if n == 0 else []
        items.append(Mark("elsewhere:1", n + 1))
        for k in range(max(room, 1)):
            event = ChatEvent(EventType.MESSAGE, f"message number {n}.{k} for the room", room="#bench",
                              sender="speaker", origin="elsewhere:1", id=f"x:1/{n}.{k}", ts=1.7e9)
            items.append(RoomEvent("#bench", len(cids) + 1, event) if room else Deliver(tuple(cids), event))
        out.append(tuple(items))
    return out


async def run(clients: int, rounds: int, view: str, room: int = 0) -> tuple[float, int]:
    ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    gateway = Gateway(GatewayConfig(frontend="tcp://127.0.0.1:1", pub_out="tcp://127.0.0.1:1"), ctx)
    pairs = [socket.socketpair() for _ in range(clients)]
    try:
        async with trio.open_nursery() as nursery:
            gateway._nursery = nursery
            cids = [f"{gateway.instance}:{n}" for n in range(1, clients + 1)]
            for cid, (ours, _) in zip(cids, pairs, strict=True):
                ours.setblocking(False)
                gateway.clients[cid] = _client(gateway, cid, ours, view)
            topic = topic_of(gateway.instance)
            frames = []
            for n, items in enumerate(_batches(cids, rounds, view, room)):
                numbering = (0).to_bytes(8, "big") + (n + 1).to_bytes(8, "big")  # a lone broker: epoch 0, then seq
                frames.append([topic, numbering, codec.encode(Batch(items))])
            spent = 0.0
            drain_every = max(1, 50 // max(room, 1))  # about 50 lines a client: no backlog, nobody cut
            for n, batch in enumerate(frames):
                started = time.thread_time()
                gateway._on_batch(batch)
                gateway._flush()
                spent += time.thread_time() - started
                if n % drain_every == drain_every - 1:
                    _drain(pairs)
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
        theirs.setblocking(False)
        try:
            while theirs.recv(1 << 20):
                pass
        except BlockingIOError:
            pass


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--rounds", type=int, default=20_000)
    parser.add_argument("--view", choices=("text", "json", "ws", "irc"), default="text")
    parser.add_argument("--room", type=int, default=0, help="room messages a batch (RoomEvents); 0: one Deliver")
    args = parser.parse_args()
    spent, deliveries = trio.run(run, args.clients, args.rounds, args.view, args.room)
    shape = f"{args.room} room events" if args.room else "1 delivery"
    print(f"{args.view}: {args.clients} clients, {args.rounds} batches of {shape}: "
          f"{spent / args.rounds * 1e6:.1f} us/batch, "
          f"{spent / max(deliveries, 1) * 1e6:.2f} us/delivery ({deliveries} deliveries)")


if __name__ == "__main__":
    main()
