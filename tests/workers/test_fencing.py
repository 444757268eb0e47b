"""The broker pair's fence, against real Valkey: the lease (broker.lease) and the
scripts that refuse a deposed broker's epoch (workers.scripts, workers.store)."""

from __future__ import annotations

import time

import pytest
import redis

from broker.lease import Lease, LeaseConfig
from protocol import codec
from protocol.messages import Connected, Heartbeat, Lines
from workers.handler import Breaker, Handler
from workers.logic import Chat
from workers.store import EpochFenced, Store


def _lease(url: str, prefix: str, ttl: float = 0.3) -> Lease:
    return Lease(LeaseConfig(url, prefix), ttl, timeout=1.0)


def _snapshot(client: redis.Redis, prefix: str) -> dict[str, object]:
    """Every key of the test's prefix but the lease's, with its value."""
    out: dict[str, object] = {}
    for key in client.scan_iter(f"{prefix}*"):
        if key.startswith(f"{prefix}broker:"):
            continue
        kind = client.type(key)
        out[key] = {"string": client.get, "hash": client.hgetall, "set": client.smembers,
                    "zset": lambda k: client.zrange(k, 0, -1, withscores=True),
                    "stream": client.xrange}[kind](key)
    return out


def test_one_broker_holds_the_lease_and_a_new_holder_gets_a_new_epoch(
        valkey_url: str, client: redis.Redis, prefix: str) -> None:
    lease = _lease(valkey_url, prefix)
    try:
        assert lease.take("broker.a") == 1
        assert lease.take("broker.a") == 1  # renewed, same epoch
        assert lease.take("broker.b") == 0  # held
        assert 0 < lease.ends_in <= 0.3  # and when it ends
        deadline = time.monotonic() + 5
        while (epoch := lease.take("broker.b")) == 0 and time.monotonic() < deadline:
            client.pexpire(f"{prefix}broker:lease", 1)  # no sleep: end the lease now
        assert epoch == 2
        assert lease.take("broker.a") == 0  # the earlier holder cannot renew
        lease.release("broker.a")  # not the holder: nothing happens
        assert client.get(f"{prefix}broker:lease") == "broker.b"
        lease.release("broker.b")
        assert lease.take("broker.a") == 3  # at once, under a new epoch: never reused
    finally:
        lease.close()


def test_an_unreachable_redis_is_no_answer_not_a_loss(tmp_path: object) -> None:
    lease = Lease(LeaseConfig("redis://127.0.0.1:1/0"), 0.3, timeout=0.2)
    try:
        assert lease.take("broker.a") is None
    finally:
        lease.close()


def test_a_stale_epoch_changes_nothing(client: redis.Redis, prefix: str) -> None:
    store = Store(client, prefix=prefix)
    client.set(f"{prefix}broker:epoch", 5)
    store.epoch = 5
    store.run_one(store.connect("gw:1", "gw", "a"))
    store.run_one(store.join((1, 0), "gw:1", "#r"))
    before = _snapshot(client, prefix)
    client.incr(f"{prefix}broker:epoch")  # another broker took over
    for call in (store.connect("gw:2", "gw", "b"), store.set_nick((2, 0), "gw:1", "nick"),
                 store.join((2, 1), "gw:1", "#s"), store.say((2, 2), "gw:1", "#r", "hi", "m1", 1.0, "message"),
                 store.part((2, 3), "gw:1", "#r"), store.topic((2, 4), "gw:1", "#r", "t", 1.0),
                 store.leave((3, 0), "gw:1"), store.reap("gw")):
        with pytest.raises(EpochFenced):
            store.run([call])
    assert _snapshot(client, prefix) == before
    store.epoch = 6
    assert store.run_one(store.set_nick((2, 0), "gw:1", "nick"))  # the current epoch is served


def test_epoch_zero_is_a_lone_broker_never_checked(client: redis.Redis, prefix: str) -> None:
    store = Store(client, prefix=prefix)
    client.set(f"{prefix}broker:epoch", 9)
    assert store.run_one(store.connect("gw:1", "gw", "a"))


def test_a_fenced_dispatch_is_not_answered_and_its_epoch_is_dropped_after(
        client: redis.Redis, prefix: str) -> None:
    store = Store(client, prefix=prefix)
    handler = Handler(Chat(store), Breaker(1.0))
    client.set(f"{prefix}broker:epoch", 2)

    def dispatch(epoch: int, *events: Connected | Lines) -> list[bytes]:
        return [codec.encode(Heartbeat("broker.x", epoch, True)), *(f for e in events for f in codec.event_frames(e))]

    done = handler.frames(dispatch(2, Connected("gw:1", 0, "a")), time.time(), time.monotonic())
    assert done.events == (("gw:1", 0),)
    done = handler.frames(dispatch(1, Lines("gw:1", 1, ("hello",))), time.time(), time.monotonic())
    assert done.events == () and done.publish == ()  # no Mark: its gateway sends it again
    before = _snapshot(client, prefix)
    done = handler.frames(dispatch(1, Lines("gw:1", 1, ("/nick x",))), time.time(), time.monotonic())
    assert done.events == () and _snapshot(client, prefix) == before  # dropped unread
    done = handler.frames(dispatch(2, Lines("gw:1", 1, ("hello",))), time.time(), time.monotonic())
    assert done.events == (("gw:1", 1),)  # the current broker is served


def test_a_redis_that_lost_the_epoch_fences_the_old_one_and_serves_the_next(
        client: redis.Redis, prefix: str) -> None:
    """Every fence is temporary: epochs counted from 1 again (a Redis without its data) are served."""
    store = Store(client, prefix=prefix)
    handler = Handler(Chat(store), Breaker(1.0))
    client.set(f"{prefix}broker:epoch", 5)
    beat = codec.encode(Heartbeat("broker.x", 5, True))
    assert handler.frames([beat, *codec.event_frames(Connected("gw:1", 0, "a"))], time.time(), time.monotonic()).events
    client.delete(f"{prefix}broker:epoch")  # gone with the data
    done = handler.frames([beat, *codec.event_frames(Lines("gw:1", 1, ("hi",)))], time.time(), time.monotonic())
    assert done.events == ()
    client.incr(f"{prefix}broker:epoch")  # a broker acquires: epoch 1
    again = codec.encode(Heartbeat("broker.y", 1, True))
    done = handler.frames([again, *codec.event_frames(Lines("gw:1", 1, ("hi",)))], time.time(), time.monotonic())
    assert done.events == (("gw:1", 1),)
