"""The private messages of one event run as one script (workers.scripts PRIVATE, workers.store batches),
against a real Valkey: one call for the consecutive ones, each line still its own result and effects in
order, replays per line however the lines were grouped, the fence and a full Valkey."""

from __future__ import annotations

import pytest
import redis

from protocol.messages import EventType, Lines
from protocol.replies import ReplyCode as R
from tests.e2e.test_hostile_stack import _fill
from tests.workers.conftest import GatewaysChat
from tests.workers.test_logic import GW_A, GW_B, connected, events_to, lines_to, snapshot
from tests.workers.test_say_batch import OneByOne, _evalshas, _replays_as_first
from workers.logic import Chat
from workers.store import BATCH_MAX, EpochFenced, Store

PRIVATE, MSG, NICK, ERROR = EventType.PRIVATE, EventType.MESSAGE, EventType.NICK, EventType.ERROR


def test_the_private_messages_of_an_event_are_one_script_call(chat: Chat, client: redis.Redis) -> None:
    a = connected(chat, f"{GW_A}:1", "alice")
    b = connected(chat, f"{GW_B}:1", "Bob")
    before = _evalshas(client)
    fx = a.send(*[f"/msg bob line {n}" for n in range(16)], now=5.0)
    assert _evalshas(client) - before == 1
    got = events_to(fx, b.cid)
    assert [(e.type, e.text, e.sender, e.to, e.origin) for e in got] == [
        (PRIVATE, f"line {n}", "alice", "Bob", a.cid) for n in range(16)]
    assert [e.id for e in got] == [f"{a.cid}/{a.seq - 16 + n}" for n in range(16)]
    assert {e.ts for e in got} == {5.0}
    assert events_to(fx, a.cid) == got  # the sender sees each too, in the same order


def test_a_batch_of_private_messages_is_bounded(chat: Chat, client: redis.Redis) -> None:
    a = connected(chat, f"{GW_A}:1", "alice")
    b = connected(chat, f"{GW_B}:1", "bob")
    before = _evalshas(client)
    fx = a.send(*[f"/msg bob {n}" for n in range(BATCH_MAX * 2 + 1)])
    assert _evalshas(client) - before == 3
    assert [e.text for e in events_to(fx, b.cid)] == [str(n) for n in range(BATCH_MAX * 2 + 1)]


def test_each_private_line_keeps_its_own_result_in_order(chat: Chat) -> None:
    a = connected(chat, f"{GW_A}:1", "alice", "#r")
    b = connected(chat, f"{GW_B}:1", "bob", "#r")
    c = connected(chat, f"{GW_A}:2", "Carol")
    fx = a.send("/msg bob one", "/msg nobody two", "/msg CAROL three", "/msg alice four", "room five",
                "/msg bob six", "/nick ann", "/msg bob seven", "/msg ann eight", "/msg alice nine", now=5.0)
    assert [(e.type, e.sender, e.to, e.text) for e in events_to(fx, b.cid)] == [
        (PRIVATE, "alice", "bob", "one"),
        (MSG, "alice", "", "room five"),
        (PRIVATE, "alice", "bob", "six"),
        (NICK, "alice", "ann", "alice is now known as ann"),  # a command ends the batch
        (PRIVATE, "ann", "bob", "seven"),
    ]
    assert [(e.sender, e.to, e.text) for e in events_to(fx, c.cid)] == [("alice", "Carol", "three")]
    mine = [(e.type, e.text, e.origin) for e in events_to(fx, a.cid) if e.type in (PRIVATE, ERROR)]
    assert mine == [
        (PRIVATE, "one", a.cid), (ERROR, "no such nick: nobody", ""), (PRIVATE, "three", a.cid),
        (PRIVATE, "four", ""),  # to oneself: no origin, shown once
        (PRIVATE, "six", a.cid), (PRIVATE, "seven", a.cid), (PRIVATE, "eight", ""),
        (ERROR, "no such nick: alice", ""),  # the nick was given up by a line before
    ]
    errors = [(e.code, e.args) for e in events_to(fx, a.cid) if e.type is ERROR]
    assert errors == [(R.NO_SUCH_NICK, ("nobody",)), (R.NO_SUCH_NICK, ("alice",))]


def test_a_target_that_left_is_no_such_nick_for_its_lines_only(chat: Chat) -> None:
    a = connected(chat, f"{GW_A}:1", "alice")
    b = connected(chat, f"{GW_B}:1", "bob")
    c = connected(chat, f"{GW_B}:2", "carol")
    c.send("/quit")
    fx = a.send("/msg carol one", "/msg bob two", "/msg carol three")
    assert lines_to(fx, a.cid) == [(ERROR, "no such nick: carol"), (PRIVATE, "two"), (ERROR, "no such nick: carol")]
    assert lines_to(fx, b.cid) == [(PRIVATE, "two")]


def test_a_private_batch_of_a_connection_redis_forgot_is_recovered_and_run(chat: Chat, client: redis.Redis) -> None:
    a = connected(chat, f"{GW_A}:1", "alice")
    client.flushall()
    fx = a.send("/msg bob one", "/msg bob two")
    texts = [text for _, text in lines_to(fx, a.cid)]
    assert texts[0].startswith("the service lost your session")
    assert texts[1:] == ["no such nick: bob"] * 2


PRIVATE_LINES = ("/msg bob one", "/msg nobody two", "/msg #r three", "/msg bob four", "/who", "/msg BOB five",
                 "/msg alice six")


def test_a_private_batch_replayed_line_by_line_is_the_first_run(client: redis.Redis, prefix: str) -> None:
    _replays_as_first(Store(client, prefix=prefix), OneByOne(client, prefix=prefix), client, prefix, PRIVATE_LINES)


def test_private_lines_replayed_as_a_batch_are_their_first_runs(client: redis.Redis, prefix: str) -> None:
    _replays_as_first(OneByOne(client, prefix=prefix), Store(client, prefix=prefix), client, prefix, PRIVATE_LINES)


def test_a_private_batch_replayed_after_part_of_it_ran(chat: Chat, client: redis.Redis, prefix: str) -> None:
    a = connected(chat, f"{GW_A}:1", "alice")
    b = connected(chat, f"{GW_B}:1", "bob")
    store = Store(client, prefix=prefix)
    first = store.run([store.private((a.seq, a.seq + n), a.cid, "bob", 5.0) for n in range(2)])  # a worker died
    b.send("/nick robert")  # after the first run: the lines it ran keep their result, the others see this
    fx = chat.handle(Lines(a.cid, a.seq, ("/msg bob m0", "/msg bob m1", "/msg bob m2", "/msg robert m3")), 6.0)
    got = [(e.type, e.text, e.to, e.ts) for e in events_to(fx, a.cid)]
    assert got == [(PRIVATE, "m0", "bob", 5.0), (PRIVATE, "m1", "bob", 5.0), (ERROR, "no such nick: bob", "", 0.0),
                   (PRIVATE, "m3", "robert", 6.0)]
    assert [ts for _, _, _, ts in first] == [5.0, 5.0]


def test_a_stale_epoch_refuses_the_whole_private_batch(client: redis.Redis, prefix: str) -> None:
    store = Store(client, prefix=prefix)
    a = connected(Chat(store), f"{GW_A}:1", "alice")
    connected(Chat(store), f"{GW_B}:1", "bob")
    client.set(f"{prefix}broker:epoch", 5)
    store.epoch = 4
    before = snapshot(client, prefix)
    with pytest.raises(EpochFenced):
        Chat(store).handle(Lines(a.cid, a.seq, ("/msg bob one", "/msg bob two", "/msg nobody three")), 5.0)
    assert snapshot(client, prefix) == before


def test_a_full_valkey_still_serves_private_messages_and_their_replays(full_url: str) -> None:
    client = redis.Redis.from_url(full_url, decode_responses=True)
    try:
        store = Store(client, prefix="f:")
        chat = GatewaysChat(store)
        a = connected(chat, f"{GW_A}:1", "alice")
        b = connected(chat, f"{GW_B}:1", "bob")
        store.run([store.private((a.seq, a.seq), a.cid, "bob", 5.0)])
        _fill(client)
        fx = chat.handle(Lines(a.cid, a.seq, ("/msg bob m0", "/msg bob m1", "/msg nobody m2")), 6.0)
        assert [(e.text, e.ts) for e in events_to(fx, b.cid)] == [("m0", 5.0), ("m1", 6.0)]
        assert [t for t in lines_to(fx, a.cid) if t[0] == ERROR] == [(ERROR, "no such nick: nobody")]
        again = chat.handle(Lines(a.cid, a.seq, ("/msg bob m0", "/msg bob m1", "/msg nobody m2")), 7.0)
        assert again.items == fx.items
    finally:
        client.close()
