"""Tests for protocol.render: a ChatEvent -> the line a client receives."""

from __future__ import annotations

import json
import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from protocol.messages import ChatEvent, EventType
from protocol.render import is_own_echo, render_json, render_text, to_json_object
from tests.protocol.test_commands import ATTACKS, CONTROL

FAST = settings(max_examples=150, deadline=None, database=None)

INFO_LIKE = [EventType.INFO, EventType.JOIN, EventType.PART, EventType.QUIT, EventType.NICK]
ECHOED = [EventType.MESSAGE, EventType.ACTION, EventType.PRIVATE]
JSON_FIELDS = {"type", "room", "from", "to", "text", "id", "ts", "of"}

event_types = st.sampled_from(list(EventType))
chat_events = st.builds(
    ChatEvent,
    type=event_types,
    text=st.text(max_size=30),
    room=st.text(max_size=10),
    sender=st.text(max_size=10),
    to=st.text(max_size=10),
    id=st.text(max_size=10),
    ts=st.one_of(st.just(0.0), st.floats(min_value=0, max_value=4e9), st.floats()),
    origin=st.text(max_size=10),
    of=st.one_of(st.just(""), event_types.map(lambda t: t.value)),
)


# --- text mode ----------------------------------------------------------------------


def test_room_message() -> None:
    event = ChatEvent(EventType.MESSAGE, "hello all", room="#chat", sender="bob")
    assert render_text(event) == b"#chat <bob> hello all\n"


def test_action() -> None:
    event = ChatEvent(EventType.ACTION, "waves", room="#chat", sender="bob")
    assert render_text(event) == b"#chat * bob waves\n"


def test_private_message() -> None:
    event = ChatEvent(EventType.PRIVATE, "psst", sender="alice", to="bob")
    assert render_text(event) == b"*alice* psst\n"


@pytest.mark.parametrize("kind", INFO_LIKE)
def test_information_lines_start_with_star(kind: EventType) -> None:
    event = ChatEvent(kind, "bob joined #chat", room="#chat", sender="bob")
    assert render_text(event) == b"* bob joined #chat\n"


@pytest.mark.parametrize(
    "text",
    [
        "you are now bob",
        "you joined #chat",
        "alice is now known as bob",
        "bob left #chat",
        "bob quit",
        "pong",
        "bye",
    ],
)
def test_info_replies(text: str) -> None:
    assert render_text(ChatEvent(EventType.INFO, text)) == f"* {text}\n".encode()


def test_error() -> None:
    event = ChatEvent(EventType.ERROR, "unknown command /x (try /help)")
    assert render_text(event) == b"! unknown command /x (try /help)\n"


def test_error_lines_from_the_transport() -> None:
    assert render_text(ChatEvent(EventType.ERROR, "line too long (max 4096 bytes)")) == (
        b"! line too long (max 4096 bytes)\n"
    )
    assert render_text(ChatEvent(EventType.ERROR, "invalid UTF-8")) == b"! invalid UTF-8\n"


def test_history_of_a_message_looks_like_the_message() -> None:
    event = ChatEvent(EventType.HISTORY, "earlier", room="#chat", sender="bob", of="message")
    original = ChatEvent(EventType.MESSAGE, "earlier", room="#chat", sender="bob")
    assert render_text(event) == render_text(original) == b"#chat <bob> earlier\n"


def test_history_of_an_action_looks_like_the_action() -> None:
    event = ChatEvent(EventType.HISTORY, "waved", room="#chat", sender="bob", of="action")
    original = ChatEvent(EventType.ACTION, "waved", room="#chat", sender="bob")
    assert render_text(event) == render_text(original) == b"#chat * bob waved\n"


def test_text_is_utf8() -> None:
    event = ChatEvent(EventType.MESSAGE, "héllo ☕", room="#café", sender="zoë")
    assert render_text(event) == "#café <zoë> héllo ☕\n".encode()


def test_ids_times_and_origins_are_not_shown_in_text_mode() -> None:
    event = ChatEvent(
        EventType.MESSAGE, "hi", room="#r", sender="s", id="ID123", ts=1700000000.0, origin="gw:1"
    )
    assert render_text(event) == b"#r <s> hi\n"


def expected_text_line(event: ChatEvent) -> str:
    kind = event.type
    if kind is EventType.MESSAGE or (kind is EventType.HISTORY and event.of != "action"):
        return f"{event.room} <{event.sender}> {event.text}"
    if kind is EventType.ACTION or kind is EventType.HISTORY:
        return f"{event.room} * {event.sender} {event.text}"
    if kind is EventType.PRIVATE:
        return f"*{event.sender}* {event.text}"
    if kind is EventType.ERROR:
        return f"! {event.text}"
    return f"* {event.text}"


@FAST
@given(chat_events)
def test_property_text_mode_is_one_safe_line_with_the_right_prefix(event: ChatEvent) -> None:
    out = render_text(event)
    assert out.endswith(b"\n")
    assert out.count(b"\n") == 1
    line = out.decode("utf-8")[:-1]
    assert not CONTROL.search(line)
    assert len(line.splitlines()) <= 1  # no other character any splitter breaks on
    assert line == CONTROL.sub("", expected_text_line(event))


hostile = st.text(
    st.one_of(st.characters(), st.sampled_from(list(ATTACKS.values()))), max_size=30
)


@FAST
@given(st.sampled_from(list(EventType)), hostile, hostile, hostile)
def test_property_hostile_text_never_reaches_a_text_client(
    kind: EventType, text: str, room: str, sender: str
) -> None:
    out = render_text(ChatEvent(kind, text, room=room, sender=sender, of="message"))
    line = out.decode("utf-8")
    assert line.endswith("\n") and line.count("\n") == 1
    assert not CONTROL.search(line[:-1])


@pytest.mark.parametrize("name", ATTACKS)
@pytest.mark.parametrize("kind", list(EventType))
def test_every_attack_character_is_removed_in_text_mode(name: str, kind: EventType) -> None:
    char = ATTACKS[name]
    event = ChatEvent(kind, f"a{char}b", room=f"#r{char}", sender=f"s{char}", of="action")
    line = render_text(event).decode()
    assert char not in line[:-1]
    assert "ab" in line


def test_an_outside_csi_spoof_is_shown_harmless() -> None:
    # 8-bit CSI 2K erases the line, CSI G homes the cursor: the prefix would vanish
    event = ChatEvent(EventType.MESSAGE, "\x9b2K\x9bG* alice is now known as admin", room="#r", sender="eve")
    assert render_text(event) == b"#r <eve> 2KG* alice is now known as admin\n"


# --- JSON mode ------------------------------------------------------------------------


def parse_json_line(out: bytes) -> dict[str, object]:
    assert out.endswith(b"\n")
    assert out.count(b"\n") == 1
    obj = json.loads(out.decode("utf-8"))
    assert isinstance(obj, dict)
    return obj


def test_json_message_has_every_applicable_field() -> None:
    event = ChatEvent(
        EventType.MESSAGE, "hi", room="#chat", sender="bob", id="gw1:7-1", ts=1700000000.25, origin="gw1:7"
    )
    assert parse_json_line(render_json(event)) == {
        "type": "message",
        "room": "#chat",
        "from": "bob",
        "text": "hi",
        "id": "gw1:7-1",
        "ts": 1700000000.25,
    }


def test_json_private_has_from_and_to() -> None:
    event = ChatEvent(EventType.PRIVATE, "psst", sender="alice", to="bob", id="x1", ts=5.5)
    assert parse_json_line(render_json(event)) == {
        "type": "private",
        "from": "alice",
        "to": "bob",
        "text": "psst",
        "id": "x1",
        "ts": 5.5,
    }


def test_json_action() -> None:
    event = ChatEvent(EventType.ACTION, "waves", room="#r", sender="bob", id="a", ts=1.0)
    obj = parse_json_line(render_json(event))
    assert obj["type"] == "action"
    assert obj["text"] == "waves"


@pytest.mark.parametrize("kind", list(EventType))
def test_json_type_names(kind: EventType) -> None:
    obj = parse_json_line(render_json(ChatEvent(kind, "x")))
    assert obj["type"] == kind.value


def test_json_type_values_are_those_of_the_protocol() -> None:
    documented = {"message", "action", "private", "join", "part", "quit", "nick", "info", "error"}
    assert documented <= {kind.value for kind in EventType}


def test_json_info_and_error_have_only_type_and_text() -> None:
    assert parse_json_line(render_json(ChatEvent(EventType.INFO, "pong"))) == {
        "type": "info",
        "text": "pong",
    }
    assert parse_json_line(render_json(ChatEvent(EventType.ERROR, "invalid UTF-8"))) == {
        "type": "error",
        "text": "invalid UTF-8",
    }


def test_json_join_has_room_and_from() -> None:
    event = ChatEvent(EventType.JOIN, "bob joined #r", room="#r", sender="bob", ts=3.0)
    assert parse_json_line(render_json(event)) == {
        "type": "join",
        "room": "#r",
        "from": "bob",
        "text": "bob joined #r",
        "ts": 3.0,
    }


def test_json_history_names_what_it_replays() -> None:
    event = ChatEvent(EventType.HISTORY, "old", room="#r", sender="bob", id="i", ts=2.0, of="action")
    obj = parse_json_line(render_json(event))
    assert obj["type"] == "history"
    assert obj["of"] == "action"
    assert obj["id"] == "i"


def test_json_never_shows_the_origin_connection() -> None:
    event = ChatEvent(EventType.MESSAGE, "hi", room="#r", sender="s", origin="gw1:3")
    out = render_json(event)
    assert "origin" not in parse_json_line(out)
    assert b"gw1:3" not in out


def test_json_ts_is_a_float() -> None:
    obj = parse_json_line(render_json(ChatEvent(EventType.MESSAGE, "x", ts=1700000000.0)))
    assert isinstance(obj["ts"], float)
    assert obj["ts"] == 1700000000.0


def test_json_newlines_in_text_stay_inside_the_one_line() -> None:
    event = ChatEvent(EventType.INFO, "line one\nline two\r\n")
    out = render_json(event)
    assert parse_json_line(out)["text"] == "line one\nline two\r\n"


@pytest.mark.parametrize("name", ATTACKS)
def test_json_escapes_every_attack_character(name: str) -> None:
    char = ATTACKS[name]
    event = ChatEvent(EventType.MESSAGE, f"a{char}b", room="#r", sender=f"s{char}", id="i", ts=1.0)
    out = render_json(event)
    assert not CONTROL.search(out.decode()[:-1])
    obj = parse_json_line(out)
    assert obj["text"] == f"a{char}b"  # the data is kept, only written as an escape
    assert obj["from"] == f"s{char}"


def test_json_line_separators_are_escaped() -> None:
    out = render_json(ChatEvent(EventType.INFO, "a\u2028b\u2029c"))
    assert out == b'{"type": "info", "text": "a\\u2028b\\u2029c"}\n'
    assert len(out.decode().splitlines()) == 1


def test_json_escapes_after_a_literal_backslash_stay_escapes() -> None:
    text = "\\\x85\\\u2028\\\\u2029"  # backslashes before raw characters and before a "u"
    obj = parse_json_line(render_json(ChatEvent(EventType.INFO, text)))
    assert obj["text"] == text


@pytest.mark.parametrize("ts", [float("nan"), float("inf"), float("-inf")])
def test_json_leaves_out_a_ts_that_is_not_a_number(ts: float) -> None:
    assert parse_json_line(render_json(ChatEvent(EventType.INFO, "x", ts=ts))) == {
        "type": "info", "text": "x"
    }


@FAST
@given(st.sampled_from(list(EventType)), hostile, hostile, st.floats())
def test_property_json_line_parses_and_has_no_raw_unsafe_character(
    kind: EventType, text: str, sender: str, ts: float
) -> None:
    out = render_json(ChatEvent(kind, text, room="#r", sender=sender, ts=ts))
    line = out.decode("utf-8")
    assert "\u2028" not in line and "\u2029" not in line
    assert not CONTROL.search(line[:-1])
    obj = parse_json_line(out)
    assert obj.get("text", "") == text
    assert obj.get("from", "") == sender


def test_json_is_utf8() -> None:
    out = render_json(ChatEvent(EventType.MESSAGE, "héllo ☕ 你好"))
    assert parse_json_line(out)["text"] == "héllo ☕ 你好"


@FAST
@given(chat_events)
def test_property_json_is_one_object_per_line_with_the_applicable_fields(event: ChatEvent) -> None:
    obj = parse_json_line(render_json(event))
    assert obj == to_json_object(event)
    assert set(obj) <= JSON_FIELDS
    assert obj["type"] == event.type.value
    expected = {
        "room": event.room,
        "from": event.sender,
        "to": event.to,
        "text": event.text,
        "id": event.id,
        "of": event.of,
    }
    for key, value in expected.items():
        if value:
            assert obj[key] == value
        else:
            assert key not in obj
    if event.ts and math.isfinite(event.ts):
        assert obj["ts"] == event.ts
    else:
        assert "ts" not in obj


# --- is_own_echo -------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ECHOED)
def test_own_messages_are_echoes(kind: EventType) -> None:
    event = ChatEvent(kind, "hi", room="#r", sender="bob", origin="gw1:1")
    assert is_own_echo(event, "gw1:1")
    assert not is_own_echo(event, "gw1:2")
    assert not is_own_echo(event, "gw2:1")


@pytest.mark.parametrize("kind", [k for k in EventType if k not in ECHOED])
def test_other_events_are_never_echoes(kind: EventType) -> None:
    # own joins, nick changes, replies, errors and history do reach the sender
    event = ChatEvent(kind, "x", origin="gw1:1")
    assert not is_own_echo(event, "gw1:1")


def test_event_without_origin_is_nobodys_echo() -> None:
    event = ChatEvent(EventType.MESSAGE, "hi", room="#r", sender="bob")
    assert not is_own_echo(event, "gw1:1")


@FAST
@given(chat_events, st.text(max_size=10))
def test_property_is_own_echo_rule(event: ChatEvent, cid: str) -> None:
    assert is_own_echo(event, cid) == (event.origin == cid and event.type in ECHOED)


def test_json_mode_adds_the_reply_code_and_args_and_keeps_the_rest() -> None:
    from protocol.replies import ReplyCode

    event = ChatEvent(EventType.INFO, "you joined #a (1 here: al)", code=ReplyCode.JOINED, args=("#a", "", "al"))
    assert json.loads(render_json(event)) == {
        "type": "info", "text": "you joined #a (1 here: al)", "code": "joined", "args": ["#a", "", "al"]}
    assert render_text(event) == b"* you joined #a (1 here: al)\n"
    assert b"code" not in render_json(ChatEvent(EventType.INFO, "x"))


def test_a_topic_change_renders_as_information() -> None:
    event = ChatEvent(EventType.TOPIC, "al set the topic of #a: hi\u202e", room="#a", sender="al", args=("#a", "hi"))
    assert render_text(event) == b"* al set the topic of #a: hi\n"
    assert json.loads(render_json(event))["type"] == "topic"
