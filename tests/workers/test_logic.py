"""The chat logic (workers.logic + workers.store) against a real Valkey.

Each test has its own key prefix. Events are built as the gateway would:
Connected(cid, 0, addr), then Lines numbered by line, then Disconnected.
The replay tests handle the very same event twice, as when a worker dies
and the broker gives its event to another worker.
"""

from __future__ import annotations

import re
from typing import Any

import hypothesis
import pytest
import redis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from protocol.commands import HELP_LINES
from protocol.messages import (
    GATEWAY_GONE,
    ChatEvent,
    Close,
    Connected,
    Deliver,
    Disconnected,
    EventType,
    GatewayLost,
    Lines,
    SetMode,
)
from protocol.replies import ReplyCode as R
from tests.workers.conftest import new_prefix
from workers import scripts
from workers.effects import Effects
from workers.logic import Chat
from workers.store import Store

GW_A = "gwA.abc123"
GW_B = "gwB.def456"
GUEST = re.compile(r"guest-\d+")
INFO, ERROR = EventType.INFO, EventType.ERROR


class Conn:
    """One client connection, numbering its events as a gateway does."""

    def __init__(self, chat: Chat, cid: str) -> None:
        self.chat = chat
        self.cid = cid
        self.seq = 1
        self.last: Lines | None = None

    def connect(self, now: float = 1.0) -> Effects:
        return self.chat.handle(Connected(self.cid, 0, "127.0.0.1:40000"), now)

    def send(self, *lines: str, now: float = 10.0) -> Effects:
        self.last = Lines(self.cid, self.seq, lines)
        self.seq += len(lines)
        return self.chat.handle(self.last, now)

    def leave(self, reason: str = "connection reset") -> Effects:
        return self.chat.handle(Disconnected(self.cid, self.seq, reason), 20.0)


def connected(chat: Chat, cid: str, nick: str | None = None, *rooms: str) -> Conn:
    conn = Conn(chat, cid)
    conn.connect()
    if nick:
        conn.send(f"/nick {nick}")
    for room in rooms:
        conn.send(f"/join {room}")
    return conn


def events_to(fx: Effects, cid: str) -> list[ChatEvent]:
    return [i.event for i in fx.items if isinstance(i, Deliver) and cid in i.cids]


def lines_to(fx: Effects, cid: str) -> list[tuple[EventType, str]]:
    return [(e.type, e.text) for e in events_to(fx, cid)]


def closes(fx: Effects) -> list[Close]:
    return [i for i in fx.items if isinstance(i, Close)]


def snapshot(client: redis.Redis, prefix: str, stream_ids: bool = True) -> dict[str, Any]:
    """Everything under `prefix`, by key without the prefix."""
    out: dict[str, Any] = {}
    for key in client.scan_iter(match=prefix + "*", count=1000):
        kind = str(client.type(key))
        value: Any
        if kind == "string":
            value = client.get(key)
        elif kind == "hash":
            value = client.hgetall(key)
        elif kind == "set":
            value = sorted(client.smembers(key))
        elif kind == "zset":
            value = client.zrange(key, 0, -1, withscores=True)
        elif kind == "stream":
            entries: list[tuple[str, dict[str, str]]] = client.xrange(key)  # type: ignore[assignment]
            value = entries if stream_ids else [fields for _, fields in entries]
        else:
            raise AssertionError(f"unexpected key type {kind} for {key}")
        out[key[len(prefix):]] = (kind, value)
    return out


# --- connecting ------------------------------------------------------------------------


def test_greeting_names_a_guest_nick(chat: Chat) -> None:
    cid = f"{GW_A}:1"
    fx = chat.handle(Connected(cid, 0, "10.1.2.3:4444"), 1.0)
    assert len(fx.items) == 1
    (event,) = events_to(fx, cid)
    assert event.type == INFO
    assert event.text.startswith("welcome! you are guest-")
    nick = GUEST.search(event.text)
    assert nick is not None
    other = chat.handle(Connected(f"{GW_A}:2", 0, "10.1.2.3:4445"), 1.0)
    assert GUEST.search(events_to(other, f"{GW_A}:2")[0].text).group() != nick.group()  # type: ignore[union-attr]


def test_connected_again_keeps_the_nick(chat: Chat) -> None:
    cid = f"{GW_A}:1"
    first = chat.handle(Connected(cid, 0, "addr"), 1.0)
    again = chat.handle(Connected(cid, 0, "addr"), 2.0)
    assert first.items == again.items


def test_guest_nick_skips_names_taken_by_hand(chat: Chat) -> None:
    a = connected(chat, f"{GW_A}:1")
    a.send("/nick GUEST-2")
    fx = Conn(chat, f"{GW_A}:2").connect()
    text = lines_to(fx, f"{GW_A}:2")[0][1]
    assert "guest-2" not in text.lower()
    assert GUEST.search(text)


# --- /nick -----------------------------------------------------------------------------


def test_nick_change(chat: Chat) -> None:
    a = connected(chat, f"{GW_A}:1")
    fx = a.send("/nick alice")
    assert lines_to(fx, a.cid) == [(INFO, "you are now alice")]
    assert len(fx.items) == 1  # no room: no one else to tell


def test_nick_is_unique_case_insensitively(chat: Chat) -> None:
    a = connected(chat, f"{GW_A}:1", "Alice")
    b = connected(chat, f"{GW_B}:1")
    assert lines_to(b.send("/nick alice"), b.cid) == [(ERROR, "nickname alice is taken")]
    assert lines_to(b.send("/nick ALICE"), b.cid) == [(ERROR, "nickname ALICE is taken")]
    assert lines_to(a.send("/nick ALICE"), a.cid) == [(INFO, "you are now ALICE")]  # its own
    a.send("/nick ann")
    assert lines_to(b.send("/nick alice"), b.cid) == [(INFO, "you are now alice")]  # freed


def test_guest_nicks_are_taken_too(chat: Chat) -> None:
    a = connected(chat, f"{GW_A}:1")
    b = Conn(chat, f"{GW_B}:1")
    guest = GUEST.search(lines_to(b.connect(), b.cid)[0][1]).group()  # type: ignore[union-attr]
    assert lines_to(a.send(f"/nick {guest.upper()}"), a.cid) == [
        (ERROR, f"nickname {guest.upper()} is taken")
    ]


def test_nick_change_is_told_to_room_members_once(chat: Chat) -> None:
    a = connected(chat, f"{GW_A}:1", "alice", "#r", "#s")
    b = connected(chat, f"{GW_B}:1", "bob", "#r", "#s")  # shares two rooms with alice
    c = connected(chat, f"{GW_A}:2", "carol", "#s")
    d = connected(chat, f"{GW_B}:2", "dave", "#other")
    fx = a.send("/nick ann")
    assert lines_to(fx, a.cid) == [(INFO, "you are now ann")]
    notice = ChatEvent(EventType.NICK, "alice is now known as ann", sender="alice", to="ann")
    assert events_to(fx, b.cid) == [notice]
    assert events_to(fx, c.cid) == [notice]
    assert events_to(fx, d.cid) == []
    same = a.send("/nick ann")  # no change: no notice
    assert same.items == [Deliver((a.cid,), ChatEvent(INFO, "you are now ann", code=R.NICK_SET, args=("ann",)))]


def test_invalid_nick(chat: Chat) -> None:
    a = connected(chat, f"{GW_A}:1")
    fx = a.send("/nick 1abc")
    ((kind, text),) = lines_to(fx, a.cid)
    assert kind == ERROR and text.startswith("invalid nickname")


# --- rooms -----------------------------------------------------------------------------


def test_join_tells_the_others(chat: Chat) -> None:
    a = connected(chat, f"{GW_A}:1", "alice")
    b = connected(chat, f"{GW_B}:1", "bob")
    fx = a.send("/join #Room")
    assert fx.items == [Deliver((a.cid,), ChatEvent(INFO, "you joined #room (1 here: alice)", code=R.JOINED, args=("#room", "", "alice")))]
    fx = b.send("/join #room")
    assert lines_to(fx, b.cid) == [(INFO, "you joined #room (2 here: alice, bob)")]
    assert events_to(fx, a.cid) == [
        ChatEvent(EventType.JOIN, "bob joined #room", room="#room", sender="bob")
    ]
    again = b.send("/join #ROOM")  # already in: no notice
    assert again.items == [Deliver((b.cid,), ChatEvent(INFO, "you joined #room (2 here: alice, bob)", code=R.JOINED,
                                         args=("#room", "", "alice", "bob")))]


def test_part_join_and_say_in_one_event_run_in_order_with_scripts_not_yet_loaded(chat: Chat) -> None:
    """Regression: PART and SAY were new to Redis (NOSCRIPT) while JOIN was loaded: the JOIN ran
    before the PART, and the retry replayed its result: 'you joined' while still in, then 'join a
    room first', and nobody was told."""
    a = connected(chat, f"{GW_A}:1", "ann", "#r")
    b = connected(chat, f"{GW_B}:1", "bob", "#r")
    fx = a.send("/part #r", "/join #r", "back")
    assert [text for _, text in lines_to(fx, a.cid)] == ["you left #r", "you joined #r (2 here: ann, bob)", "back"]
    assert [text for _, text in lines_to(fx, b.cid)] == ["ann left #r", "ann joined #r", "back"]


def test_part(chat: Chat) -> None:
    a = connected(chat, f"{GW_A}:1", "alice", "#r", "#s")
    b = connected(chat, f"{GW_B}:1", "bob", "#s")
    fx = a.send("/part")  # the current room: #s
    assert lines_to(fx, a.cid) == [(INFO, "you left #s; your current room is #r")]
    assert events_to(fx, b.cid) == [ChatEvent(EventType.PART, "alice left #s", room="#s", sender="alice")]
    fx = a.send("/part #s")
    assert lines_to(fx, a.cid) == [(ERROR, "you are not in #s: /join #s first")]
    fx = a.send("/part #r")
    assert fx.items == [Deliver((a.cid,), ChatEvent(INFO, "you left #r", code=R.PARTED, args=("#r", "")))]  # alone: no one told
    fx = a.send("/part")
    assert lines_to(fx, a.cid) == [(ERROR, "you are in no room")]


def test_who(chat: Chat) -> None:
    a = connected(chat, f"{GW_A}:1", "alice")
    assert lines_to(a.send("/who"), a.cid) == [(ERROR, "you are in no room: /who #room")]
    assert lines_to(a.send("/who #empty"), a.cid) == [(INFO, "no one is in #empty")]
    a.send("/join #r")
    connected(chat, f"{GW_B}:1", "Bob", "#r")
    connected(chat, f"{GW_B}:2", "carl", "#r")
    assert lines_to(a.send("/who"), a.cid) == [(INFO, "#r (3): alice, Bob, carl")]
    b = connected(chat, f"{GW_B}:3", "zed")
    assert lines_to(b.send("/who #R"), b.cid) == [(INFO, "#r (3): alice, Bob, carl")]


def test_rooms(chat: Chat) -> None:
    a = connected(chat, f"{GW_A}:1", "alice")
    assert lines_to(a.send("/rooms"), a.cid) == [(INFO, "no rooms yet: /join #name opens one")]
    a.send("/join #b")
    a.send("/join #a")
    connected(chat, f"{GW_B}:1", "bob", "#a")
    assert lines_to(a.send("/rooms"), a.cid) == [(INFO, "rooms: #a (2), #b (1)")]
    a.send("/part #b")  # an empty room is no room
    assert lines_to(a.send("/rooms"), a.cid) == [(INFO, "rooms: #a (2)")]


def test_room_messages_go_to_all_members(chat: Chat) -> None:
    a = connected(chat, f"{GW_A}:1", "alice", "#r")
    b = connected(chat, f"{GW_B}:1", "bob", "#r")
    c = connected(chat, f"{GW_A}:2", "carol")
    seq = a.seq
    fx = a.send("hello", "/me waves", "//slash", "/msg #r direct", now=123.5)
    events = [i for i in fx.items if isinstance(i, Deliver)]
    assert [sorted(i.cids) for i in events] == [sorted([a.cid, b.cid])] * 4
    assert [i.event for i in events] == [
        ChatEvent(EventType.MESSAGE, "hello", room="#r", sender="alice", id=f"{a.cid}/{seq}",
                  ts=123.5, origin=a.cid),
        ChatEvent(EventType.ACTION, "waves", room="#r", sender="alice", id=f"{a.cid}/{seq + 1}",
                  ts=123.5, origin=a.cid),
        ChatEvent(EventType.MESSAGE, "/slash", room="#r", sender="alice", id=f"{a.cid}/{seq + 2}",
                  ts=123.5, origin=a.cid),
        ChatEvent(EventType.MESSAGE, "direct", room="#r", sender="alice", id=f"{a.cid}/{seq + 3}",
                  ts=123.5, origin=a.cid),
    ]
    assert events_to(fx, c.cid) == []


def test_message_errors(chat: Chat) -> None:
    a = connected(chat, f"{GW_A}:1", "alice")
    assert lines_to(a.send("hello"), a.cid) == [(ERROR, "join a room first: /join #name")]
    assert lines_to(a.send("/me waves"), a.cid) == [(ERROR, "join a room first: /join #name")]
    assert lines_to(a.send("/msg #r hi"), a.cid) == [(ERROR, "you are not in #r: /join #r first")]
    assert lines_to(a.send("/msg nobody hi"), a.cid) == [(ERROR, "no such nick: nobody")]


def test_history(chat: Chat) -> None:
    a = connected(chat, f"{GW_A}:1", "alice")
    assert lines_to(a.send("/history"), a.cid) == [(ERROR, "you are in no room: /history #room [N]")]
    a.send("/join #r")
    assert lines_to(a.send("/history"), a.cid) == [(INFO, "history of #r: 0 messages")]
    first = a.seq
    a.send("one", now=1.25)
    a.send("/me two", now=2.5)
    a.send("three", now=3.75)
    b = connected(chat, f"{GW_B}:1", "bob")  # not a member: may still read
    fx = b.send("/history #r 2")
    assert events_to(fx, b.cid) == [
        ChatEvent(INFO, "history of #r: 2 messages", code=R.HISTORY, args=("#r", "2")),
        ChatEvent(EventType.HISTORY, "two", room="#r", sender="alice", id=f"{a.cid}/{first + 1}",
                  ts=2.5, of="action"),
        ChatEvent(EventType.HISTORY, "three", room="#r", sender="alice", id=f"{a.cid}/{first + 2}",
                  ts=3.75, of="message"),
    ]
    assert [e.text for e in events_to(a.send("/history"), a.cid)] == [
        "history of #r: 3 messages", "one", "two", "three"
    ]
    assert lines_to(b.send("/history #r 1"), b.cid)[0] == (INFO, "history of #r: 1 message")


def test_private_message(chat: Chat) -> None:
    a = connected(chat, f"{GW_A}:1", "alice")
    b = connected(chat, f"{GW_B}:1", "Bob")
    seq = a.seq
    fx = a.send("/msg bob psst", now=50.0)
    event = ChatEvent(EventType.PRIVATE, "psst", sender="alice", to="Bob", id=f"{a.cid}/{seq}",
                      ts=50.0, origin=a.cid)
    assert fx.items == [Deliver((b.cid, a.cid), event)]
    fx = a.send("/msg ALICE me")  # to oneself: once
    assert [i.cids for i in fx.items if isinstance(i, Deliver)] == [(a.cid,)]


def test_simple_commands(chat: Chat) -> None:
    a = connected(chat, f"{GW_A}:1")
    assert lines_to(a.send("/ping"), a.cid) == [(INFO, "pong")]
    assert lines_to(a.send("/PING"), a.cid) == [(INFO, "pong")]
    assert [t for _, t in lines_to(a.send("/help"), a.cid)] == list(HELP_LINES)
    fx = a.send("/json")
    assert fx.items == [SetMode(a.cid, True), Deliver((a.cid,), ChatEvent(INFO, "json mode on", code=R.JSON_ON))]


def test_errors_do_not_stop_the_lines_after_them(chat: Chat) -> None:
    a = connected(chat, f"{GW_A}:1")
    fx = a.send("/frob", "", "/ping extra", "/ping")
    assert lines_to(fx, a.cid) == [
        (ERROR, "unknown command /frob (try /help)"),
        (ERROR, "usage: /ping"),
        (INFO, "pong"),
    ]


# --- leaving ---------------------------------------------------------------------------


def test_quit(chat: Chat, client: redis.Redis, prefix: str) -> None:
    a = connected(chat, f"{GW_A}:1", "alice", "#r")
    b = connected(chat, f"{GW_B}:1", "bob", "#r")
    fx = a.send("/quit gone fishing", "after quit")
    assert fx.items == [
        Deliver((a.cid,), ChatEvent(INFO, "bye", code=R.BYE)),
        Deliver((b.cid,), ChatEvent(EventType.QUIT, "alice quit (gone fishing)", sender="alice", code=R.QUIT, args=("gone fishing",))),
        Close(a.cid, "quit", departed=True),  # its gateway sends no departure after it
    ]
    assert not client.exists(f"{prefix}conn:{a.cid}", f"{prefix}conn:{a.cid}:rooms")
    assert client.smembers(f"{prefix}gw:{GW_A}:conns") == set()
    assert lines_to(b.send("/who"), b.cid) == [(INFO, "#r (1): bob")]
    assert lines_to(b.send("/nick alice"), b.cid) == [(INFO, "you are now alice")]
    assert a.leave("closed").items == []  # already gone: no second notice


def test_quit_without_reason(chat: Chat) -> None:
    a = connected(chat, f"{GW_A}:1", "alice", "#r")
    b = connected(chat, f"{GW_B}:1", "bob", "#r")
    assert events_to(a.send("/quit"), b.cid) == [ChatEvent(EventType.QUIT, "alice quit", sender="alice", code=R.QUIT, args=("",))]


def test_disconnected_frees_nick_and_memberships(chat: Chat, client: redis.Redis, prefix: str) -> None:
    a = connected(chat, f"{GW_A}:1", "alice", "#r", "#s")
    b = connected(chat, f"{GW_B}:1", "bob", "#r", "#s")
    fx = a.leave("connection reset")
    assert fx.items == [
        Deliver((b.cid,), ChatEvent(EventType.QUIT, "alice quit (connection reset)", sender="alice", code=R.QUIT,
                                  args=("connection reset",)))
    ]
    assert lines_to(b.send("/rooms"), b.cid) == [(INFO, "rooms: #r (1), #s (1)")]
    assert lines_to(b.send("/nick ALICE"), b.cid) == [(INFO, "you are now ALICE")]
    assert not client.exists(f"{prefix}conn:{a.cid}", f"{prefix}conn:{a.cid}:rooms")
    assert client.smembers(f"{prefix}gw:{GW_A}:conns") == set()
    b.leave()
    assert lines_to(connected(chat, f"{GW_B}:2").send("/rooms"), f"{GW_B}:2") == [
        (INFO, "no rooms yet: /join #name opens one")
    ]


def test_gateway_lost_frees_its_connections(chat: Chat, client: redis.Redis, prefix: str) -> None:
    a1 = connected(chat, f"{GW_A}:1", "ann", "#r")
    a2 = connected(chat, f"{GW_A}:2", "al", "#r", "#s")
    a3 = connected(chat, f"{GW_A}:3", "abe")
    b = connected(chat, f"{GW_B}:1", "bob", "#r", "#s")
    fx = chat.handle(GatewayLost(GW_A), 30.0)
    assert sorted(lines_to(fx, b.cid)) == [
        (EventType.QUIT, "al quit (connection lost)"),
        (EventType.QUIT, "ann quit (connection lost)"),
    ]
    assert closes(fx) == []  # their gateway is gone: nothing to close
    assert lines_to(b.send("/who #r"), b.cid) == [(INFO, "#r (1): bob")]
    assert lines_to(b.send("/rooms"), b.cid) == [(INFO, "rooms: #r (1), #s (1)")]
    for nick in ("ann", "al", "abe"):
        assert lines_to(b.send(f"/msg {nick} hi"), b.cid) == [(ERROR, f"no such nick: {nick}")]
    assert client.smembers(f"{prefix}gw:{GW_A}:conns") == set()
    for conn in (a1, a2, a3):
        assert not client.exists(f"{prefix}conn:{conn.cid}")
    # a late connect through the lost gateway is refused
    late = f"{GW_A}:9"
    fx = chat.handle(Connected(late, 0, "addr"), 31.0)
    assert fx.items == [
        Deliver((late,), ChatEvent(ERROR, "this server lost its link to the service: please reconnect", code=R.GATEWAY_GONE)),
        Close(late, "gateway lost", departed=True),
    ]
    assert not client.exists(f"{prefix}conn:{late}")
    # and so are lines of a connection the loss freed
    fx = a1.send("/join #r")
    assert lines_to(fx, a1.cid)[0][0] == ERROR
    assert closes(fx) == [Close(a1.cid, "gateway lost", departed=True)]
    assert not client.exists(f"{prefix}conn:{a1.cid}")
    # the other gateway is fine
    assert GUEST.search(lines_to(Conn(chat, f"{GW_B}:2").connect(), f"{GW_B}:2")[0][1])


# --- Redis lost its data ---------------------------------------------------------------


def test_session_recovered_after_flushall(chat: Chat, client: redis.Redis) -> None:
    a = connected(chat, f"{GW_A}:1", "alice", "#r")
    client.flushall()
    fx = a.send("/join #r")
    events = lines_to(fx, a.cid)
    assert len(events) == 2
    kind, text = events[0]
    assert kind == INFO and text.startswith("the service lost your session")
    nick = GUEST.search(text)
    assert nick is not None and "alice" not in text
    assert events[1] == (INFO, f"you joined #r (1 here: {nick.group()})")
    fx = a.send("/nick alice")  # registered again: no second notice
    assert lines_to(fx, a.cid) == [(INFO, "you are now alice")]


def test_a_quit_behind_a_lost_session_leaves_the_departure_to_the_gateway(
        chat: Chat, client: redis.Redis, prefix: str) -> None:
    """A /quit behind a line that found the session gone: the quit's departure ran (and was
    recorded) before the session was registered again, so it freed nothing. Its Close must not
    say `departed`: the gateway's own departure is what frees the session registered again."""
    a = connected(chat, f"{GW_A}:1", "alice", "#r")
    client.flushall()
    fx = a.send("/nick ann", "/quit")
    assert lines_to(fx, a.cid)[0][1].startswith("the service lost your session")
    assert closes(fx) == [Close(a.cid, "quit", departed=False)]
    assert client.exists(f"{prefix}conn:{a.cid}")  # registered again: the departure is still owed
    a.leave("quit")
    assert not client.exists(f"{prefix}conn:{a.cid}")
    assert client.get(f"{prefix}nick:ann") is None


def test_a_quit_that_freed_nothing_is_not_a_departure(chat: Chat, client: redis.Redis) -> None:
    a = connected(chat, f"{GW_A}:1", "alice", "#r")
    client.flushall()
    fx = a.send("/quit")
    assert lines_to(fx, a.cid) == [(INFO, "bye")]  # nothing to free: nobody to tell
    assert closes(fx) == [Close(a.cid, "quit", departed=False)]


def test_recovered_session_runs_each_kind_of_command(chat: Chat, client: redis.Redis) -> None:
    a = connected(chat, f"{GW_A}:1", "alice", "#r")
    client.flushall()
    fx = a.send("/nick ann", "hello", "/join #s", "hi")
    events = lines_to(fx, a.cid)
    assert events[0][1].startswith("the service lost your session")
    assert events[1:] == [
        (INFO, "you are now ann"),
        (ERROR, "join a room first: /join #name"),  # the rooms were lost with the rest
        (INFO, "you joined #s (1 here: ann)"),
        (EventType.MESSAGE, "hi"),
    ]


# --- replays: the same event handled twice ----------------------------------------------


def replay(conn: Conn, client: redis.Redis, prefix: str, now: float = 99.0) -> Effects:
    """Handle the connection's last event again, later -> its effects;
    asserts that the replay changed nothing in Redis."""
    assert conn.last is not None
    return replay_event(conn.chat, conn.last, client, prefix, now)


def replay_event(chat: Chat, event: Any, client: redis.Redis, prefix: str,
                 now: float = 99.0) -> Effects:
    before = snapshot(client, prefix)
    fx = chat.handle(event, now)
    assert snapshot(client, prefix) == before, "the replay changed Redis"
    return fx


def test_replay_of_a_join(chat: Chat, client: redis.Redis, prefix: str) -> None:
    a = connected(chat, f"{GW_A}:1", "alice", "#r")
    b = connected(chat, f"{GW_B}:1", "bob")
    first = b.send("/join #r")
    assert events_to(first, a.cid) == [ChatEvent(EventType.JOIN, "bob joined #r", room="#r", sender="bob")]
    again = replay(b, client, prefix)
    assert again.items == first.items  # the join notice again, identical


def test_replay_of_a_nick_change(chat: Chat, client: redis.Redis, prefix: str) -> None:
    a = connected(chat, f"{GW_A}:1", "alice", "#r")
    b = connected(chat, f"{GW_B}:1", "bob", "#r")
    first = a.send("/nick ann")
    assert events_to(first, b.cid) == [
        ChatEvent(EventType.NICK, "alice is now known as ann", sender="alice", to="ann")
    ]
    again = replay(a, client, prefix)
    assert again.items == first.items
    assert lines_to(b.send("/who"), b.cid) == [(INFO, "#r (2): ann, bob")]


def test_replay_of_a_taken_nick(chat: Chat, client: redis.Redis, prefix: str) -> None:
    connected(chat, f"{GW_A}:1", "alice")
    b = connected(chat, f"{GW_B}:1", "bob")
    first = b.send("/nick alice")
    again = replay(b, client, prefix)
    assert again.items == first.items == [
        Deliver((b.cid,), ChatEvent(ERROR, "nickname alice is taken", code=R.NICK_TAKEN, args=("alice",)))]


def test_replay_of_room_messages_keeps_ids_ts_and_history(chat: Chat, client: redis.Redis, prefix: str) -> None:
    a = connected(chat, f"{GW_A}:1", "alice", "#r")
    connected(chat, f"{GW_B}:1", "bob", "#r")
    first = a.send("one", "/me two", "/msg #r three", now=5.0)
    history = client.xlen(f"{prefix}room:#r:history")
    assert history == 3
    again = replay(a, client, prefix, now=500.0)  # later, on another worker
    assert again.items == first.items
    assert {e.ts for e in events_to(again, a.cid)} == {5.0}
    assert client.xlen(f"{prefix}room:#r:history") == history


def test_replay_of_a_part(chat: Chat, client: redis.Redis, prefix: str) -> None:
    a = connected(chat, f"{GW_A}:1", "alice", "#r", "#s", "#t")
    connected(chat, f"{GW_B}:1", "bob", "#r", "#s", "#t")
    first = a.send("/part", "/part")  # the new current room is picked at random: kept
    again = replay(a, client, prefix)
    assert again.items == first.items


def test_replay_of_a_quit(chat: Chat, client: redis.Redis, prefix: str) -> None:
    a = connected(chat, f"{GW_A}:1", "alice", "#r")
    connected(chat, f"{GW_B}:1", "bob", "#r")
    first = a.send("hi", "/quit bye now")
    again = replay(a, client, prefix)
    assert again.items == first.items
    assert closes(again) == [Close(a.cid, "quit", departed=True)]


def test_replay_of_a_disconnect(chat: Chat, client: redis.Redis, prefix: str) -> None:
    a = connected(chat, f"{GW_A}:1", "alice", "#r")
    connected(chat, f"{GW_B}:1", "bob", "#r")
    event = Disconnected(a.cid, a.seq, "eof")
    first = chat.handle(event, 20.0)
    assert first.items
    again = replay_event(chat, event, client, prefix)
    assert again.items == first.items


def test_replay_of_a_connect(chat: Chat, client: redis.Redis, prefix: str) -> None:
    event = Connected(f"{GW_A}:1", 0, "addr")
    first = chat.handle(event, 1.0)
    again = replay_event(chat, event, client, prefix)
    assert again.items == first.items


def test_replay_of_a_long_event(chat: Chat, client: redis.Redis, prefix: str) -> None:
    a = connected(chat, f"{GW_A}:1")
    b = connected(chat, f"{GW_B}:1", "bob", "#r")
    first = a.send("/nick ann", "/join #r", "hi", "/me waves", "/nick Ann", "/join #s",
                   "/msg #r yo", "/part #r", "/json", "/frob", "there", now=7.0)
    assert events_to(first, b.cid)  # bob saw a lot
    again = replay(a, client, prefix, now=8.0)
    assert again.items == first.items


def test_an_earlier_event_is_not_replayed_as_the_current_one(chat: Chat, client: redis.Redis) -> None:
    # Results are kept for a connection's current event only: the next event's
    # line numbers are new, so they run for real.
    a = connected(chat, f"{GW_A}:1", "alice", "#r")
    a.send("one")
    a.send("two")
    assert [e.text for e in events_to(a.send("/history"), a.cid)][1:] == ["one", "two"]


# --- replays: what should hold but does not ------------------------------------------------


READ_BEFORE_WRITE = {
    "msg-then-nick": ("/msg bob hi", "/nick carol"),
    "who-then-join": ("/who #new", "/join #new"),
    "rooms-then-join": ("/rooms", "/join #new"),
    "history-then-say": ("/history", "hello"),
}


@pytest.mark.parametrize("lines", list(READ_BEFORE_WRITE.values()), ids=list(READ_BEFORE_WRITE))
def test_replay_of_reads_before_writes(
    chat: Chat, client: redis.Redis, prefix: str, lines: tuple[str, ...]
) -> None:
    a = connected(chat, f"{GW_A}:1", "alice", "#r")
    connected(chat, f"{GW_B}:1", "bob", "#r")
    first = a.send(*lines, now=5.0)
    again = replay(a, client, prefix, now=5.0)
    assert again.items == first.items


def test_replay_of_a_private_message_keeps_its_ts(chat: Chat, client: redis.Redis, prefix: str) -> None:
    a = connected(chat, f"{GW_A}:1", "alice")
    connected(chat, f"{GW_B}:1", "bob")
    first = a.send("/msg bob hi", now=5.0)
    again = replay(a, client, prefix, now=6.0)
    assert again.items == first.items


def test_replay_of_a_gateway_loss(chat: Chat, client: redis.Redis, prefix: str) -> None:
    connected(chat, f"{GW_A}:1", "ann", "#r")
    b = connected(chat, f"{GW_B}:1", "bob", "#r")
    first = chat.handle(GatewayLost(GW_A), 30.0)
    assert lines_to(first, b.cid) == [(EventType.QUIT, "ann quit (connection lost)")]
    again = replay_event(chat, GatewayLost(GW_A), client, prefix)
    assert again.items == first.items


def test_replay_of_a_recovering_event(chat: Chat, client: redis.Redis, prefix: str) -> None:
    a = connected(chat, f"{GW_A}:1", "alice", "#r")
    client.flushall()
    first = a.send("/nick ann")
    assert lines_to(first, a.cid)[0][1].startswith("the service lost your session")
    again = replay(a, client, prefix)
    assert again.items == first.items


def forget(client: redis.Redis, prefix: str) -> None:
    """Redis came back empty (for this test's keys only: other prefixes are other tests')."""
    keys = list(client.scan_iter(match=prefix + "*", count=1000))
    if keys:
        client.delete(*keys)


class OneByOneStore(Store):
    """A store that runs every call alone: no grouped SAY or PRIVATE scripts."""

    def run(self, calls: list[Any]) -> list[Any]:
        run = super().run
        return [result for call in calls for result in run([call])]


RECOVERING = ("/msg bob one", "/msg bob two", "/join #r", "hi", "/me waves", "/nick ann", "/msg bob three")


def _recovering_scene(client: redis.Redis, prefix: str, store: Store) -> tuple[Conn, Conn]:
    """alice, whose session Redis forgot, and bob, who connected again since (as bob, in #r)."""
    chat = Chat(store)
    a = connected(chat, f"{GW_A}:1", "alice", "#r")
    b = connected(chat, f"{GW_B}:1", "bob", "#r")
    forget(client, prefix)
    b.connect()
    b.send("/nick bob", "/join #r")
    return a, b


@pytest.mark.parametrize("first_alone,replay_alone", [(False, True), (True, False), (False, False)],
                         ids=["grouped-then-alone", "alone-then-grouped", "grouped-twice"])
def test_replay_of_a_recovering_event_grouped_otherwise(
        client: redis.Redis, prefix: str, first_alone: bool, replay_alone: bool) -> None:
    """The recovery is met by a grouped PRIVATE script: its record is per line, so a replay that groups
    the lines otherwise says the same, in the same place, with the same nick."""
    plain, alone = Store(client, prefix=prefix), OneByOneStore(client, prefix=prefix)
    a, b = _recovering_scene(client, prefix, alone if first_alone else plain)
    first = a.send(*RECOVERING)
    said = lines_to(first, a.cid)
    assert said[0][1].startswith("the service lost your session")
    assert said.count(said[0]) == 1
    nick = GUEST.search(said[0][1])
    assert nick is not None
    assert [e.text for e in events_to(first, b.cid)] == ["one", "two", f"{nick.group()} is now known as ann",
                                                          "three"]
    again = replay_event(Chat(alone if replay_alone else plain), a.last, client, prefix)
    assert again.items == first.items


RECOVERING_CALLS = 12  # the store calls the recovering event makes (runs of like lines make one each)


@pytest.mark.parametrize("after", [False, True], ids=["before", "after"])
@pytest.mark.parametrize("calls", range(1, RECOVERING_CALLS + 1))
def test_a_recovering_event_that_died_mid_way_replays_as_one_run(
        client: redis.Redis, calls: int, after: bool) -> None:
    """The first run dies at its `calls`-th call (before or after it ran): in the first round trip,
    between the recovery and the lines run again, or after those; another worker's run of the event
    then publishes what one clean run does, and leaves Redis as it would."""
    twin = new_prefix()
    counting = CrashingStore(client, twin, calls=10**9, after=False)  # counts the calls, never crashes
    ta, _ = _recovering_scene(client, twin, counting)
    counting.left = 10**9
    clean = ta.send(*RECOVERING, now=5.0)
    assert lines_to(clean, ta.cid)[0][1].startswith("the service lost your session")
    assert 10**9 - counting.left == RECOVERING_CALLS  # so the crash points are every call it makes
    prefix = new_prefix()
    crashing = CrashingStore(client, prefix, calls=10**9, after=after)
    a, _ = _recovering_scene(client, prefix, crashing)
    crashing.left = calls
    partial = Effects()
    event = Lines(a.cid, a.seq, RECOVERING)
    with pytest.raises(Crash):
        a.chat.handle(event, 5.0, partial)
    full = Chat(Store(client, prefix=prefix)).handle(event, 5.0)
    assert full.items[: len(partial.items)] == partial.items
    assert full.items == clean.items
    assert snapshot(client, prefix, stream_ids=False) == snapshot(client, twin, stream_ids=False)


class ReapingStore(Store):
    """A store whose gateway `gw` is lost right after a connection of it was registered again."""

    def __init__(self, client: redis.Redis, prefix: str, gw: str) -> None:
        super().__init__(client, prefix)
        self.gw = gw
        self.armed = False  # from the recovery on

    def run(self, calls: list[Any]) -> list[Any]:
        results = super().run(calls)
        if self.armed and calls and calls[0].script == scripts.RECOVER:
            self.armed = False
            super().run([self.reap(self.gw)])
        return results


def test_a_session_gone_again_after_its_recovery_replays_alike(client: redis.Redis, prefix: str) -> None:
    """Registered again, then reaped before its line ran: the first run says so and stops there; a
    replay (the gateway now refused) says the same, not that the gateway is gone."""
    store = ReapingStore(client, prefix, GW_A)
    a = connected(Chat(store), f"{GW_A}:1", "alice", "#r")
    forget(client, prefix)
    store.armed = True
    first = a.send("/nick ann", "hello", "/msg ann hi")
    said = lines_to(first, a.cid)
    assert len(said) == 1 and said[0][1].startswith("the service lost your session")
    assert 0 < client.ttl(f"{prefix}res:{a.cid}") <= scripts.RESULT_TTL  # the record expires
    again = replay_event(Chat(Store(client, prefix=prefix)), a.last, client, prefix)
    assert again.items == first.items


def test_a_recovery_refused_is_not_recorded(chat: Chat, client: redis.Redis, prefix: str) -> None:
    """A session Redis forgot, of a gateway lost since: refused again on a replay, nothing recorded."""
    a = connected(chat, f"{GW_A}:1", "alice", "#r")
    forget(client, prefix)
    chat.handle(GatewayLost(GW_A), 30.0)
    first = a.send("/nick ann")
    assert lines_to(first, a.cid) == [(ERROR, GATEWAY_GONE)]
    assert not client.hexists(f"{prefix}res:{a.cid}", str(a.last.seq if a.last else 0))
    again = replay(a, client, prefix)
    assert again.items == first.items



def test_lines_after_quit_in_a_later_event_do_not_resurrect(
    chat: Chat, client: redis.Redis, prefix: str
) -> None:
    a = connected(chat, f"{GW_A}:1", "alice", "#r")
    b = connected(chat, f"{GW_B}:1", "bob", "#r")
    a.send("/quit")
    fx = a.send("/join #r", "hello")
    assert events_to(fx, b.cid) == []
    assert not client.exists(f"{prefix}conn:{a.cid}")

# --- properties: replays, and replays of an event whose first run died mid-way ----------------

LINES = st.sampled_from([
    "/nick ann", "/nick Ann", "/nick bob", "/nick guest-1", "/join #r", "/join #S", "/part",
    "/part #r", "/part #s", "hello", "/me waves", "/msg #r yo", "/msg #s yo", "/ping", "/json",
    "/frob", "/nick 1bad", "/quit tired", "",
])
PROPS = settings(max_examples=40, deadline=None, database=None,
                 suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])


def _scene(client: redis.Redis, prefix: str, store: Store | None = None) -> tuple[Conn, Conn]:
    """alice (to act) and bob, who is in #r and #s and sees what alice does there."""
    chat = Chat(store or Store(client, prefix=prefix))
    a = connected(chat, f"{GW_A}:1")
    b = connected(chat, f"{GW_B}:1", "bob", "#r", "#s")
    return a, b


@PROPS
@given(lines=st.lists(LINES, min_size=1, max_size=8))
def test_any_event_replays_identically(client: redis.Redis, lines: list[str]) -> None:
    prefix = new_prefix()
    a, _ = _scene(client, prefix)
    first = a.send(*lines, now=5.0)
    again = replay(a, client, prefix, now=6.0)
    assert again.items == first.items


class Crash(redis.ConnectionError):
    """The worker died here (or its Redis link did)."""


class CrashingStore(Store):
    """A store whose worker dies at its `calls`-th call, before or after that call ran in Redis
    (the calls of one round trip before it have run)."""

    def __init__(self, client: redis.Redis, prefix: str, calls: int, after: bool) -> None:
        super().__init__(client, prefix)
        self.left = calls
        self.after = after

    def run(self, calls: list[Any]) -> list[Any]:
        if self.left > len(calls):
            self.left -= len(calls)
            return super().run(calls)
        ran = self.left if self.after else self.left - 1
        self.left = 0
        super().run(calls[:ran])
        raise Crash


@PROPS
@given(lines=st.lists(LINES, min_size=1, max_size=8), calls=st.integers(1, 8), after=st.booleans())
def test_an_event_that_died_mid_way_replays_safely(
    client: redis.Redis, lines: list[str], calls: int, after: bool
) -> None:
    # What a single clean run does, on a twin prefix
    twin = new_prefix()
    ta, _ = _scene(client, twin)
    clean = ta.send(*lines, now=5.0)
    # The same, but the first run dies mid-way; another worker then handles the event
    prefix = new_prefix()
    crashing = CrashingStore(client, prefix, calls=10**9, after=after)
    a, _ = _scene(client, prefix, crashing)
    crashing.left = calls
    partial = Effects()
    event = Lines(a.cid, a.seq, tuple(lines))
    try:
        a.chat.handle(event, 5.0, partial)
        hypothesis.event("ran through")
    except Crash:
        hypothesis.event(f"died {'after' if after else 'before'} a script ran")
    full = Chat(Store(client, prefix=prefix)).handle(event, 5.0)
    assert full.items[: len(partial.items)] == partial.items  # what went before is reproduced
    assert full.items == clean.items  # and the whole is as if it had run once
    assert snapshot(client, prefix, stream_ids=False) == snapshot(client, twin, stream_ids=False)


def test_an_event_that_died_after_a_message_was_stored(chat: Chat, client: redis.Redis, prefix: str) -> None:
    a = connected(chat, f"{GW_A}:1", "alice", "#r")
    b = connected(chat, f"{GW_B}:1", "bob", "#r")
    crashing = CrashingStore(client, prefix, calls=2, after=True)  # dies once "two" is stored
    event = Lines(a.cid, a.seq, ("one", "two", "/nick ann", "three"))
    with pytest.raises(Crash):
        Chat(crashing).handle(event, 5.0)
    assert client.xlen(f"{prefix}room:#r:history") == 2
    fx = chat.handle(event, 6.0)
    assert [e.text for e in events_to(fx, b.cid)] == [
        "one", "two", "alice is now known as ann", "three"
    ]
    assert [e.ts for e in events_to(fx, b.cid) if e.type == EventType.MESSAGE] == [5.0, 5.0, 6.0]
    assert client.xlen(f"{prefix}room:#r:history") == 3

