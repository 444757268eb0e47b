"""A connection's registration (W5's churn: a /nick and a /join in one event) against a real Valkey:
the /nick and /join lines of an event run as one script call, each line replayable on its own however
a replay groups them, a full Valkey refuses them whole, a join's reply counts the members, and a /nick
of a connection in no room reads no room."""

from __future__ import annotations

from typing import Any

import redis

from tests.e2e.test_hostile_stack import _fill
from tests.workers.conftest import GatewaysChat
from tests.workers.test_logic import GW_A, GW_B, connected, events_to, lines_to, replay, snapshot
from workers.logic import Chat
from workers.store import Store, _joined_room


def _calls(client: redis.Redis, command: str) -> int:
    stats: dict[str, Any] = client.info("commandstats")  # type: ignore[assignment]
    return int(stats.get(f"cmdstat_{command}", {}).get("calls", 0))


def test_the_nick_and_join_of_one_event_are_one_script_call(chat: Chat, client: redis.Redis) -> None:
    connected(chat, f"{GW_B}:1", "bob", "#r")
    a = connected(chat, f"{GW_A}:1")
    before = _calls(client, "evalsha")
    fx = a.send("/nick alice", "/join #r", "/join #s", "/nick ann")
    assert _calls(client, "evalsha") == before + 1
    assert [text for _, text in lines_to(fx, a.cid)] == [
        "you are now alice", "you joined #r (2 here: alice, bob)", "you joined #s (1 here: alice)", "you are now ann"]
    assert [e.text for e in events_to(fx, f"{GW_B}:1")] == ["alice joined #r", "alice is now known as ann"]


def test_a_registration_replayed_whole_gives_the_same_and_changes_nothing(
        chat: Chat, client: redis.Redis, prefix: str) -> None:
    connected(chat, f"{GW_B}:1", "bob", "#r")
    a = connected(chat, f"{GW_A}:1")
    first = a.send("/nick alice", "/join #r")
    again = replay(a, client, prefix)  # asserts that Redis did not change
    assert again.items == first.items


def test_each_line_replays_its_own_result_however_the_lines_are_grouped(client: redis.Redis, prefix: str) -> None:
    """A first run that died after the /nick alone: the replay runs both lines together and gets the
    /nick's first result (the guest nick as the old one), the /join run once."""
    store = Store(client, prefix=prefix)
    chat = GatewaysChat(store)
    connected(chat, f"{GW_B}:1", "bob", "#r")
    a = connected(chat, f"{GW_A}:1")
    guest = store.run_one(store.connect(a.cid, GW_A, "addr"))  # registered already: its nick again
    event = a.seq
    assert store.run_one(store.set_nick((event, event), a.cid, "alice")) == (guest, [])
    before = snapshot(client, prefix)
    nick, joined = store.run([store.set_nick((event, event), a.cid, "alice"),
                              store.join((event, event + 1), a.cid, "#r")])
    assert nick == (guest, [])  # replayed, not run again (the old nick would be alice now)
    assert joined[:3] == ("alice", True, 2) and sorted(joined[3]) == ["alice", "bob"]
    assert snapshot(client, prefix) != before
    after = snapshot(client, prefix)
    for _ in range(2):  # one by one, then together again: the first results, nothing changed
        assert store.run([store.join((event, event + 1), a.cid, "#r")]) == [joined]
        assert store.run([store.set_nick((event, event), a.cid, "alice"),
                          store.join((event, event + 1), a.cid, "#r")]) == [nick, joined]
    assert snapshot(client, prefix) == after


def test_a_full_valkey_refuses_a_registration_whole_and_again(full_url: str) -> None:
    client = redis.Redis.from_url(full_url, decode_responses=True)
    try:
        store = Store(client, prefix="reg:")
        a = connected(GatewaysChat(store), f"{GW_A}:1")
        _fill(client)
        before = snapshot(client, "reg:")
        for _ in range(2):
            results = store.run([store.set_nick((a.seq, a.seq), a.cid, "zed"),
                                 store.join((a.seq, a.seq + 1), a.cid, "#full")])
            assert all(isinstance(r, redis.exceptions.OutOfMemoryError) for r in results), results
        assert snapshot(client, "reg:") == before
    finally:
        client.close()


def test_a_join_result_recorded_with_its_member_list_is_read_as_their_count() -> None:
    """A result recorded by the scripts before (the member cids) replays as the count it is now."""
    recorded = ["ok", "alice", 1, ["gw:1", "gw:2"], ["alice", "bob"], "", 3, ["gw"]]
    assert _joined_room(recorded) == ("alice", True, 2, ["alice", "bob"], "", 3, ["gw"])
    assert _joined_room([*recorded[:3], 2, *recorded[4:]]) == ("alice", True, 2, ["alice", "bob"], "", 3, ["gw"])


def test_a_nick_in_no_room_reads_no_room_and_one_in_rooms_tells_them(chat: Chat, client: redis.Redis) -> None:
    b = connected(chat, f"{GW_B}:1", "bob", "#r", "#s")
    a = connected(chat, f"{GW_A}:1", "alice")
    before = _calls(client, "smembers")
    a.send("/nick ann")
    assert _calls(client, "smembers") == before
    a.send("/join #r", "/join #s", "/part #s")  # #s was current: #r is current now
    fx = a.send("/nick amy")
    assert [e.text for e in events_to(fx, b.cid)] == ["ann is now known as amy"]
    a.send("/part #r")  # in no room
    fx = a.send("/nick ada")
    assert events_to(fx, b.cid) == []
    assert lines_to(fx, a.cid)[-1][1] == "you are now ada"


def test_a_first_event_with_no_results_kept_deletes_none(chat: Chat, client: redis.Redis, prefix: str) -> None:
    """A connection's first lines (its connect keeps no results): the records are written with no DEL
    of results before them (the one DEL is of the guest nick), and a replay still gives the same."""
    connected(chat, f"{GW_B}:1", "bob", "#r")
    a = connected(chat, f"{GW_A}:1")
    before = _calls(client, "del")
    first = a.send("/nick alice", "/join #r")
    assert _calls(client, "del") - before == 1
    assert client.ttl(f"{prefix}res:{a.cid}") > 0
    assert replay(a, client, prefix).items == first.items
    second = a.send("/part #r", "/join #r")  # the next event: the first's results go
    assert second.items and set(client.hkeys(f"{prefix}res:{a.cid}")) == {"event", str(a.seq - 2), str(a.seq - 1)}
