"""The cheaper scripts (workers.scripts) against a real Valkey: what a room's or a target's lines share is
recorded once and each line's 'ok' result is one string, a gateway named with a newline still gets its
results whole, the history stays trimmed, the first result of an event replaces the last event's whole, and
a full Valkey still refuses every script that grows the state, also one that writes nothing but its result."""

from __future__ import annotations

from typing import Any

import pytest
import redis

from tests.e2e.test_hostile_stack import _fill
from tests.workers.conftest import GatewaysChat
from tests.workers.test_logic import GW_A, GW_B, connected, events_to, replay, snapshot
from workers import scripts
from workers.logic import Chat
from workers.store import Failed, Store, history_entry

GATEWAYS = [f"gw{n}.abc123" for n in range(20)]


def _records(client: redis.Redis, prefix: str, cid: str) -> dict[str, str]:
    return client.hgetall(f"{prefix}res:{cid}")  # type: ignore[return-value]


def test_the_lines_of_a_room_record_what_they_share_once(chat: Chat, client: redis.Redis, prefix: str) -> None:
    members = [connected(chat, f"{gw}:1", f"m{n}", "#r") for n, gw in enumerate(GATEWAYS)]
    a = members[0]
    fx = a.send(*[f"line {n}" for n in range(10)], now=5.0)
    assert [e.text for e in events_to(fx, members[-1].cid)] == [f"line {n}" for n in range(10)]
    records = _records(client, prefix, a.cid)
    lines = {field: value for field, value in records.items() if field.isdigit()}
    assert len(lines) == 10
    assert all(len(value) < 40 for value in lines.values())  # no gateway list, no cjson, per line
    shared = [value for field, value in records.items() if field.startswith("r")]
    assert len(shared) == 1
    assert all(gw in shared[0] for gw in GATEWAYS)


def test_a_room_message_and_a_private_message_reply_one_string(client: redis.Redis, prefix: str) -> None:
    store = Store(client, prefix=prefix)
    a = connected(Chat(store), f"{GW_A}:1", "alice", "#r")
    connected(Chat(store), f"{GW_B}:1", "bob", "#r")
    sha = client.script_load(scripts.SAY)
    said: Any = client.evalsha(sha, 0, prefix, a.cid, 100, "5.0", 40, 40, "message ", "hi", 0)
    ts, seq, nick, room, *gateways = said[0].split("\n")
    assert (ts, nick, room, sorted(gateways)) == ("5.0", "alice", "#r", [GW_A, GW_B])
    assert int(seq) > 0
    sha = client.script_load(scripts.PRIVATE)
    private: Any = client.evalsha(sha, 0, prefix, a.cid, "6.0", 41, 41, "BOB", 0)
    assert private == [f"6.0\nalice\n{GW_B}:1\nbob"]


@pytest.mark.parametrize("newline_in", ["gateway", "target"])
def test_a_name_with_a_newline_gets_its_results_whole_and_replayed(
        chat: Chat, client: redis.Redis, prefix: str, newline_in: str) -> None:
    """A gateway may call itself anything: a newline in a name falls back to the results as tables."""
    odd = "gw\nodd.abc123"
    a = connected(chat, f"{GW_A}:1", "alice", "#r")
    b = connected(chat, f"{odd}:1", "bob", "#r")
    if newline_in == "gateway":
        first = a.send("one", "two", now=5.0)
        assert [e.text for e in events_to(first, b.cid)] == ["one", "two"]
        said = Store(client, prefix=prefix).run_one(
            Store(client, prefix=prefix).say((a.seq - 2, a.seq - 2), a.cid, None, "one", "x", 9.0, "message"))
        assert sorted(said[2]) == sorted([GW_A, odd]) and said[3] == 5.0  # the first run's, replayed
    else:
        first = a.send("/msg bob one", "/msg bob two", now=5.0)
        assert [e.text for e in events_to(first, b.cid)] == ["one", "two"]
    again = replay(a, client, prefix)
    assert again.items == first.items


def test_a_rooms_history_stays_trimmed(chat: Chat, client: redis.Redis, prefix: str) -> None:
    a = connected(chat, f"{GW_A}:1", "alice", "#r")
    for _ in range(20):
        a.send(*[f"line {n}" for n in range(50)])
    assert scripts.HISTORY_KEEP <= client.xlen(f"{prefix}room:#r:history") <= 3 * scripts.HISTORY_KEEP


def test_an_events_first_result_replaces_the_last_events_whole(chat: Chat, client: redis.Redis,
                                                                  prefix: str) -> None:
    a = connected(chat, f"{GW_A}:1", "alice", "#r", "#s")
    a.send("one", "two", "/msg alice three")
    a.send("/nick ann")  # a script of `replayable` (grows): its own key, moved over the last results
    assert set(_records(client, prefix, a.cid)) == {"event", str(a.seq - 1)}
    assert 0 < client.ttl(f"{prefix}res:{a.cid}") <= scripts.RESULT_TTL
    a.send("/who")  # `replayable`, served when full
    assert set(_records(client, prefix, a.cid)) == {"event", str(a.seq - 1)}
    a.send("/nick bob", "/join #t", "/who")  # one event: the results of its lines together
    assert set(_records(client, prefix, a.cid)) == {"event", *(str(a.seq - n) for n in (1, 2, 3))}
    assert not list(client.scan_iter(match=f"{prefix}res-next:*"))


def test_a_full_valkey_refuses_what_grows_even_a_result_alone_and_serves_the_rest(full_url: str) -> None:
    client = redis.Redis.from_url(full_url, decode_responses=True)
    try:
        store = Store(client, prefix="f:", max_rooms=1)
        chat = GatewaysChat(store)
        a = connected(chat, f"{GW_A}:1", "alice", "#r")
        connected(chat, f"{GW_B}:1", "bob", "#r")
        _fill(client)
        before = snapshot(client, "f:")
        seq = a.seq + 100
        calls = [
            store.set_nick((seq, seq), a.cid, "carol"),  # writes: refused
            store.set_nick((seq + 1, seq + 1), a.cid, "bob"),  # taken: only its result to write, refused
            store.join((seq + 2, seq + 2), a.cid, "#other"),  # too many rooms: the same
            store.topic((seq + 3, seq + 3), a.cid, None, None, 1.0),  # a show: the same
        ]
        for call in calls:
            result = store.run([call])[0]
            assert isinstance(result, redis.exceptions.OutOfMemoryError), result
        assert snapshot(client, "f:") == before
        who = store.run_one(store.who((seq + 4, seq + 4), a.cid, None))  # served
        assert (who[0], sorted(who[1])) == ("#r", ["alice", "bob"])
        assert store.run_one(store.part((seq + 5, seq + 5), a.cid, None))[1] == "#r"  # served: frees memory
        assert store.run_one(store.leave((seq + 6, seq + 6), a.cid))[0] == "alice"
    finally:
        client.close()


def test_a_nick_refused_when_full_changes_nothing_and_is_refused_again(full_url: str) -> None:
    client = redis.Redis.from_url(full_url, decode_responses=True)
    try:
        store = Store(client, prefix="f:")
        a = connected(GatewaysChat(store), f"{GW_A}:1", "alice")
        _fill(client)
        before = snapshot(client, "f:")
        for _ in range(2):
            result = store.run([store.set_nick((a.seq, a.seq), a.cid, "zed")])[0]
            assert isinstance(result, redis.exceptions.OutOfMemoryError)
        assert snapshot(client, "f:") == before
        assert not isinstance(store.run([store.who((a.seq + 1, a.seq + 1), a.cid, "#none")])[0], Exception)
        assert isinstance(store.run_one(store.history((a.seq + 2, a.seq + 2), a.cid, None, 5)), Failed)
    finally:
        client.close()


def test_a_room_message_of_its_own_id_kind_and_room_is_stored_as_given(client: redis.Redis, prefix: str) -> None:
    """SAY takes a line's kind, room and id in one argument, its id only when it is not the line's own."""
    store = Store(client, prefix=prefix)
    a = connected(Chat(store), f"{GW_A}:1", "alice", "#r", "#s")
    odd_id = "an id\nwith a newline"
    said = store.run([store.say((50, 50), a.cid, "#r", "one", odd_id, 5.0, "action"),
                      store.say((50, 51), a.cid, None, "two", f"{a.cid}/51", 5.0, "message")])
    assert [(s[1], s[3]) for s in said] == [("#r", 5.0), ("#s", 5.0)]
    history = {room: [f for _, f in client.xrange(f"{prefix}room:{room}:history")]  # type: ignore[union-attr]
               for room in ("#r", "#s")}
    # an id with a newline keeps the fields apart; the line's own id goes in the one field
    assert history == {"#r": [{"id": odd_id, "from": "alice", "text": "one", "ts": "5.0", "kind": "action"}],
                       "#s": [{"m": f"{a.cid}/51\nalice\n5.0\nmessage\ntwo"}]}
    assert history_entry(history["#s"][0]) == {
        "id": f"{a.cid}/51", "from": "alice", "text": "two", "ts": "5.0", "kind": "message"}
