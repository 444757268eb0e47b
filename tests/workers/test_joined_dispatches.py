"""Dispatches that wait behind one another at a worker are served together: one round trip to
Redis, one Done naming their events in order (workers.worker `join_waiting`). Real ZeroMQ sockets
(a ROUTER in the broker's place, the worker's own `BrokerLink`) and a real Valkey."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import redis
import zmq

from protocol import codec
from protocol.messages import Batch, Connected, Done, Heartbeat, Lines, Mark, Ready, WorkItem
from workers.handler import Breaker, Handler
from workers.logic import Chat
from workers.metrics import WorkerMetrics
from workers.store import Store
from workers.worker import JOIN_MAX, BrokerLink, WorkerConfig, join_waiting

GW = "gwJ.abc123"
HB = codec.encode(Heartbeat("broker.x"))


class Broker:
    """The broker's backend ROUTER, and one worker link connected to it."""

    def __init__(self, ctx: zmq.Context[zmq.Socket[bytes]], url: str, endpoint: str = "") -> None:
        self.router = ctx.socket(zmq.ROUTER)
        self.router.setsockopt(zmq.LINGER, 0)
        self.router.setsockopt(zmq.RCVTIMEO, 5000)  # a bound wait: a test that hangs fails
        if endpoint:
            self.router.bind(endpoint)
        else:
            endpoint = f"tcp://127.0.0.1:{self.router.bind_to_random_port('tcp://127.0.0.1')}"
        self.link = BrokerLink(ctx, WorkerConfig(backend=endpoint, redis_url=url), endpoint)
        self.worker, ready = self.router.recv_multipart()
        assert isinstance(codec.decode(ready), Ready)

    def dispatch(self, *events: WorkItem, heartbeat: bytes = HB) -> None:
        self.router.send_multipart([self.worker, heartbeat, *(f for e in events for f in codec.event_frames(e))])

    def until_queued(self, messages: int) -> None:
        """Until the link's DEALER holds `messages` messages unread (they crossed the TCP link)."""
        sock = self.link.sock
        for _ in range(1000):  # bounded: each round waits for the socket to become readable
            if messages == 0 or sock.poll(5000, zmq.POLLIN):
                break
        assert int(sock.getsockopt(zmq.EVENTS)) & zmq.POLLIN

    def answers(self) -> list[Done]:
        """The Done messages the worker sent, once it is quiet (heartbeats skipped)."""
        out: list[Done] = []
        while self.router.poll(200, zmq.POLLIN):
            frames = self.router.recv_multipart()[1:]
            if len(frames) > 1 or isinstance(codec.decode(frames[0]), Done):
                out.append(codec.decode_done(frames))
        return out

    def close(self) -> None:
        self.link.close()
        self.router.close()


@pytest.fixture
def broker(valkey_url: str) -> Iterator[Broker]:
    ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    b = Broker(ctx, valkey_url)
    try:
        yield b
    finally:
        b.close()
        ctx.term()


@pytest.fixture
def handler(store: Store) -> Handler:
    return Handler(Chat(store, metrics=WorkerMetrics()), Breaker(1.0))


def _round_trips(client: redis.Redis) -> int:
    stats = client.info("commandstats")
    return int(stats.get("cmdstat_evalsha", {}).get("calls", 0))


def _marks(done: Done) -> list[tuple[str, int]]:
    """The Marks of a Done's batch for GW, in order."""
    (gateway, batch), = done.publish
    assert gateway == GW
    decoded = codec.decode(batch)
    assert isinstance(decoded, Batch)
    return [(i.cid, i.seq) for i in decoded.items if isinstance(i, Mark)]


def test_dispatches_waiting_behind_one_another_are_one_done_in_order(
        broker: Broker, handler: Handler, client: redis.Redis) -> None:
    cids = [f"{GW}:{n}" for n in range(1, 7)]
    broker.dispatch(Connected(cids[0], 0, "a"), Connected(cids[1], 0, "b"))
    broker.dispatch(Connected(cids[2], 0, "c"))
    broker.dispatch(Connected(cids[3], 0, "d"), Connected(cids[4], 0, "e"), Connected(cids[5], 0, "f"))
    broker.until_queued(3)
    broker.link.serve_one(handler)
    broker.link.serve_one(handler)  # whatever was not joined (the TCP link may split the three)
    broker.link.serve_one(handler)
    dones = broker.answers()
    assert [key for done in dones for key in done.events] == [(cid, 0) for cid in cids]
    assert [mark for done in dones for mark in _marks(done)] == [(cid, 0) for cid in cids]
    assert len(dones) < 3  # at least two of them were joined
    registry = handler.metrics.registry
    assert registry.get_sample_value("chat_worker_dispatches_total") == 3  # messages, joined or not
    assert registry.get_sample_value("chat_worker_events_total", {"kind": "connect"}) == 6
    assert all(client.hget(f"{handler.chat.store._p}conn:{cid}", "nick") for cid in cids)


def test_joined_dispatches_share_one_round_trip_and_one_done(handler: Handler, client: redis.Redis) -> None:
    cids = [f"{GW}:{n}" for n in range(1, 4)]
    first = [HB, *codec.event_frames(Connected(cids[0], 0, "a"))]
    waiting = [[HB, *codec.event_frames(Connected(cid, 0, "x"))] for cid in cids[1:]]
    joined, dispatches, rest = join_waiting(first, lambda: waiting.pop(0) if waiting else None)
    assert rest is None and dispatches == 3
    before = _round_trips(client)
    done = handler.frames(joined, 5.0, 0.0, dispatches)
    assert list(done.events) == [(cid, 0) for cid in cids]
    assert _marks(done) == [(cid, 0) for cid in cids]
    assert _round_trips(client) - before == 1  # one pipelined round trip, one script for three connects


def test_another_heartbeat_is_not_joined_but_served_next() -> None:
    other = codec.encode(Heartbeat("broker.y", 2, True))
    first = [HB, b"k1", b"e1"]
    waiting = [[HB, b"k2", b"e2"], [other, b"k3", b"e3"], [HB, b"k4", b"e4"]]
    joined, dispatches, rest = join_waiting(first, lambda: waiting.pop(0) if waiting else None)
    assert joined == [HB, b"k1", b"e1", b"k2", b"e2"] and dispatches == 2
    assert rest == [other, b"k3", b"e3"]  # read already: the caller serves it next, in its turn
    assert waiting == [[HB, b"k4", b"e4"]]  # not read: it waits for its own turn
    assert first == [HB, b"k1", b"e1"]  # the message itself is left as it came


def test_a_heartbeat_alone_is_absorbed_and_a_control_message_is_not_joined() -> None:
    waiting = [[HB], [HB, b"k2", b"e2"]]
    joined, dispatches, rest = join_waiting([HB, b"k1", b"e1"], lambda: waiting.pop(0) if waiting else None)
    assert (joined, dispatches, rest) == ([HB, b"k1", b"e1", b"k2", b"e2"], 2, None)
    alone = [HB]  # a heartbeat alone is not a dispatch: nothing waits to be joined to it
    assert join_waiting(alone, lambda: pytest.fail("read on")) == ([HB], 0, None)


def test_joining_is_bounded() -> None:
    reads = 0

    def waiting() -> list[bytes]:
        nonlocal reads
        reads += 1
        return [HB, b"k", b"e"]

    joined, dispatches, rest = join_waiting([HB, b"k", b"e"], waiting, limit=5)
    assert reads == 4 and rest is None and len(joined) == 1 + 2 * 5 and dispatches == 5


def test_a_line_event_and_a_connect_joined_keep_each_event_its_own_effects(
        broker: Broker, handler: Handler) -> None:
    a, b = f"{GW}:1", f"{GW}:2"
    broker.dispatch(Connected(a, 0, "a"))
    broker.until_queued(1)
    broker.link.serve_one(handler)
    broker.dispatch(Lines(a, 1, ("/nick alice", "/ping")))
    broker.dispatch(Connected(b, 0, "b"))
    broker.until_queued(2)
    broker.link.serve_one(handler)
    broker.link.serve_one(handler)
    dones = broker.answers()
    assert [key for done in dones for key in done.events] == [(a, 0), (a, 1), (b, 0)]
    texts: list[tuple[str, str]] = []
    for done in dones:
        (_, batch), = done.publish
        decoded = codec.decode(batch)
        assert isinstance(decoded, Batch)
        mark = ""
        for item in decoded.items:
            if isinstance(item, Mark):
                mark = item.cid
            else:
                texts.append((mark, item.event.text))  # type: ignore[union-attr]
    assert [t for t in texts if t[0] == a][1:] == [(a, "you are now alice"), (a, "pong")]
    assert texts[-1][0] == b and texts[-1][1].startswith("welcome! you are guest-")



def test_one_turn_serves_a_bounded_number_of_messages(valkey_url: str, handler: Handler) -> None:
    ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    b = Broker(ctx, valkey_url, "inproc://joined")  # inproc: what is sent is queued at once
    try:
        other = codec.encode(Heartbeat("broker.y"))  # every other dispatch under other bytes: none joins
        cids = [f"{GW}:{n}" for n in range(JOIN_MAX + 6)]
        for n, cid in enumerate(cids):
            b.dispatch(Connected(cid, 0, "a"), heartbeat=HB if n % 2 else other)
        b.link.serve_one(handler)
        first = b.answers()
        assert len(first) == JOIN_MAX + 1  # the rest waits for the next turn of the worker's loop
        for _ in range(len(cids)):  # bounded: each turn serves at least one
            if not b.link.sock.poll(200, zmq.POLLIN):
                break
            b.link.serve_one(handler)
        rest = b.answers()
        assert [key for done in first + rest for key in done.events] == [(cid, 0) for cid in cids]
    finally:
        b.close()
        ctx.term()
