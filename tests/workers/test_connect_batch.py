"""The connects of one gateway next to each other in a round trip run as one script (workers.scripts
CONNECT, workers.store), against a real Valkey: one call, each connection its own result in order,
idempotent one by one, a lost gateway's and a departed connection's refused, a full Valkey's told."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import redis

from protocol.messages import Connected, Lines
from tests.e2e.test_hostile_stack import _fill
from tests.workers.test_logic import GW_A, GW_B
from workers.logic import Chat
from workers.store import BATCH_MAX, Store


def _evalshas(client: redis.Redis) -> int:
    stats: dict[str, Any] = client.info("commandstats")  # type: ignore[assignment]
    return int(stats.get("cmdstat_evalsha", {}).get("calls", 0))


def test_the_connects_of_a_gateway_are_one_script_call(store: Store, client: redis.Redis) -> None:
    cids = [f"{GW_A}:{n}" for n in range(1, 17)]
    before = _evalshas(client)
    nicks = store.run([store.connect(cid, GW_A, f"10.0.0.{n}:1") for n, cid in enumerate(cids)])
    assert _evalshas(client) - before == 1
    assert len(set(nicks)) == 16 and all(n.startswith("guest-") for n in nicks)
    for n, (cid, nick) in enumerate(zip(cids, nicks, strict=True)):
        assert client.hgetall(f"{store._p}conn:{cid}") == {"nick": nick, "room": "", "gw": GW_A,
                                                           "addr": f"10.0.0.{n}:1"}
        assert client.get(f"{store._p}nick:{nick}") == cid
    assert client.smembers(f"{store._p}gw:{GW_A}:conns") == set(cids)


def test_each_connect_of_a_group_is_idempotent_on_its_own(store: Store, client: redis.Redis) -> None:
    first = store.run_one(store.connect(f"{GW_A}:2", GW_A, "a"))
    nicks = store.run([store.connect(f"{GW_A}:{n}", GW_A, "a") for n in (1, 2, 3)])
    assert nicks[1] == first  # registered before: its nick again, nothing new
    again = store.run([store.connect(f"{GW_A}:{n}", GW_A, "a") for n in (3, 1, 2)])
    assert again == [nicks[2], nicks[0], nicks[1]]  # a replay grouped otherwise: the same nicks
    assert int(client.get(f"{store._p}guests") or 0) == 3


def test_connects_of_other_gateways_are_their_own_calls_in_order(store: Store, client: redis.Redis) -> None:
    calls = [store.connect(f"{GW_A}:1", GW_A, "a"), store.connect(f"{GW_A}:2", GW_A, "a"),
             store.connect(f"{GW_B}:1", GW_B, "b"), store.connect(f"{GW_A}:3", GW_A, "a")]
    before = _evalshas(client)
    nicks = store.run(calls)
    assert _evalshas(client) - before == 3
    assert [int(n.removeprefix("guest-")) for n in nicks] == sorted(int(n.removeprefix("guest-")) for n in nicks)
    assert client.hget(f"{store._p}conn:{GW_B}:1", "gw") == GW_B


def test_a_group_is_bounded(store: Store, client: redis.Redis) -> None:
    before = _evalshas(client)
    nicks = store.run([store.connect(f"{GW_A}:{n}", GW_A, "a") for n in range(BATCH_MAX * 2 + 1)])
    assert _evalshas(client) - before == 3
    assert len(set(nicks)) == BATCH_MAX * 2 + 1


def test_a_lost_gateway_and_a_departed_connection_are_refused_in_a_group(
        chat: Chat, store: Store, client: redis.Redis) -> None:
    left = f"{GW_A}:1"
    chat.handle(Connected(left, 0, "a"), 1.0)
    chat.handle(Lines(left, 1, ("/quit",)), 1.0)
    nicks = store.run([store.connect(cid, GW_A, "a") for cid in (f"{GW_A}:2", left, f"{GW_A}:3")])
    assert nicks[0] and nicks[2] and nicks[1] is None  # a late connect of a departed one: refused alone
    client.set(f"{store._p}gwdead:{GW_B}", 1)
    assert store.run([store.connect(f"{GW_B}:{n}", GW_B, "b") for n in (1, 2)]) == [None, None]
    assert not client.exists(f"{store._p}conn:{GW_B}:1")


@pytest.fixture
def full_store(full_url: str) -> Iterator[tuple[Store, redis.Redis]]:
    client = redis.Redis.from_url(full_url, decode_responses=True)
    try:
        yield Store(client, "full:"), client
    finally:
        client.close()


def test_a_full_valkey_refuses_new_connects_each_told_and_replays_still_answered(
        full_store: tuple[Store, redis.Redis]) -> None:
    store, client = full_store
    known = store.run_one(store.connect(f"{GW_A}:1", GW_A, "a"))
    _fill(client)
    results = store.run([store.connect(f"{GW_A}:{n}", GW_A, "a") for n in (2, 1, 3)])
    assert isinstance(results[0], redis.exceptions.OutOfMemoryError)
    assert results[1] == known  # registered before it filled up: answered, nothing written
    assert isinstance(results[2], redis.exceptions.OutOfMemoryError)
    assert not client.exists(f"{store._p}conn:{GW_A}:2")
    chat = Chat(store)
    [fx] = chat.handle_batch([Connected(f"{GW_A}:4", 0, "a")], 1.0)
    assert fx.unserved  # a connect Valkey could not take: unanswered, its gateway sends it again
    client.execute_command("FLUSHDB", "SYNC")  # room again, freed before the reply (a plain FLUSHDB may
    # free lazily, in the background, on Valkey 8): the next try is served
    assert store.run_one(store.connect(f"{GW_A}:4", GW_A, "a"))
