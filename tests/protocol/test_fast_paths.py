"""The faster ways of building, decoding and parsing keep every value, class and error the same.

`protocol.messages.quick` builds frozen dataclasses by plain slot stores; the codec decodes into
tuples and builds through `maker`; `parse_line` reads `/msg NICK TEXT` in one match. Each is checked
here against what the plain way gives.
"""

from __future__ import annotations

import copy
import dataclasses
import pickle
import re
from typing import Any

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from protocol import commands
from protocol.codec import decode, encode, encode_batches
from protocol.commands import Me, Msg, Say, parse_line
from protocol.errors import CommandError, DecodeError
from protocol.messages import (
    Batch,
    ChatEvent,
    Close,
    Deliver,
    EventType,
    Heartbeat,
    Lines,
    Mark,
    RoomEvent,
    SetMode,
    maker,
    quick,
)
from tests.protocol.test_codec import EVENT, EVENT_WIRE, event_wire

FAST = settings(max_examples=300, deadline=None, database=None)
FIELDS = (EventType.MESSAGE, "hi", "#chat", "bob", "", "gw1:7-1", 1700000000.5, "gw1:7", "", "", ())  # EVENT's


# --- quick classes ------------------------------------------------------------------


def test_a_quick_message_is_of_its_own_class_and_frozen() -> None:
    assert type(EVENT) is ChatEvent and type(Mark("c", 1)) is Mark and type(Msg("bob", "hi")) is Msg
    with pytest.raises(dataclasses.FrozenInstanceError):
        EVENT.text = "changed"  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        del EVENT.text  # type: ignore[misc]
    with pytest.raises((AttributeError, TypeError)):  # a new name: TypeError from Python 3.11's dataclasses
        EVENT.extra = 1  # type: ignore[attr-defined]
    assert EVENT.text == "hi"


def test_keywords_positions_and_defaults_give_the_same_value() -> None:
    keywords = ChatEvent(EventType.MESSAGE, "hi", room="#chat", sender="bob", id="gw1:7-1", ts=1700000000.5,
                         origin="gw1:7")
    positional = ChatEvent(*FIELDS)
    assert positional == EVENT == keywords and hash(positional) == hash(EVENT) == hash(keywords)
    assert repr(EVENT).startswith("ChatEvent(type=<EventType.MESSAGE: 'message'>, text='hi', room='#chat'")
    assert ChatEvent(EventType.INFO).args == () and Close("c", "r").departed is False
    assert Heartbeat("b") == Heartbeat("b", 0, True) and Me("t").room is None
    assert ChatEvent(EventType.MESSAGE, "hi") != EVENT and {EVENT, positional} == {EVENT}


@pytest.mark.parametrize("call", [
    ChatEvent,  # no type
    lambda: ChatEvent(EventType.INFO, bogus=1),  # type: ignore[call-arg]
    lambda: ChatEvent(EventType.INFO, "t", text="again"),  # type: ignore[misc]
    lambda: Mark("c", 1, 2),  # type: ignore[call-arg]
    lambda: Msg("bob"),  # type: ignore[call-arg]
])
def test_wrong_arguments_are_a_type_error_as_before(call: Any) -> None:
    with pytest.raises(TypeError):
        call()


def test_copies_pickles_and_replacements_are_of_the_same_class() -> None:
    for value in (EVENT, RoomEvent("#r", 3, EVENT, "gw:2", 1), Msg("bob", "hi")):
        for other in (copy.copy(value), copy.deepcopy(value), pickle.loads(pickle.dumps(value))):
            assert type(other) is type(value) and other == value
    replaced = dataclasses.replace(EVENT, text="other")
    assert type(replaced) is ChatEvent and replaced.text == "other" and replaced.room == "#chat"


def test_maker_builds_the_value_the_class_builds() -> None:
    made = maker(ChatEvent)(*FIELDS)
    assert type(made) is ChatEvent and made == EVENT
    with pytest.raises(dataclasses.FrozenInstanceError):
        made.text = "changed"  # type: ignore[misc]
    room_event = maker(RoomEvent)("#r", 3, EVENT, "", 0)
    assert type(room_event) is RoomEvent and room_event == RoomEvent("#r", 3, EVENT)
    assert maker(Deliver)(("a",), EVENT) == Deliver(("a",), EVENT) and maker(Mark)("c", 1) == Mark("c", 1)


def test_a_subclass_of_a_quick_class_stays_of_its_class() -> None:
    class Later(Mark):
        __slots__ = ()

    later = Later("c", 1)
    assert type(later) is Later and later.cid == "c" and later.seq == 1
    with pytest.raises(dataclasses.FrozenInstanceError):
        later.seq = 2  # type: ignore[misc]


def test_quick_takes_no_default_factory() -> None:
    @dataclasses.dataclass(frozen=True, slots=True)
    class Listed:
        items: tuple[str, ...] = dataclasses.field(default_factory=tuple)

    with pytest.raises(TypeError, match="default_factory"):
        quick(Listed)


# --- the codec: the same values, classes and errors ---------------------------------


def test_decoded_values_are_of_the_public_classes() -> None:
    batch = Batch((Mark("gw:1", 2), RoomEvent("#r", 3, EVENT), Deliver(("gw:1", "gw:2"), EVENT),
                   SetMode("gw:1", True), Close("gw:1", "bye", True)))
    decoded = decode(encode(batch))
    assert decoded == batch and isinstance(decoded, Batch)
    assert [type(item) for item in decoded.items] == [Mark, RoomEvent, Deliver, SetMode, Close]
    assert type(decoded.items[1].event) is ChatEvent  # type: ignore[union-attr]
    lines = decode(encode(Lines("gw:1", 4, ("a", "b"))))
    assert type(lines) is Lines and type(lines.lines) is tuple  # type: ignore[union-attr]


def test_a_batch_packs_as_its_items_one_by_one_would() -> None:
    items = (Mark("gw:1", 2), RoomEvent("#r", 3, EVENT), Deliver(("gw:1",), EVENT), SetMode("gw:1", False),
             Close("gw:1", "bye"), RoomEvent("#r", 4, EVENT, "gw:2", -1))
    assert encode_batches((("gw", items), ("gw2", items[1:3]))) == (
        ("gw", encode(Batch(items))), ("gw2", encode(Batch(items[1:3]))))
    assert msgpack.unpackb(encode(Batch(items[1:2])), raw=False) == [8, [[4, "#r", 3, "", 0, EVENT_WIRE]]]


def _room(room: Any = "#r", seq: Any = 1, member: Any = "", change: Any = 0, event: Any = None) -> list[Any]:
    return [8, [[4, room, seq, member, change, EVENT_WIRE if event is None else event]]]


# what each malformed frame has always been told (the texts before the faster decoding)
MALFORMED = [
    (_room(event=event_wire(text=5)), "expected str, got int"),
    (_room(event=event_wire(text=5, room=6)), "expected str, got int"),
    (_room(event=event_wire(code=None)), "expected str, got NoneType"),
    (_room(event=event_wire(origin=["x"])), "expected str, got list"),
    (_room(event=event_wire(ts="x")), "expected a number for ts"),
    (_room(event=event_wire(ts=True)), "expected a number for ts"),
    (_room(event=event_wire(type="shout")), "unknown event type 'shout'"),
    (_room(event=event_wire(type=["x"])), "unknown event type ['x']"),
    (_room(event=event_wire(args=[1])), "expected an array of str"),
    (_room(event=event_wire(args="ab")), "expected an array of str"),
    (_room(event=event_wire(args=[b"x"])), "expected an array of str"),
    (_room(event=event_wire(args=[["x"]])), "expected an array of str"),
    (_room(event=EVENT_WIRE[:10]), "expected an array of 11 items"),
    (_room(event="event"), "expected an array of 11 items"),
    (_room(change=2), "a room event's change is -1 or 1 with a member, 0 without"),
    (_room(member="gw:1"), "a room event's change is -1 or 1 with a member, 0 without"),
    (_room(change=1), "a room event's change is -1 or 1 with a member, 0 without"),
    (_room(member=5, change=1), "expected str, got int"),
    (_room(member=5), "a room event's change is -1 or 1 with a member, 0 without"),
    (_room(room=7), "expected str, got int"),
    (_room(room=[7]), "expected str, got list"),
    (_room(seq="1"), "expected int, got str"),
    (_room(change="0"), "expected int, got str"),
    (_room(change=True), "expected int, got bool"),
    (_room(change=[0]), "expected int, got list"),
    ([8, [[0, ["c:1", 2], EVENT_WIRE]]], "expected an array of str"),
    ([8, [[0, "c:1", EVENT_WIRE]]], "expected an array of str"),
    ([8, [[0, [None], EVENT_WIRE]]], "expected an array of str"),
    ([8, [[3, "c:1", "5"]]], "expected int, got str"),
    ([8, [[3, ["c"], 5]]], "expected str, got list"),
    ([8, [[True, "c:1", 5]]], "a batch item is [tag, field, field], [2, ...] with 2 or 3 fields or [4, ...] with 5"),
    ([8, [[9, "c:1", 5]]], "unknown batch item"),
    ([8, ["x"]], "expected an array of any items"),
    ([8, [[2, "c", "r", 1]]], "expected bool, got int"),
    ([8, [[2, "c", "r", [True]]]], "expected bool, got list"),
    ([8, "x"], "expected an array of any items"),
    ([2, "gw:1", 3, ["a", 5]], "expected an array of str"),
    ([2, "gw:1", 3, "ab"], "expected an array of str"),
    ([1, "gw:1", "3", "addr"], "expected int, got str"),
    ([6, [["c", 1, 2]]], "expected an array of 2 items"),
    ([6, [["c", [1]]]], "expected int, got list"),
    ({"a": 1}, "not a tagged array"),
]


@pytest.mark.parametrize(("wire", "error"), MALFORMED)
def test_a_malformed_frame_is_told_what_it_was_always_told(wire: Any, error: str) -> None:
    with pytest.raises(DecodeError) as caught:
        decode(msgpack.packb(wire, use_bin_type=True))
    assert str(caught.value) == error


def test_a_long_array_of_cids_with_one_wrong_item_is_refused() -> None:
    cids = [f"gw:{n}" for n in range(10_000)]
    assert decode(msgpack.packb([8, [[0, cids, EVENT_WIRE]]])) == Batch((Deliver(tuple(cids), EVENT),))
    for wrong in (5, None, b"gw:1", ["gw:1"], {"gw": 1}, 1.5, True):
        with pytest.raises(DecodeError, match="expected an array of str"):
            decode(msgpack.packb([8, [[0, [*cids, wrong], EVENT_WIRE]]], use_bin_type=True))


# --- parse_line: the one-match /msg ---------------------------------------------------


def _outcome(parse: Any, text: str) -> Any:
    try:
        return parse(text)
    except CommandError as exc:
        return ("error", str(exc), exc.code, exc.details)


PIECES = [" ", "  ", "\t", "bob", "Bob_1", "b-2", "#room", "#", "b" * 32, "b" * 33, "1bob", "é", "\u00a0",
          "\u2028", "\x1b[2J", "\r", "\n", "\u202e", "\u200b", "\u017f", "\u212a", "hello", "x y"]
lines = st.builds(
    lambda head, rest: head + "".join(rest),
    st.sampled_from(["/msg ", "/MSG ", "/mSg  ", "/msg\t", "/msg", "/msgs ", "/ms ", "/msg bob ", "/msg  bob  "]),
    st.lists(st.sampled_from(PIECES), max_size=6),
)


@FAST
@given(lines)
def test_property_a_private_message_reads_as_the_general_path_reads_it(line: str) -> None:
    assert _outcome(parse_line, line) == _outcome(commands._parse_command, line[1:])


@pytest.mark.parametrize(("line", "expected"), [
    ("/msg bob hello", Msg("bob", "hello")),
    ("/MSG  Bob_1   hello there  ", Msg("Bob_1", "hello there")),
    ("/msg bob \thi\t", Msg("bob", "hi")),
    ("/msg bob\thi", Msg("bob", "hi")),
    ("/msg bob hi\u202e\x1b[2J", Msg("bob", "hi[2J")),
    ("/msg #Room hi", Msg("#room", "hi")),
    ("hello", Say("hello")),
    ("//msg bob hi", Say("/msg bob hi")),
])
def test_private_messages_and_their_neighbours(line: str, expected: object) -> None:
    assert parse_line(line) == expected


@pytest.mark.parametrize(("line", "error"), [
    ("/msg bob ", "usage: /msg TARGET TEXT"),
    ("/msg bob \u200b", "usage: /msg TARGET TEXT"),
    ("/msg " + "b" * 33 + " hi", "invalid nickname"),
    ("/msg 1bob hi", "invalid nickname"),
    ("/msg \u212aelvin hi", "invalid nickname"),
    ("/msg\u00a0bob hi", "unknown command"),
])
def test_a_private_message_of_another_shape_is_refused_as_before(line: str, error: str) -> None:
    with pytest.raises(CommandError, match=error.replace("(", r"\(")):
        parse_line(line)


def _first_word_by_regex(text: str) -> tuple[str, str]:
    """What `_first_word` means: up to the first space or tab, and the rest without edge ones."""
    cut = re.fullmatch(r"([^ \t]*)(.*)", text, re.DOTALL)
    assert cut is not None
    return cut[1], cut[2].strip(" \t")


@FAST
@given(st.text(alphabet=" \tab#\u00a0\u3000\n", max_size=12))
def test_property_the_first_word_is_cut_as_before(text: str) -> None:
    assert commands._first_word(text) == _first_word_by_regex(text)
