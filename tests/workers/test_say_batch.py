"""The room messages of one event run as one script (workers.scripts SAY, workers.store batches),
against a real Valkey: one call for the consecutive ones, each line still its own effects in
order, replays per line however the lines were grouped, the fence and a full Valkey."""

from __future__ import annotations

from typing import Any

import pytest
import redis

from protocol.messages import EventType, Lines
from protocol.replies import ReplyCode as R
from tests.e2e.test_hostile_stack import _fill
from tests.workers.conftest import GatewaysChat
from tests.workers.test_logic import GW_A, GW_B, connected, events_to, lines_to, replay_event, snapshot
from workers.logic import UNAVAILABLE, Chat
from workers.store import BATCH_MAX, EpochFenced, Store, history_entry

MSG, ACTION, ERROR = EventType.MESSAGE, EventType.ACTION, EventType.ERROR


class OneByOne(Store):
    """A store that sends every call in a round trip of its own: no two lines batched."""

    def run(self, calls: list[Any]) -> list[Any]:
        results: list[Any] = []
        for call in calls:
            results += super().run([call])
        return results


def _evalshas(client: redis.Redis) -> int:
    stats: dict[str, Any] = client.info("commandstats")  # type: ignore[assignment]
    return int(stats.get("cmdstat_evalsha", {}).get("calls", 0))


def test_the_room_messages_of_an_event_are_one_script_call(chat: Chat, client: redis.Redis) -> None:
    a = connected(chat, f"{GW_A}:1", "alice", "#r")
    b = connected(chat, f"{GW_B}:1", "bob", "#r")
    before = _evalshas(client)
    fx = a.send(*[f"line {n}" for n in range(16)], now=5.0)
    assert _evalshas(client) - before == 1
    got = events_to(fx, b.cid)
    assert [e.text for e in got] == [f"line {n}" for n in range(16)]
    assert [e.id for e in got] == [f"{a.cid}/{a.seq - 16 + n}" for n in range(16)]
    assert {e.ts for e in got} == {5.0}


def test_a_batch_is_bounded(chat: Chat, client: redis.Redis, prefix: str) -> None:
    a = connected(chat, f"{GW_A}:1", "alice", "#r")
    b = connected(chat, f"{GW_B}:1", "bob", "#r")
    before = _evalshas(client)
    fx = a.send(*[str(n) for n in range(BATCH_MAX * 2 + 1)])
    assert _evalshas(client) - before == 3
    assert [e.text for e in events_to(fx, b.cid)] == [str(n) for n in range(BATCH_MAX * 2 + 1)]
    assert client.xlen(f"{prefix}room:#r:history") >= 100


def test_each_line_keeps_its_own_effects_in_order(chat: Chat, client: redis.Redis, prefix: str) -> None:
    a = connected(chat, f"{GW_A}:1", "alice", "#r", "#s")  # current room: #s
    b = connected(chat, f"{GW_B}:1", "bob", "#r", "#s")
    fx = a.send("one", "/me waves", "/msg #r to r", "/msg #t nowhere", "/msg #s back in s",
                "/nick ann", "two", now=5.0)
    assert [(e.type, e.room, e.sender, e.text) for e in events_to(fx, b.cid)] == [
        (MSG, "#s", "alice", "one"),
        (ACTION, "#s", "alice", "waves"),
        (MSG, "#r", "alice", "to r"),
        (MSG, "#s", "alice", "back in s"),
        (EventType.NICK, "", "alice", "alice is now known as ann"),  # a command ends the batch
        (MSG, "#s", "ann", "two"),
    ]
    assert [t for t in lines_to(fx, a.cid) if t[0] == ERROR] == [(ERROR, "you are not in #t: /join #t first")]
    history = client.xrange(f"{prefix}room:#s:history")
    entries = [history_entry(f) for _, f in history]  # type: ignore[union-attr]
    assert [(e["from"], e["text"], e["kind"]) for e in entries] == [
        ("alice", "one", "message"), ("alice", "waves", "action"), ("alice", "back in s", "message"),
        ("ann", "two", "message")]


def test_lines_of_no_room_get_their_error_each(chat: Chat) -> None:
    a = connected(chat, f"{GW_A}:1", "alice")
    fx = a.send("one", "two", "/me three")
    assert [code for _, _, code in [(e.type, e.text, e.code) for e in events_to(fx, a.cid)]] == [R.NO_ROOM] * 3


def test_a_batch_of_a_connection_redis_forgot_is_recovered_and_run(chat: Chat, client: redis.Redis) -> None:
    a = connected(chat, f"{GW_A}:1", "alice", "#r")
    client.flushall()
    fx = a.send("one", "two")
    texts = [text for _, text in lines_to(fx, a.cid)]
    assert texts[0].startswith("the service lost your session")
    assert texts[1:] == ["join a room first: /join #name"] * 2


def _replays_as_first(first_store: Store, again_store: Store, client: redis.Redis, prefix: str,
                      lines: tuple[str, ...]) -> None:
    first_chat = GatewaysChat(first_store)
    a = connected(first_chat, f"{GW_A}:1", "alice", "#r", "#s")
    connected(first_chat, f"{GW_B}:1", "bob", "#r", "#s")
    event = Lines(a.cid, a.seq, lines)
    first = first_chat.handle(event, 5.0)
    again_chat = GatewaysChat(again_store)
    again_chat.tables, again_chat.shown = first_chat.tables, first_chat.shown
    again = replay_event(again_chat, event, client, prefix, now=6.0)
    assert again.items == first.items


LINES = ("one", "/me two", "/msg #r three", "/msg #t four", "/who", "five", "six")


def test_a_batch_replayed_line_by_line_is_the_first_run(client: redis.Redis, prefix: str) -> None:
    _replays_as_first(Store(client, prefix=prefix), OneByOne(client, prefix=prefix), client, prefix, LINES)


def test_lines_replayed_as_a_batch_are_their_first_runs(client: redis.Redis, prefix: str) -> None:
    _replays_as_first(OneByOne(client, prefix=prefix), Store(client, prefix=prefix), client, prefix, LINES)


def test_a_batch_replayed_after_part_of_it_ran(chat: Chat, client: redis.Redis, prefix: str) -> None:
    a = connected(chat, f"{GW_A}:1", "alice", "#r")
    b = connected(chat, f"{GW_B}:1", "bob", "#r")
    store = Store(client, prefix=prefix)
    first = store.run([store.say((a.seq, a.seq + n), a.cid, None, f"m{n}", f"{a.cid}/{a.seq + n}", 5.0,
                                 "message") for n in range(2)])  # lines 0 and 1 only (a worker died)
    fx = chat.handle(Lines(a.cid, a.seq, ("m0", "m1", "m2", "m3")), 6.0)
    got = events_to(fx, b.cid)
    assert [(e.text, e.ts) for e in got] == [("m0", 5.0), ("m1", 5.0), ("m2", 6.0), ("m3", 6.0)]
    assert [e.ts for e in got[:2]] == [ts for _, _, _, ts, _ in first]
    assert client.xlen(f"{prefix}room:#r:history") == 4


def test_a_stale_epoch_refuses_the_whole_batch(client: redis.Redis, prefix: str) -> None:
    store = Store(client, prefix=prefix)
    a = connected(Chat(store), f"{GW_A}:1", "alice", "#r")
    client.set(f"{prefix}broker:epoch", 5)
    store.epoch = 4
    before = snapshot(client, prefix)
    with pytest.raises(EpochFenced):
        Chat(store).handle(Lines(a.cid, a.seq, ("one", "two", "three")), 5.0)
    assert snapshot(client, prefix) == before


# --- Valkey full ----------------------------------------------------------------------------


def test_a_full_valkey_refuses_each_line_and_replays_those_recorded(full_url: str) -> None:
    client = redis.Redis.from_url(full_url, decode_responses=True)
    try:
        store = Store(client, prefix="f:")
        chat = GatewaysChat(store)
        a = connected(chat, f"{GW_A}:1", "alice", "#r")
        b = connected(chat, f"{GW_B}:1", "bob", "#r")
        store.run([store.say((a.seq, a.seq), a.cid, None, "m0", f"{a.cid}/{a.seq}", 5.0, "message")])
        _fill(client)
        history = client.xlen("f:room:#r:history")
        fx = chat.handle(Lines(a.cid, a.seq, ("m0", "m1", "m2")), 6.0)
        assert [e.text for e in events_to(fx, b.cid)] == ["m0"]  # recorded before: replayed
        assert [t for t in lines_to(fx, a.cid) if t[0] == ERROR] == [(ERROR, UNAVAILABLE)] * 2  # the rest, each
        assert client.xlen("f:room:#r:history") == history
        fresh = chat.handle(Lines(a.cid, a.seq + 3, ("n0", "n1")), 7.0)
        assert lines_to(fresh, a.cid) == [(ERROR, UNAVAILABLE)] * 2
        assert not events_to(fresh, b.cid)
    finally:
        client.close()
