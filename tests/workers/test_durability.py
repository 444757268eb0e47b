"""WAIT for replicas after the claims that must survive a failover, and only then.

Real Valkey (no replicas: WAIT answers 0 after its timeout); the worker's
choice of durability from its Redis URL is pure.
"""

from __future__ import annotations

import logging

import pytest
import redis

from workers import scripts
from workers.store import Durability, Store
from workers.worker import WorkerConfig, durability


def _waits(client: redis.Redis) -> int:
    stats = client.info("commandstats").get("cmdstat_wait", {})
    return int(stats.get("calls", 0)) if isinstance(stats, dict) else 0


def test_a_single_redis_never_waits(client: redis.Redis, store: Store) -> None:
    before = _waits(client)
    store.run_one(store.connect("c1", "gw", "addr"))
    store.run_one(store.set_nick((1, 0), "c1", "plain"))
    store.run_one(store.leave((2, 0), "c1"))
    assert _waits(client) == before


def test_claims_wait_for_a_replica_and_an_unreplicated_one_is_logged_and_answered(
        client: redis.Redis, prefix: str, caplog: pytest.LogCaptureFixture) -> None:
    store = Store(client, prefix=prefix, durability=Durability(replicas=1, timeout_ms=20))
    for script in (scripts.CONNECT, scripts.NICK_JOIN, scripts.WHO):
        client.script_load(script)  # no NOSCRIPT round trip (which would WAIT again)
    before = _waits(client)
    with caplog.at_level(logging.WARNING, logger="chat.store"):
        nick = store.run_one(store.connect("c1", "gw", "addr"))
        assert nick and nick.startswith("guest-")  # answered anyway: the write happened
        old, _ = store.run_one(store.set_nick((1, 0), "c1", "durable"))
        assert old == nick
        results = store.run([store.who((2, 0), "c1", None), store.set_nick((2, 1), "c1", "again")])
        assert len(results) == 2  # the WAIT's reply is not among the results
    assert _waits(client) == before + 3  # one a round trip with a claim in it
    assert sum("a failover now could lose it" in r.message for r in caplog.records) == 3
    store.run_one(store.who((3, 0), "c1", None))  # a read: no WAIT
    assert _waits(client) == before + 3


@pytest.mark.parametrize("url, wait, expected", [
    ("redis://127.0.0.1:6379/0", None, None),
    ("unix:///tmp/v.sock", None, None),
    ("redis+sentinel://127.0.0.1:26379/chat", None, Durability(1, 500)),
    ("redis+sentinel://127.0.0.1:26379/chat", 0, None),
    ("redis://127.0.0.1:6379/0", 2, Durability(2, 500)),
])
def test_durability_follows_the_url_unless_told(url: str, wait: int | None, expected: Durability | None) -> None:
    config = WorkerConfig(backend="tcp://127.0.0.1:1", redis_url=url, redis_wait_replicas=wait, redis_timeout=1.0)
    assert durability(config) == expected
