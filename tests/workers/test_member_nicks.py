"""A room's member listing (a join's reply, /who) against a real Valkey: read from the room's own hash of
member nicks (`p room:<room>:nicks`), not with one look-up per member; every join, part, departure, lost
gateway and nick change keeps that hash equal to the members; a room kept in the older layout (members
without the hash) is listed the same, and a join fills it in while /who writes nothing."""

from __future__ import annotations

from typing import Any

import redis

from protocol.messages import GatewayLost
from tests.workers.test_logic import GW_A, GW_B, INFO, connected, lines_to
from workers.logic import Chat


def _calls(client: redis.Redis, command: str) -> int:
    stats: dict[str, Any] = client.info("commandstats")  # type: ignore[assignment]
    return int(stats.get(f"cmdstat_{command}", {}).get("calls", 0))


def _kept(client: redis.Redis, prefix: str, room: str) -> dict[str, str]:
    """The room's hash of member nicks, checked to hold exactly its members."""
    nicks: dict[str, str] = client.hgetall(f"{prefix}room:{room}:nicks")  # type: ignore[assignment]
    assert set(nicks) == client.smembers(f"{prefix}room:{room}:members")
    return nicks


def test_a_join_lists_the_members_without_a_look_up_per_member(chat: Chat, client: redis.Redis) -> None:
    for n in range(12):
        connected(chat, f"{GW_A if n % 2 else GW_B}:{n}", f"m{n:02}", "#big")
    a = connected(chat, f"{GW_A}:99", "alice")
    before = _calls(client, "hget")
    fx = a.send("/join #big")
    assert _calls(client, "hget") - before < 5  # the event's record and the topic; not one a member
    names = ", ".join(["alice", *(f"m{n:02}" for n in range(12))])
    assert lines_to(fx, a.cid) == [(INFO, f"you joined #big (13 here: {names})")]


def test_joins_parts_departures_and_nick_changes_keep_the_listing(
        chat: Chat, client: redis.Redis, prefix: str) -> None:
    a = connected(chat, f"{GW_A}:1", "alice", "#r", "#s")
    b = connected(chat, f"{GW_B}:1", "bob", "#r", "#s")
    c = connected(chat, f"{GW_B}:2", "carl", "#r")
    connected(chat, f"{GW_A}:2", "dan", "#r", "#s")
    assert _kept(client, prefix, "#r") == {a.cid: "alice", b.cid: "bob", c.cid: "carl", f"{GW_A}:2": "dan"}
    b.send("/nick Bert")
    assert _kept(client, prefix, "#s")[b.cid] == "Bert"
    c.send("/part #r")
    a.send("/quit")
    chat.handle(GatewayLost(GW_A), 30.0)  # dan's gateway
    assert _kept(client, prefix, "#r") == {b.cid: "Bert"}
    assert not client.exists(f"{prefix}room:#s:nicks") or _kept(client, prefix, "#s") == {b.cid: "Bert"}
    assert lines_to(b.send("/who #r"), b.cid) == [(INFO, "#r (1): Bert")]
    e = connected(chat, f"{GW_B}:3", "eve")
    assert lines_to(e.send("/join #r"), e.cid) == [(INFO, "you joined #r (2 here: Bert, eve)")]
    b.send("/part #r")
    e.send("/part #r")
    assert not client.exists(f"{prefix}room:#r:nicks")  # an empty room keeps nothing of it


def test_a_room_of_the_older_layout_is_listed_the_same_and_a_join_fills_it_in(
        chat: Chat, client: redis.Redis, prefix: str) -> None:
    a = connected(chat, f"{GW_A}:1", "alice", "#old")
    b = connected(chat, f"{GW_B}:1", "Bob", "#old")
    client.delete(f"{prefix}room:#old:nicks")  # as a room whose members joined before the hash was kept
    c = connected(chat, f"{GW_B}:2", "carl")
    assert lines_to(c.send("/who #old"), c.cid) == [(INFO, "#old (2): alice, Bob")]
    assert not client.exists(f"{prefix}room:#old:nicks")  # /who reads only (it is served when Valkey is full)
    b.send("/nick bert")  # a member's nick change writes its own entry: still fewer than the members
    assert client.hgetall(f"{prefix}room:#old:nicks") == {b.cid: "bert"}
    assert lines_to(c.send("/join #old"), c.cid) == [(INFO, "you joined #old (3 here: alice, bert, carl)")]
    assert _kept(client, prefix, "#old") == {a.cid: "alice", b.cid: "bert", c.cid: "carl"}
    before = _calls(client, "hget")
    assert lines_to(a.send("/who"), a.cid) == [(INFO, "#old (3): alice, bert, carl")]
    assert _calls(client, "hget") - before < 3
