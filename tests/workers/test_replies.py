"""Structured replies, /topic and /history after ID, against a real Valkey.

Every reply names its code (protocol.replies) and carries its data in
`args`; the text stays the line protocol's. /topic and /history after ID
are replayable like the other scripts: handled twice, the same effects.
"""

from __future__ import annotations

import redis

from protocol.messages import ChatEvent, Deliver, EventType
from protocol.replies import ReplyCode as R
from tests.workers.test_logic import GW_A, GW_B, Conn, connected, events_to, lines_to
from workers.logic import Chat
from workers.store import Store

INFO, ERROR = EventType.INFO, EventType.ERROR


def coded(events: list[ChatEvent]) -> list[tuple[str, tuple[str, ...]]]:
    return [(e.code, e.args) for e in events]


def test_every_reply_names_its_code_and_data(chat: Chat) -> None:
    a = connected(chat, f"{GW_A}:1", "alice", "#r")
    b = connected(chat, f"{GW_B}:1", "bob")
    assert coded(events_to(b.send("/nick alice"), b.cid)) == [(R.NICK_TAKEN, ("alice",))]
    assert coded(events_to(b.send("/join #r"), b.cid)) == [(R.JOINED, ("#r", "", "alice", "bob"))]
    assert coded(events_to(b.send("/who"), b.cid)) == [(R.MEMBERS, ("#r", "alice", "bob"))]
    assert coded(events_to(b.send("/who #empty"), b.cid)) == [(R.MEMBERS, ("#empty",))]
    assert coded(events_to(b.send("/rooms"), b.cid)) == [(R.ROOMS, ("0", "#r", "2"))]
    assert coded(events_to(b.send("/msg carol hi"), b.cid)) == [(R.NO_SUCH_NICK, ("carol",))]
    assert coded(events_to(b.send("/part #x"), b.cid)) == [(R.NOT_IN_ROOM, ("#x",))]
    assert coded(events_to(b.send("/ping"), b.cid)) == [(R.PONG, ())]
    assert coded(events_to(b.send("/frob"), b.cid)) == [(R.UNKNOWN_COMMAND, ("frob",))]
    assert coded(events_to(b.send("/nick 9x"), b.cid)) == [(R.BAD_NICK, ("9x",))]
    assert coded(events_to(b.send("/join nohash"), b.cid)) == [(R.BAD_ROOM, ("nohash",))]
    assert coded(events_to(b.send("/join"), b.cid)) == [(R.USAGE, ("join",))]
    assert coded(events_to(b.send("x" * 5000), b.cid)) == [(R.LINE_TOO_LONG, ("4096",))]
    assert coded(events_to(b.send("/part #r"), b.cid)) == [(R.PARTED, ("#r", ""))]
    assert coded(events_to(b.send("hello"), b.cid)) == [(R.NO_ROOM, ())]
    assert coded(events_to(a.send("/quit off"), a.cid)) == [(R.BYE, ())]


def test_welcome_and_too_many_rooms(client: redis.Redis, prefix: str) -> None:
    chat = Chat(Store(client, prefix=prefix, max_rooms=1))
    a = Conn(chat, f"{GW_A}:1")
    [welcome] = events_to(a.connect(), a.cid)
    assert welcome.code == R.WELCOME and welcome.args == (welcome.text.split()[3].rstrip(":"),)
    a.send("/join #one")
    assert coded(events_to(a.send("/join #two"), a.cid)) == [(R.TOO_MANY_ROOMS, ("1", "#two"))]


# --- /topic --------------------------------------------------------------------


def test_topic_is_set_told_to_members_and_shown(chat: Chat) -> None:
    a = connected(chat, f"{GW_A}:1", "alice", "#r")
    b = connected(chat, f"{GW_B}:1", "bob", "#r")
    assert lines_to(a.send("/topic"), a.cid) == [(INFO, "#r has no topic")]
    fx = a.send("/topic #r  welcome, \x1b[2Jall ", now=42.0)
    told = ChatEvent(EventType.TOPIC, "alice set the topic of #r: welcome, [2Jall", room="#r", sender="alice",
                     ts=42.0, code=R.TOPIC_SET, args=("#r", "welcome, [2Jall"))
    assert events_to(fx, a.cid) == [told] and events_to(fx, b.cid) == [told]
    [shown] = events_to(b.send("/topic #r"), b.cid)
    assert (shown.text, shown.code, shown.args) == ("topic of #r: welcome, [2Jall", R.TOPIC_IS,
                                                    ("#r", "welcome, [2Jall", "alice", "42.0"))
    assert lines_to(b.send("/topic"), b.cid) == [(INFO, "topic of #r: welcome, [2Jall")]


def test_topic_without_a_room_sets_the_current_one(chat: Chat) -> None:
    a = connected(chat, f"{GW_A}:1", "alice", "#r")
    assert lines_to(a.send("/topic plain words"), a.cid) == [(EventType.TOPIC, "alice set the topic of #r: plain words")]


def test_a_join_shows_the_topic(chat: Chat) -> None:
    a = connected(chat, f"{GW_A}:1", "alice", "#r")
    a.send("/topic hello there")
    b = connected(chat, f"{GW_B}:1", "bob")
    assert coded(events_to(b.send("/join #r"), b.cid)) == [
        (R.JOINED, ("#r", "hello there", "alice", "bob")), (R.JOIN_TOPIC, ("#r", "hello there"))]
    assert lines_to(b.send("/join #r"), b.cid)[1] == (INFO, "topic of #r: hello there")


def test_topic_refusals(chat: Chat) -> None:
    a = connected(chat, f"{GW_A}:1", "alice")
    assert coded(events_to(a.send("/topic"), a.cid)) == [(R.NO_ROOM, ())]
    assert coded(events_to(a.send("/topic #x hi"), a.cid)) == [(R.NOT_IN_ROOM, ("#x",))]
    assert lines_to(a.send("/topic #x"), a.cid) == [(INFO, "#x has no topic")]  # showing is open to all
    a.send("/join #x")
    assert lines_to(a.send("/topic #x " + "y" * 301), a.cid) == [(ERROR, "topic too long (max 300 characters)")]
    assert lines_to(a.send("/topic #x " + "y" * 300), a.cid)[0][0] is EventType.TOPIC


def test_topic_is_replayable(chat: Chat) -> None:
    a = connected(chat, f"{GW_A}:1", "alice", "#r")
    first = a.send("/topic one", "/topic")
    assert a.last is not None
    a_again = chat.handle(a.last, 10.0)
    assert a_again.items == first.items


def test_topic_expires_with_the_history(chat: Chat, client: redis.Redis, prefix: str) -> None:
    a = connected(chat, f"{GW_A}:1", "alice", "#r")
    a.send("/topic kept a while", "said")
    key = f"{prefix}room:#r:topic"
    assert client.ttl(key) == -1
    a.send("/part")
    assert 0 < client.ttl(key) <= chat.store.history_ttl
    assert abs(client.ttl(key) - client.ttl(f"{prefix}room:#r:history")) <= 1
    a.send("/join #r")
    assert client.ttl(key) == -1


# --- /history after ID -------------------------------------------------------------


def _said(conn: Conn, *texts: str) -> list[str]:
    """Send texts, -> their message ids as members see them."""
    fx = conn.send(*texts)
    return [i.event.id for i in fx.items if isinstance(i, Deliver) and i.event.type is EventType.MESSAGE]


def test_history_after_an_id(chat: Chat) -> None:
    a = connected(chat, f"{GW_A}:1", "alice", "#r")
    ids = _said(a, "one", "two", "three")
    fx = a.send(f"/history #r after {ids[0]}")
    events = events_to(fx, a.cid)
    assert (events[0].text, events[0].code, events[0].args) == (
        f"history of #r after {ids[0]}: 2 messages", R.HISTORY, ("#r", "2", ids[0]))
    assert [(e.type, e.text, e.id) for e in events[1:]] == [
        (EventType.HISTORY, "two", ids[1]), (EventType.HISTORY, "three", ids[2])]
    assert lines_to(a.send(f"/history after {ids[2]}"), a.cid) == [(INFO, f"history of #r after {ids[2]}: 0 messages")]


def test_history_after_an_id_no_longer_kept_says_gap(chat: Chat) -> None:
    a = connected(chat, f"{GW_A}:1", "alice", "#r")
    _said(a, "one", "two")
    fx = a.send("/history #r after gone.gw:1/5")
    events = events_to(fx, a.cid)
    assert [(e.code, e.args) for e in events[:2]] == [
        (R.HISTORY, ("#r", "2", "gone.gw:1/5")), (R.HISTORY_GAP, ("#r", "gone.gw:1/5"))]
    assert events[1].text == "older messages of #r after gone.gw:1/5 are no longer kept: some are missing before these"
    assert [e.text for e in events[2:]] == ["one", "two"]


def test_history_after_returns_at_most_the_history_length(chat: Chat) -> None:
    a = connected(chat, f"{GW_A}:1", "alice", "#r")
    first = _said(a, "start")[0]
    _said(a, *(f"m{i}" for i in range(150)))
    events = events_to(a.send(f"/history after {first}"), a.cid)
    assert events[0].args == ("#r", "100", first) and events[1].code == R.HISTORY_GAP
    assert [e.text for e in events[2:]] == [f"m{i}" for i in range(50, 150)]


def test_history_after_is_replayable_and_refusals(chat: Chat) -> None:
    a = connected(chat, f"{GW_A}:1", "alice", "#r")
    ids = _said(a, "one")
    first = a.send(f"/history after {ids[0]}", "two", f"/history after {ids[0]}")
    assert a.last is not None
    assert chat.handle(a.last, 10.0).items == first.items
    b = connected(chat, f"{GW_B}:1", "bob")
    assert coded(events_to(b.send(f"/history after {ids[0]}"), b.cid)) == [(R.NO_ROOM, ())]
    assert coded(events_to(b.send("/history after not an id"), b.cid)) == [(R.USAGE, ("history",))]
    assert coded(events_to(b.send("/history after x\x1b/1"), b.cid)) == [(R.USAGE, ("history",))]


def test_action_to_a_named_room(chat: Chat) -> None:
    a = connected(chat, f"{GW_A}:1", "alice", "#r", "#s")  # current room: #s
    b = connected(chat, f"{GW_B}:1", "bob", "#r")
    [event] = events_to(a.send("/action #r waves"), b.cid)
    assert (event.type, event.room, event.text) == (EventType.ACTION, "#r", "waves")
    assert coded(events_to(b.send("/action #s waves"), b.cid)) == [(R.NOT_IN_ROOM, ("#s",))]
