"""What no input and no outage may do to a worker: the breaker, the one guard per event,
limits enforced where the data is stored. Real Valkey (one prefix per test), time as a value."""

from __future__ import annotations

import typing
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from protocol import codec
from protocol import commands as c
from protocol.messages import (
    Batch,
    ChatEvent,
    Connected,
    Deliver,
    Disconnected,
    EventType,
    GatewayLost,
    Heartbeat,
    Lines,
    Mark,
    Unknown,
    WorkItem,
)
from protocol.render import is_own_echo, render_text
from tests.workers.test_logic import GW_A, GW_B, connected, events_to, lines_to
from workers.handler import Breaker, Handler
from workers.logic import INTERNAL_ERROR, TOO_MANY_ROOMS, UNAVAILABLE, At, Chat, ChatLimits, Step
from workers.redis_client import open_redis
from workers.store import Call, Store

INFO, ERROR = EventType.INFO, EventType.ERROR


# --- the breaker ------------------------------------------------------------------------


def test_breaker_open_does_not_extend_itself() -> None:
    breaker = Breaker(cooldown=1.0)
    assert breaker.allows(0.0)
    breaker.trip(10.0)
    assert not breaker.allows(10.5)
    assert not breaker.allows(10.99)
    assert breaker.allows(11.0)  # the trial


@pytest.fixture
def dead_redis(tmp_path: Path) -> Iterator[redis.Redis]:
    """A client of a Redis that is not there: a socket path no one listens on."""
    conn = open_redis(f"unix://{tmp_path / 'nobody.sock'}", timeout=0.2)
    yield conn
    conn.close()


def _frames(*events: WorkItem) -> list[bytes]:
    """A dispatch as the broker sends it: its heartbeat, then each event's key and body."""
    return [codec.encode(Heartbeat("broker.x")), *(f for e in events for f in codec.event_frames(e))]


def _errors_in(done_publish: tuple[tuple[str, bytes], ...]) -> list[str]:
    out = []
    for _, raw in done_publish:
        batch = codec.decode(raw)
        assert isinstance(batch, Batch)
        out += [i.event.text for i in batch.items if isinstance(i, Deliver) and i.event.type is ERROR]
    return out


def test_steady_load_through_an_outage_is_served_once_redis_is_back(
        store: Store, dead_redis: redis.Redis, prefix: str) -> None:
    """One event every 0.25 s (shorter than the cooldown): the breaker must still close."""
    live = Chat(store)
    a = connected(live, f"{GW_A}:1", "alice", "#r")
    handler = Handler(Chat(Store(dead_redis, prefix)), Breaker(cooldown=1.0))
    tick, seq = 100.0, a.seq
    for _ in range(8):  # two seconds of Redis down, /who four times a second
        done = handler.frames(_frames(Lines(a.cid, seq, ("/who",))), 1.0, tick)
        assert _errors_in(done.publish) == [UNAVAILABLE]
        tick, seq = tick + 0.25, seq + 1
    assert handler.breaker.open_until <= tick  # only real failures re-trip it, not the fail-fast ones
    handler.chat = live  # Redis is back
    answers: list[str] = []
    for _ in range(5):  # within about a second (the cooldown) lines are served again
        done = handler.frames(_frames(Lines(a.cid, seq, ("/who",))), 1.0, tick)
        answers.append("served" if not _errors_in(done.publish) else "refused")
        tick, seq = tick + 0.25, seq + 1
    assert answers[-1] == "served" and answers.count("refused") <= 4, answers


def test_lost_gateway_clean_up_waits_for_the_breaker_then_runs(store: Store, dead_redis: redis.Redis,
                                                               prefix: str) -> None:
    handler = Handler(Chat(Store(dead_redis, prefix)), Breaker(cooldown=1.0))
    handler.frames(_frames(GatewayLost(GW_B)), 1.0, 0.0)
    assert len(handler.reaps) == 1
    handler.chat = Chat(store)
    handler.frames([], 1.0, 0.5)  # still open: kept
    assert len(handler.reaps) == 1
    handler.frames([], 1.0, 1.0)
    assert handler.reaps == []


# --- one guard per event -----------------------------------------------------------------


def test_every_command_has_a_plan(chat: Chat) -> None:
    assert chat.planned_commands() == frozenset(typing.get_args(c.Command))


def _broken(at: At, cmd: object) -> Step:
    raise KeyError("a bug in planning")


def _broken_response(at: At, cmd: object) -> Step:
    def respond(fx: object, res: object) -> None:
        raise ValueError("a bug in responding")

    return Step(None, respond)


@pytest.mark.parametrize("bug", [_broken, _broken_response])
def test_a_failing_event_costs_that_event_only(chat: Chat, bug: object) -> None:
    a = connected(chat, f"{GW_A}:1", "alice", "#r")
    b = connected(chat, f"{GW_B}:1", "bob", "#r")
    chat._plans[c.Who] = bug  # type: ignore[assignment]
    handler = Handler(chat, Breaker(1.0))
    done = handler.frames(_frames(Lines(a.cid, a.seq, ("/who", "/ping")), Lines(b.cid, b.seq, ("hi",))), 5.0, 0.0)
    assert set(done.events) == {(a.cid, a.seq), (b.cid, b.seq)}  # both answered, the process alive
    fx = [codec.decode(raw) for _, raw in done.publish]
    delivered = [(i.cids, i.event.text) for batch in fx for i in batch.items if isinstance(i, Deliver)]  # type: ignore[attr-defined]
    assert ((a.cid,), INTERNAL_ERROR) in delivered
    assert any(text == "hi" and b.cid in cids for cids, text in delivered)  # the other event served
    assert chat.metrics.registry.get_sample_value("chat_worker_internal_errors_total") == 1


def test_a_failing_connect_is_answered_and_counted(chat: Chat) -> None:
    def broken(item: object, now: float) -> list[Step]:
        raise RuntimeError("a bug")

    chat.plan = broken  # type: ignore[method-assign]
    cid = f"{GW_A}:9"
    handler = Handler(chat, Breaker(1.0))
    done = handler.frames(_frames(Connected(cid, 0, "127.0.0.1:1"), Disconnected(f"{GW_A}:8", 3, "")), 5.0, 0.0)
    assert set(done.events) == {(cid, 0), (f"{GW_A}:8", 3)}
    assert _errors_in(done.publish) == [INTERNAL_ERROR]


def test_a_reply_that_does_not_parse_costs_its_event_only(chat: Chat, store: Store) -> None:
    a = connected(chat, f"{GW_A}:1", "alice", "#r")
    b = connected(chat, f"{GW_B}:1", "bob", "#r")

    def bad_who(op: object, cid: str, room: object) -> Call:
        return Call(None, ("PING",), lambda reply: reply[5])  # not what the reply holds

    store.who = bad_who  # type: ignore[method-assign]
    handler = Handler(chat, Breaker(1.0))
    done = handler.frames(_frames(Lines(a.cid, a.seq, ("/who",)), Lines(b.cid, b.seq, ("/ping",))), 5.0, 0.0)
    assert set(done.events) == {(a.cid, a.seq), (b.cid, b.seq)}
    assert _errors_in(done.publish) == [INTERNAL_ERROR]


def test_a_bug_of_the_dispatch_answers_every_event(chat: Chat) -> None:
    def broken(items: object, now: float) -> list[object]:
        raise AssertionError("a bug outside every event's guard")

    chat.handle_batch = broken  # type: ignore[method-assign,assignment]
    handler = Handler(chat, Breaker(1.0))
    done = handler.frames(_frames(Lines(f"{GW_A}:1", 4, ("hi",)), Connected(f"{GW_B}:2", 0, "")), 5.0, 0.0)
    assert set(done.events) == {(f"{GW_A}:1", 4), (f"{GW_B}:2", 0)}
    assert _errors_in(done.publish) == [INTERNAL_ERROR, INTERNAL_ERROR]


# --- limits where the data is stored ---------------------------------------------------------


def test_a_line_over_the_limit_is_refused_and_not_stored(chat: Chat) -> None:
    a = connected(chat, f"{GW_A}:1", "alice", "#r")
    fx = a.send("x" * 4097, "é" * 2049, "é" * 2048, "/history")
    got = lines_to(fx, a.cid)
    assert got[:2] == [(ERROR, "line too long (max 4096 bytes)")] * 2
    assert (INFO, "history of #r: 1 message") in got


def test_a_custom_line_limit(store: Store) -> None:
    chat = Chat(store, ChatLimits(max_line=16))
    a = connected(chat, f"{GW_A}:1")
    assert lines_to(a.send("/ping " + "x" * 11), a.cid) == [(ERROR, "line too long (max 16 bytes)")]


def test_lines_per_event_are_bounded(store: Store) -> None:
    chat = Chat(store, ChatLimits(max_event_lines=3))
    a = connected(chat, f"{GW_A}:1", "alice", "#r")
    fx = a.send("/ping", "/ping", "/ping", "/ping", "/ping")
    assert lines_to(fx, a.cid) == [(INFO, "pong")] * 3 + [
        (ERROR, "too many lines at once (max 3): the rest were dropped")]


# --- rooms per connection, /rooms, history of emptied rooms ----------------------------------


def test_the_room_limit(chat: Chat) -> None:
    a = connected(chat, f"{GW_A}:1", "alice", *[f"#r{i}" for i in range(50)])
    fx = a.send("/join #r50")
    assert lines_to(fx, a.cid) == [(ERROR, TOO_MANY_ROOMS.format(max=50))]
    assert lines_to(fx, a.cid) == [(ERROR, "too many rooms (max 50): /part one first")]
    again = chat.handle(a.last, 11.0)  # type: ignore[arg-type]  # a replay: the same answer
    assert lines_to(again, a.cid) == lines_to(fx, a.cid)
    assert lines_to(a.send("/join #r7"), a.cid)[0][1].startswith("you joined #r7")  # one already in
    a.send("/part #r0")
    assert lines_to(a.send("/join #r50"), a.cid)[0][1].startswith("you joined #r50")


def test_a_custom_room_limit_is_atomic_within_one_event(client: redis.Redis, prefix: str) -> None:
    chat = Chat(Store(client, prefix, max_rooms=2))
    a = connected(chat, f"{GW_A}:1")
    got = lines_to(a.send("/join #a", "/join #b", "/join #c"), a.cid)
    assert got[2] == (ERROR, "too many rooms (max 2): /part one first")
    assert client.scard(f"{prefix}conn:{a.cid}:rooms") == 2


def test_rooms_shows_the_biggest_and_counts_the_rest(chat: Chat) -> None:
    connected(chat, f"{GW_A}:1", "alice", *[f"#a{i:02}" for i in range(50)])
    b = connected(chat, f"{GW_B}:1", "bob", "#a07", "#a42", *[f"#b{i}" for i in range(5)])
    [(kind, text)] = lines_to(b.send("/rooms"), b.cid)
    assert kind is INFO
    assert text.startswith("rooms: #a07 (2), #a42 (2), #")  # the biggest first; ties by name
    assert text.endswith(", ... and 5 more")
    assert text.count("(") == 50


def test_rooms_count_follows_parts_leaves_and_reaps(chat: Chat) -> None:
    a = connected(chat, f"{GW_A}:1", "alice", "#x", "#y")
    b = connected(chat, f"{GW_B}:1", "bob", "#x")
    assert lines_to(b.send("/rooms"), b.cid) == [(INFO, "rooms: #x (2), #y (1)")]
    a.send("/part #y")
    assert lines_to(b.send("/rooms"), b.cid) == [(INFO, "rooms: #x (2)")]
    a.leave()
    assert lines_to(b.send("/rooms"), b.cid) == [(INFO, "rooms: #x (1)")]
    chat.handle(GatewayLost(GW_B), 30.0)
    c2 = connected(chat, f"{GW_A}:2")
    assert lines_to(c2.send("/rooms"), c2.cid) == [(INFO, "no rooms yet: /join #name opens one")]


def _history_ttl(client: redis.Redis, prefix: str, room: str) -> int:
    return int(client.ttl(f"{prefix}room:{room}:history"))  # type: ignore[arg-type]


@pytest.mark.parametrize("how", ["part", "leave", "reap"])
def test_an_emptied_rooms_history_expires_and_a_join_keeps_it(
        client: redis.Redis, prefix: str, how: str) -> None:
    chat = Chat(Store(client, prefix, history_ttl=3600))
    a = connected(chat, f"{GW_A}:1", "alice", "#h")
    b = connected(chat, f"{GW_B}:1", "bob", "#h")
    a.send("hello")
    b.send("/part #h")
    assert _history_ttl(client, prefix, "#h") == -1  # alice is still there
    if how == "part":
        a.send("/part")
    elif how == "leave":
        a.leave()
    else:
        chat.handle(GatewayLost(GW_A), 30.0)
    assert 3590 < _history_ttl(client, prefix, "#h") <= 3600
    b.send("/join #h")
    assert _history_ttl(client, prefix, "#h") == -1
    assert lines_to(b.send("/history"), b.cid)[0] == (INFO, "history of #h: 1 message")


# --- /msg to yourself ---------------------------------------------------------------------------


def test_msg_to_yourself_is_shown_once_in_both_modes(chat: Chat) -> None:
    a = connected(chat, f"{GW_A}:1", "alice")
    events = events_to(a.send("/msg alice note to self"), a.cid)
    assert len(events) == 1
    event: ChatEvent = events[0]
    assert event.type is EventType.PRIVATE and event.to == "alice"
    assert not is_own_echo(event, a.cid)  # text mode shows it
    assert render_text(event) == b"*alice* note to self\n"


def test_msg_to_someone_else_is_still_not_echoed_in_text_mode(chat: Chat) -> None:
    a = connected(chat, f"{GW_A}:1", "alice")
    connected(chat, f"{GW_B}:1", "bob")
    fx = a.send("/msg bob hi")
    [mine] = events_to(fx, a.cid)
    assert is_own_echo(mine, a.cid)
    assert [i for i in fx.items if isinstance(i, Mark)] == []  # Chat.handle adds no Mark: the worker does


def test_an_event_whose_body_is_not_the_one_its_key_names_is_answered_not_served(chat: Chat) -> None:
    """The broker checks a key's cid against the gateway that sent it, not the body's: a
    gateway that names its own connection in the key and another's in the body forges nothing."""
    a = connected(chat, f"{GW_A}:1", "alice", "#r")
    b = connected(chat, f"{GW_B}:1", "bob", "#r")
    forged = [codec.encode_key(a.cid, a.seq), codec.encode(Lines(b.cid, b.seq, ("I am bob",)))]
    garbled = [codec.encode_key(a.cid, a.seq + 1), b"\xc1 not msgpack"]
    handler = Handler(chat, Breaker(1.0))
    done = handler.frames([codec.encode(Heartbeat("broker.x")), *forged, *garbled, b"\0"], 5.0, 0.0)
    assert done.events == ((a.cid, a.seq), (a.cid, a.seq + 1))  # answered: the broker frees a's turn
    assert done.publish == ()  # nothing said, as nobody
    assert chat.metrics.registry.get_sample_value("chat_worker_malformed_total") == 3



def test_every_first_frame_is_read_for_what_it_is_even_when_heartbeats_repeat(chat: Chat) -> None:
    """A broker heads its dispatches with the same Heartbeat bytes (read once); an empty or
    garbled first frame, an Unknown or another epoch between them is each read for what it is."""
    handler = Handler(chat, Breaker(1.0))
    malformed = "chat_worker_malformed_total"
    handler.frames([b""], 5.0, 0.0)
    assert chat.metrics.registry.get_sample_value(malformed) == 1
    beat = codec.encode(Heartbeat("broker.x", 3, True))
    for _ in range(2):
        handler.frames([beat], 5.0, 0.0)
        assert chat.store.epoch == 3
    handler.frames([codec.encode(Unknown("broker.y"))], 5.0, 0.0)
    assert handler.unknown_to == "broker.y"
    handler.frames([codec.encode(Heartbeat("broker.x", 4, True))], 5.0, 0.0)
    assert chat.store.epoch == 4
    handler.frames([b"\xc1"], 5.0, 0.0)
    assert chat.store.epoch == 0 and chat.metrics.registry.get_sample_value(malformed) == 2
    handler.frames([beat], 5.0, 0.0)
    assert chat.store.epoch == 3

# --- one round trip ---------------------------------------------------------------------


def test_a_round_trip_that_times_out_leaves_no_late_reply_for_the_next(valkey_url: str, client: redis.Redis,
                                                                        prefix: str) -> None:
    """The calls of a round trip share one write and one connection: when Redis answers too late,
    that connection is dropped, so the next round trip reads its own replies, not the late ones."""
    store = Store(open_redis(valkey_url, timeout=0.2), prefix=prefix)
    echo = [Call(None, ("ECHO", word), lambda reply: reply) for word in ("one", "two")]
    assert store.run(echo) == ["one", "two"]
    client.client_pause(600)  # every client waits: the store's calls time out
    with pytest.raises(redis.TimeoutError):
        store.run([Call(None, ("ECHO", "late"), lambda reply: reply), *echo])
    client.client_unpause()
    again = [Call(None, ("ECHO", word), lambda reply: reply) for word in ("three", "four")]
    assert store.run(again) == ["three", "four"]


def test_a_round_trip_keeps_per_call_errors_as_values_in_order(store: Store) -> None:
    calls = [Call(None, ("ECHO", "a"), lambda reply: reply), Call(None, ("NOSUCHCOMMAND",), lambda reply: reply),
             Call(None, ("PING",), lambda reply: reply), Call(None, ("ECHO", "b"), lambda reply: reply)]
    a, error, ping, b = store.run(calls)
    assert (a, ping, b) == ("a", True, "b")  # PING as the client gives it
    assert isinstance(error, redis.ResponseError)


def test_a_connection_the_server_closed_is_opened_again_without_a_failure(valkey_url: str, client: redis.Redis,
                                                                          prefix: str) -> None:
    """The store keeps its connection between round trips: one that Redis closed meanwhile (a
    restart, an idle timeout, CLIENT KILL) is found closed before the next and opened again."""
    store = Store(open_redis(valkey_url, timeout=1.0), prefix=prefix)
    echo = [Call(None, ("ECHO", word), lambda reply: reply) for word in ("one", "two")]
    assert store.run(echo) == ["one", "two"]
    assert client.client_kill_filter(skipme=True) >= 1  # every other client: the store's among them
    assert store.run(echo) == ["one", "two"]
