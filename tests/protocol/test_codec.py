"""Tests for protocol.codec (messages <-> msgpack frames) and protocol.messages."""

from __future__ import annotations

from typing import Any

import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from protocol.codec import (
    MAX_KEY_BYTES,
    decode,
    decode_done,
    decode_key,
    done_frames,
    encode,
    encode_key,
    event_frames,
    sampled_key,
    to_wire,
)
from protocol.errors import DecodeError, ProtocolError
from protocol.hops import is_sampled
from protocol.messages import (
    Batch,
    ChatEvent,
    Close,
    Connected,
    Deliver,
    Disconnected,
    Done,
    EventType,
    Fenced,
    GatewayLost,
    Heartbeat,
    Lines,
    Mark,
    Message,
    Ready,
    RoomEvent,
    SetMode,
    Unknown,
    event_key,
    gateway_of,
    topic_of,
)
from protocol.replies import ReplyCode

FAST = settings(
    max_examples=150,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)

# --- strategies: one per dataclass ---------------------------------------------

texts = st.text(max_size=12)
ints = st.integers(min_value=-(2**63), max_value=2**64 - 1)  # what msgpack can carry
small_ints = st.integers(min_value=0, max_value=2**32)
timestamps = st.one_of(
    st.floats(allow_nan=False), st.floats(min_value=0, max_value=4e9), st.just(0.0)
)
cids = st.builds(lambda gw, n: f"{gw}:{n}", st.text(max_size=6), small_ints)
event_types = st.sampled_from(list(EventType))

chat_events = st.builds(
    ChatEvent,
    type=event_types,
    text=texts,
    room=texts,
    sender=texts,
    to=texts,
    id=texts,
    ts=timestamps,
    origin=texts,
    of=st.one_of(st.just(""), event_types.map(lambda t: t.value), texts),
    code=st.one_of(st.just(""), st.sampled_from(list(ReplyCode)).map(str), texts),
    args=st.lists(texts, max_size=4).map(tuple),
)
delivers = st.builds(Deliver, cids=st.lists(cids, max_size=4).map(tuple), event=chat_events)
set_modes = st.builds(SetMode, cid=cids, json=st.booleans())
closes = st.builds(Close, cid=cids, reason=texts, departed=st.booleans())
marks = st.builds(Mark, cid=cids, seq=ints)
room_events = st.one_of(
    st.builds(RoomEvent, room=texts, seq=ints, event=chat_events),
    st.builds(RoomEvent, room=texts, seq=ints, event=chat_events, member=cids, change=st.sampled_from([-1, 1])),
)
batch_items = st.one_of(delivers, set_modes, closes, marks, room_events)
batches = st.builds(Batch, items=st.lists(batch_items, max_size=5).map(tuple))

connecteds = st.builds(Connected, cid=cids, seq=ints, addr=texts)
lines_msgs = st.builds(Lines, cid=cids, seq=ints, lines=st.lists(texts, max_size=5).map(tuple))
disconnecteds = st.builds(Disconnected, cid=cids, seq=ints, reason=texts)
gateway_losts = st.builds(GatewayLost, gateway=texts)
readies = st.builds(Ready, credit=ints)
dones = st.builds(
    Done,
    events=st.lists(st.tuples(cids, ints), max_size=4).map(tuple),
    publish=st.just(()),  # its batches travel in frames of their own (done_frames)
)
heartbeats = st.builds(Heartbeat, sender=texts, epoch=st.integers(0, (1 << 63) - 1), active=st.booleans())
unknowns = st.builds(Unknown, broker=texts)
fenceds = st.builds(Fenced, broker=texts)

messages = st.one_of(
    connecteds, lines_msgs, disconnecteds, gateway_losts, readies, dones, heartbeats, unknowns, fenceds, batches
)

EVENT = ChatEvent(
    EventType.MESSAGE, "hi", "#chat", "bob", "", "gw1:7-1", 1700000000.5, "gw1:7", ""
)
EVENT_WIRE = ["message", "hi", "#chat", "bob", "", "gw1:7-1", 1700000000.5, "gw1:7", "", "", []]

EXAMPLES: list[tuple[Message, list[Any]]] = [
    (Connected("gw1:1", 0, "127.0.0.1:5000"), [1, "gw1:1", 0, "127.0.0.1:5000"]),
    (Lines("gw1:1", 3, ("a", "b")), [2, "gw1:1", 3, ["a", "b"]]),
    (Lines("gw1:1", 4, ()), [2, "gw1:1", 4, []]),
    (Disconnected("gw1:1", 9, "eof"), [3, "gw1:1", 9, "eof"]),
    (GatewayLost("gw1"), [4, "gw1"]),
    (Ready(5), [5, 5]),
    (Done((("gw1:1", 3), ("gw2:4", 0)), ()), [6, [["gw1:1", 3], ["gw2:4", 0]]]),
    (Done((), ()), [6, []]),
    (Heartbeat("broker"), [7, "broker"]),
    (Heartbeat("broker", 3, False), [7, "broker", 3, False]),
    (Heartbeat("broker", 4, True), [7, "broker", 4, True]),
    (Unknown("broker.1"), [9, "broker.1"]),
    (Fenced("broker.1"), [10, "broker.1"]),
    (Batch(()), [8, []]),
    (
        Batch(
            (
                Mark("gw1:1", 41),
                Deliver(("gw1:1", "gw1:2"), EVENT),
                SetMode("gw1:1", True),
                SetMode("gw1:2", False),
                Close("gw1:1", "bye"),
                Close("gw1:2", "quit", departed=True),
                Mark("gw1:2", 0),
                RoomEvent("#r", 7, EVENT),
                RoomEvent("#r", 8, EVENT, "gw1:2", -1),
            )
        ),
        [
            8,
            [
                [3, "gw1:1", 41],
                [0, ["gw1:1", "gw1:2"], EVENT_WIRE],
                [1, "gw1:1", True],
                [1, "gw1:2", False],
                [2, "gw1:1", "bye", False],
                [2, "gw1:2", "quit", True],
                [3, "gw1:2", 0],
                [4, "#r", 7, "", 0, EVENT_WIRE],
                [4, "#r", 8, "gw1:2", -1, EVENT_WIRE],
            ],
        ],
    ),
]


def pack(obj: Any) -> bytes:
    return msgpack.packb(obj, use_bin_type=True)


def event_wire(**changes: Any) -> list[Any]:
    fields = ["type", "text", "room", "sender", "to", "id", "ts", "origin", "of", "code", "args"]
    wire = list(EVENT_WIRE)
    for key, value in changes.items():
        wire[fields.index(key)] = value
    return wire


# --- round trips and the documented layout ------------------------------------------


@pytest.mark.parametrize(("msg", "wire"), EXAMPLES, ids=lambda x: type(x).__name__)
def test_wire_layout_matches_the_docstring(msg: Message, wire: list[Any]) -> None:
    assert to_wire(msg) == wire
    assert msgpack.unpackb(encode(msg), raw=False) == wire


@pytest.mark.parametrize(("msg", "wire"), EXAMPLES, ids=lambda x: type(x).__name__)
def test_examples_round_trip(msg: Message, wire: list[Any]) -> None:
    assert decode(encode(msg)) == msg
    assert decode(pack(wire)) == msg


def test_a_done_travels_as_its_frame_then_topic_and_batch_frames_untouched() -> None:
    done = Done((("c", 1),), (("g", b"\x01"), ("h.2", b"\xc1 not msgpack")))
    frames = done_frames(done)
    # fixarray(2) 6 [[fixstr "c", 1]]
    assert frames == [bytes.fromhex("92 06 91 92 a1 63 01"), b"g:", b"\x01", b"h.2:", b"\xc1 not msgpack"]
    assert decode_done(frames) == done
    assert decode_done(frames[:1]) == Done((("c", 1),), ())


@pytest.mark.parametrize("frames", [
    [],
    [encode(Ready(1)), b"g:", b"x"],  # not a Done
    [encode(Done((), ())), b"g:"],  # a topic without its batch
    [encode(Done((), ())), b"g", b"x"],  # not a topic
    [encode(Done((), ())), b"", b"x"],
    [encode(Done((), ())), b"a:b:", b"x"],
    [encode(Done((), ())), b"\xff:", b"x"],
    [b"\xc1", b"g:", b"x"],
])
def test_malformed_done_frames_raise_decode_error(frames: list[bytes]) -> None:
    with pytest.raises(DecodeError):
        decode_done(frames)


def test_an_event_travels_as_its_key_then_its_body() -> None:
    event = Lines("gw1:7", 300, ("hi",))
    key, body = event_frames(event)
    assert key == (300).to_bytes(8, "big") + b"gw1:7"
    assert decode_key(key) == ("gw1:7", 300) and decode(body) == event
    assert decode_key(event_frames(GatewayLost("gw1"))[0]) == ("!gw1", 0)


@pytest.mark.parametrize("frame", [
    b"", b"\0" * 8, b"\0" * 7 + b"a", b"\0" * 8 + b"\xff", b"\0" * 8 + b"a" * (MAX_KEY_BYTES - 7),
])
def test_malformed_keys_raise_decode_error(frame: bytes) -> None:
    with pytest.raises(DecodeError):
        decode_key(frame)


@FAST
@given(cids, st.integers(0, 2**63 - 1), st.booleans())
def test_property_keys_round_trip(cid: str, seq: int, sampled: bool) -> None:
    key = encode_key(cid, seq, sampled)
    assert is_sampled(key) is sampled
    if len(key) > MAX_KEY_BYTES:
        with pytest.raises(DecodeError):
            decode_key(key)
    else:
        assert decode_key(key) == (cid, seq)


def test_a_sampled_key_names_the_same_event_and_only_its_flag_differs() -> None:
    plain, body = event_frames(Lines("gw1:7", 300, ("hi",)))
    flagged = sampled_key(plain)
    assert flagged != plain and flagged[1:] == plain[1:]
    assert decode_key(flagged) == decode_key(plain) == ("gw1:7", 300)
    assert is_sampled(flagged) and not is_sampled(plain) and not is_sampled(b"")
    assert event_frames(Lines("gw1:7", 300, ("hi",)), sampled=True) == [flagged, body]


def test_a_seq_at_the_flag_bit_does_not_decode_as_itself() -> None:
    """A key claiming seq 2**63 + 5 is seq 5, sampled: a worker then finds its body (seq 2**63 + 5)
    names another event, and refuses it as any forgery."""
    key = (2**63 + 5).to_bytes(8, "big") + b"gw1:7"
    assert decode_key(key) == ("gw1:7", 5) and is_sampled(key)


@FAST
@given(st.binary(max_size=40))
def test_property_decode_key_of_arbitrary_bytes_raises_only_decode_error(frame: bytes) -> None:
    if len(frame) <= 8:
        with pytest.raises(DecodeError):
            decode_key(frame)
        return
    try:
        cid, seq = decode_key(frame)
    except DecodeError:
        return
    assert encode_key(cid, seq, is_sampled(frame)) == frame


@pytest.mark.parametrize("kind", list(EventType))
def test_every_event_type_round_trips(kind: EventType) -> None:
    event = ChatEvent(kind, "t", "#r", "s", "to", "id", 12.25, "gw:1", "message")
    batch = Batch((Deliver(("gw:1",), event),))
    decoded = decode(encode(batch))
    assert decoded == batch
    assert isinstance(decoded, Batch)
    item = decoded.items[0]
    assert isinstance(item, Deliver)
    assert item.event.type is kind


def test_code_and_args_round_trip_at_the_end_of_the_event() -> None:
    event = ChatEvent(EventType.INFO, "you joined #a (1 here: al)", code=ReplyCode.JOINED, args=("#a", "", "al"))
    wire = to_wire(Batch((Deliver(("c:1",), event),)))
    assert wire[1][0][2][-2:] == ["joined", ["#a", "", "al"]]
    assert decode(encode(Batch((Deliver(("c:1",), event),)))) == Batch((Deliver(("c:1",), event),))


def test_an_unknown_code_decodes_as_is() -> None:
    msg = decode(pack([8, [[0, ["c:1"], event_wire(code="from_the_future", args=["x"])]]]))
    assert isinstance(msg, Batch) and isinstance(msg.items[0], Deliver)
    assert msg.items[0].event.code == "from_the_future" and msg.items[0].event.args == ("x",)


def test_default_chat_event_round_trips() -> None:
    batch = Batch((Deliver((), ChatEvent(EventType.INFO)),))
    assert decode(encode(batch)) == batch


def test_integer_ts_on_the_wire_decodes_as_float() -> None:
    msg = decode(pack([8, [[0, ["c:1"], event_wire(ts=1700000000)]]]))
    assert isinstance(msg, Batch)
    item = msg.items[0]
    assert isinstance(item, Deliver)
    assert item.event.ts == 1700000000.0
    assert type(item.event.ts) is float


def test_extreme_integers_round_trip() -> None:
    for n in (-(2**63), -1, 0, 2**32, 2**64 - 1):
        assert decode(encode(Ready(n))) == Ready(n)
        assert decode(encode(Batch((Mark("c:1", n),)))) == Batch((Mark("c:1", n),))
        assert decode(encode(Connected("c:1", n, ""))) == Connected("c:1", n, "")


def test_non_ascii_strings_round_trip() -> None:
    msg = Lines("gw-é:1", 1, ("héllo", "你好", "☕", ""))
    assert decode(encode(msg)) == msg


def test_to_wire_rejects_non_messages() -> None:
    with pytest.raises(TypeError):
        to_wire(EVENT)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        to_wire(object())  # type: ignore[arg-type]


@FAST
@given(messages)
def test_property_every_message_round_trips(msg: Message) -> None:
    frame = encode(msg)
    assert isinstance(frame, bytes)
    decoded = decode(frame)
    assert type(decoded) is type(msg)
    assert decoded == msg
    assert encode(decoded) == frame


@FAST
@given(batches)
def test_property_batches_round_trip(batch: Batch) -> None:
    assert decode(encode(batch)) == batch


@FAST
@given(chat_events)
def test_property_every_chat_event_round_trips(event: ChatEvent) -> None:
    batch = Batch((Deliver(("gw:1",), event),))
    assert decode(encode(batch)) == batch


# --- decode: bad input raises DecodeError only -----------------------------------------


def test_decode_error_is_a_protocol_error() -> None:
    assert issubclass(DecodeError, ProtocolError)


@pytest.mark.parametrize(
    "frame",
    [
        b"",
        b"\xc1",  # never used in msgpack
        b"\x92\x05",  # array of 2, one item missing
        b"\xdd\xff\xff\xff\xff",  # array32 announcing 4G items
        b"\xda\xff\xff",  # str16 announcing 64K bytes
        b"\x91" * 5000,  # nesting deeper than the unpacker allows
        b"\x81\x01\x02",  # map with an int key
        b"\xd4\xff\x00",  # a malformed timestamp ext
        b"\x92\x07\xa2\xff\xfe",  # a str that is not UTF-8
        encode(Ready(1)) + b"\x00",  # trailing data
    ],
    ids=lambda b: b[:12].hex() or "empty",
)
def test_not_msgpack(frame: bytes) -> None:
    with pytest.raises(DecodeError):
        decode(frame)


@pytest.mark.parametrize(
    "obj",
    [
        None,
        5,
        "hello",
        b"bytes",
        {"type": 5},
        [],
        ["5", 1],
        [True, "x"],  # a bool is not a tag
        [5.0, 1],
        [None],
        [[5], 1],
    ],
    ids=repr,
)
def test_not_a_tagged_array(obj: Any) -> None:
    with pytest.raises(DecodeError):
        decode(pack(obj))


@pytest.mark.parametrize("tag", [-1, 0, 11, 12, 255, 2**40])
def test_unknown_tag(tag: int) -> None:
    with pytest.raises(DecodeError):
        decode(pack([tag, "x"]))


@pytest.mark.parametrize(("msg", "wire"), EXAMPLES, ids=lambda x: type(x).__name__)
def test_wrong_arity_for_every_tag(msg: Message, wire: list[Any]) -> None:
    with pytest.raises(DecodeError):
        decode(pack(wire[:-1]))
    with pytest.raises(DecodeError):
        decode(pack([*wire, "extra"]))
    with pytest.raises(DecodeError):
        decode(pack(wire[:1]))


@pytest.mark.parametrize(("msg", "wire"), EXAMPLES, ids=lambda x: type(x).__name__)
def test_every_truncation_of_a_frame(msg: Message, wire: list[Any]) -> None:
    frame = encode(msg)
    for end in range(len(frame)):
        with pytest.raises(DecodeError):
            decode(frame[:end])


WRONG_FIELD_TYPES: list[Any] = [
    # Connected
    [1, 7, 0, "addr"],
    [1, "c:1", "0", "addr"],
    [1, "c:1", 0.0, "addr"],
    [1, "c:1", True, "addr"],
    [1, "c:1", 0, None],
    [1, b"c:1", 0, "addr"],
    # Lines
    [2, "c:1", 0, "not a list"],
    [2, "c:1", 0, ["ok", 5]],
    [2, "c:1", 0, ["ok", b"bytes"]],
    [2, "c:1", 0, {"a": "b"}],
    [2, "c:1", None, []],
    # Disconnected
    [3, "c:1", 0, 5],
    [3, None, 0, "eof"],
    # GatewayLost
    [4, 4],
    [4, ["gw"]],
    # Ready
    [5, "5"],
    [5, 5.0],
    [5, False],
    [5, None],
    # Done
    [6, "events"],
    [6, [], []],  # the publish list of before: batches travel in frames of their own now
    [6, [["c:1"]]],
    [6, [["c:1", 1, 2]]],
    [6, [["c:1", "1"]]],
    [6, [[1, 1]]],
    [6, ["c:1"]],
    # Heartbeat
    [7, 7],
    [7, None],
    [7, "b", -1, True],  # an epoch is never negative
    [7, "b", 1 << 63, True],  # nor beyond Redis's counter
    [7, "b", "1", True],
    [7, "b", 1, 1],  # active is a bool
    [7, "b", 1],
    # Batch
    [8, "items"],
    [8, {"a": "b"}],
    [8, [5]],
    [8, [[]]],
    [8, [[4, "c:1", "x"]]],
    [8, [[-1, "c:1", "x"]]],
    [8, [["0", ["c:1"], EVENT_WIRE]]],
    [8, [[None, "c:1", "x"]]],
    # Deliver
    [8, [[0, ["c:1"]]]],
    [8, [[0, ["c:1"], EVENT_WIRE, "extra"]]],
    [8, [[0, "c:1", EVENT_WIRE]]],
    [8, [[0, [1], EVENT_WIRE]]],
    [8, [[0, ["c:1"], "event"]]],
    [8, [[0, ["c:1"], EVENT_WIRE[:-1]]]],
    [8, [[0, ["c:1"], [*EVENT_WIRE, ""]]]],
    [8, [[0, ["c:1"], event_wire(type="shout")]]],
    [8, [[0, ["c:1"], event_wire(type="MESSAGE")]]],
    [8, [[0, ["c:1"], event_wire(type=1)]]],
    [8, [[0, ["c:1"], event_wire(type=["message"])]]],
    [8, [[0, ["c:1"], event_wire(type=None)]]],
    [8, [[0, ["c:1"], event_wire(text=1)]]],
    [8, [[0, ["c:1"], event_wire(room=None)]]],
    [8, [[0, ["c:1"], event_wire(sender=b"bob")]]],
    [8, [[0, ["c:1"], event_wire(to=[])]]],
    [8, [[0, ["c:1"], event_wire(id=5)]]],
    [8, [[0, ["c:1"], event_wire(ts="now")]]],
    [8, [[0, ["c:1"], event_wire(ts=None)]]],
    [8, [[0, ["c:1"], event_wire(ts=True)]]],
    [8, [[0, ["c:1"], event_wire(origin=0)]]],
    [8, [[0, ["c:1"], event_wire(of=False)]]],
    [8, [[0, ["c:1"], event_wire(code=None)]]],
    [8, [[0, ["c:1"], event_wire(code=7)]]],
    [8, [[0, ["c:1"], event_wire(args="nick")]]],
    [8, [[0, ["c:1"], event_wire(args=[1])]]],
    [8, [[0, ["c:1"], event_wire(args=None)]]],
    [8, [[0, ["c:1"], EVENT_WIRE[:9]]]],  # the layout before code and args
    # SetMode
    [8, [[1, "c:1", 1]]],
    [8, [[1, "c:1", "true"]]],
    [8, [[1, "c:1", None]]],
    [8, [[1, 5, True]]],
    [8, [[1, "c:1"]]],
    [8, [[1, "c:1", True, True]]],
    # Close
    [8, [[2, "c:1", 5, False]]],
    [8, [[2, None, "bye", False]]],
    [8, [[2, "c:1"]]],
    [8, [[2, "c:1", "bye", 1]]],
    [8, [[2, "c:1", "bye", 0]]],
    [8, [[2, "c:1", "bye", None]]],
    [8, [[2, "c:1", "bye", "true"]]],
    [8, [[2, "c:1", "bye", True, True]]],
    # Mark
    [8, [[3, "c:1", "x"]]],
    [8, [[3, "c:1", 1.0]]],
    [8, [[3, "c:1", True]]],
    [8, [[3, "c:1", None]]],
    [8, [[3, 1, 1]]],
    [8, [[3, "c:1"]]],
    [8, [[3, "c:1", 1, 2]]],
    # one bad item spoils the batch
    [8, [[2, "c:1", "bye", False], [2, "c:1", None, False]]],
]


@pytest.mark.parametrize("obj", WRONG_FIELD_TYPES, ids=repr)
def test_wrong_field_types(obj: Any) -> None:
    frame = pack(obj)
    with pytest.raises(DecodeError):
        decode(frame)


@pytest.mark.parametrize(
    "obj",
    [
        [8, [[False, ["c:1"], EVENT_WIRE]]],
        [8, [[True, "c:1", True]]],
        [8, [[0.0, ["c:1"], EVENT_WIRE]]],
        [8, [[2.0, "c:1", "bye", True]]],
        [8, [[3.0, "c:1", 5]]],
    ],
    ids=repr,
)
def test_batch_item_tag_must_be_an_int(obj: Any) -> None:
    with pytest.raises(DecodeError):
        decode(pack(obj))


# a nested value strategy: anything msgpack can carry
msgpack_values = st.recursive(
    st.one_of(
        st.none(),
        st.booleans(),
        st.integers(min_value=-(2**63), max_value=2**64 - 1),
        st.floats(),
        st.text(max_size=8),
        st.binary(max_size=8),
    ),
    lambda children: st.one_of(
        st.lists(children, max_size=5),
        st.dictionaries(st.text(max_size=4), children, max_size=3),
    ),
    max_leaves=20,
)
# arrays that start with a real tag, to get past the first check (batches too)
tagged = st.builds(
    lambda tag, rest: [tag, *rest],
    st.integers(0, 9),
    st.lists(msgpack_values, max_size=4),
)
tagged_batches = st.builds(
    lambda items: [8, items],
    st.lists(
        st.builds(lambda tag, rest: [tag, *rest], st.integers(-1, 5), st.lists(msgpack_values, max_size=3)),
        max_size=3,
    ),
)


def decodes_or_decode_error(frame: bytes) -> None:
    try:
        msg = decode(frame)
    except DecodeError:
        return
    # whatever decodes is a proper message that encodes again
    assert decode(encode(msg)) == msg or _has_nan(msg)


def _has_nan(msg: Message) -> bool:
    if not isinstance(msg, Batch):
        return False
    return any(
        isinstance(item, Deliver) and item.event.ts != item.event.ts for item in msg.items
    )


@FAST
@given(st.binary(max_size=200))
def test_property_decode_of_arbitrary_bytes_raises_only_decode_error(frame: bytes) -> None:
    decodes_or_decode_error(frame)


@FAST
@given(st.one_of(msgpack_values, tagged, tagged_batches))
def test_property_decode_of_arbitrary_msgpack_raises_only_decode_error(obj: Any) -> None:
    decodes_or_decode_error(pack(obj))


@FAST
@given(messages, st.data())
def test_property_corrupted_frames_raise_only_decode_error(msg: Message, data: st.DataObject) -> None:
    frame = bytearray(encode(msg))
    for _ in range(data.draw(st.integers(1, 4))):
        at = data.draw(st.integers(0, len(frame) - 1))
        frame[at] = data.draw(st.integers(0, 255))
    decodes_or_decode_error(bytes(frame))


@FAST
@given(messages, st.data())
def test_property_truncated_frames_raise_decode_error(msg: Message, data: st.DataObject) -> None:
    frame = encode(msg)
    end = data.draw(st.integers(0, len(frame) - 1))
    with pytest.raises(DecodeError):
        decode(frame[:end])


# --- messages helpers --------------------------------------------------------------------


def test_gateway_of() -> None:
    assert gateway_of("gw1:12") == "gw1"
    assert gateway_of("host:9000:3") == "host:9000"
    assert gateway_of("gw1:") == "gw1"


@FAST
@given(st.text(max_size=10), small_ints)
def test_property_gateway_of_recovers_the_gateway(gateway: str, n: int) -> None:
    assert gateway_of(f"{gateway}:{n}") == gateway


def test_event_key() -> None:
    assert event_key(Connected("gw1:1", 0, "addr")) == ("gw1:1", 0)
    assert event_key(Lines("gw1:1", 5, ("x",))) == ("gw1:1", 5)
    assert event_key(Disconnected("gw1:2", 9, "eof")) == ("gw1:2", 9)
    assert event_key(GatewayLost("gw1")) == ("!gw1", 0)


def test_topic_of_does_not_let_a_gateway_prefix_match_another() -> None:
    assert topic_of("gw1") == b"gw1:"
    assert not topic_of("gw10").startswith(topic_of("gw1"))


def test_messages_are_frozen_and_slotted() -> None:
    msg = Ready(1)
    with pytest.raises(AttributeError):
        msg.credit = 2  # type: ignore[misc]
    assert not hasattr(msg, "__dict__")
    assert not hasattr(EVENT, "__dict__")


@pytest.mark.parametrize("wire", [
    [4, "#r", 1, "", 1, EVENT_WIRE],  # a change without a member
    [4, "#r", 1, "gw1:1", 0, EVENT_WIRE],  # a member without a change
    [4, "#r", 1, "gw1:1", 2, EVENT_WIRE],
    [4, "#r", 1, "gw1:1", True, EVENT_WIRE],
    [4, "#r", "1", "", 0, EVENT_WIRE],
    [4, b"#r", 1, "", 0, EVENT_WIRE],
    [4, "#r", 1, "", 0, [1]],
    [4, "#r", 1, "", 0],
])
def test_malformed_room_events_are_refused(wire: list[Any]) -> None:
    with pytest.raises(DecodeError):
        decode(pack([8, [wire]]))


def test_a_close_without_departed_is_one_that_did_not_depart() -> None:
    """The form outside publishers wrote before `departed`: the gateway still sends the departure."""
    assert decode(pack([8, [[2, "gw1:3", "kicked"]]])) == Batch((Close("gw1:3", "kicked", departed=False),))


def test_a_numbered_heartbeat_round_trips_and_the_plain_forms_keep_their_bytes() -> None:
    numbered = Heartbeat("gw1.a", 0, True, 42)
    assert msgpack.unpackb(encode(numbered)) == [7, "gw1.a", 0, True, 42]
    assert decode(encode(numbered)) == numbered
    assert msgpack.unpackb(encode(Heartbeat("b"))) == [7, "b"]  # as before: older peers read them
    assert msgpack.unpackb(encode(Heartbeat("b", 3, False))) == [7, "b", 3, False]


@pytest.mark.parametrize("beat", [-1, 2**63, "7", 1.5, None, [1]])
def test_a_heartbeat_with_a_bad_number_is_refused(beat: object) -> None:
    with pytest.raises(DecodeError, match="expected a heartbeat number"):
        decode(msgpack.packb([7, "gw1.a", 0, True, beat]))
