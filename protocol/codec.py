"""Messages <-> frames (msgpack), and the small frames the broker routes on.

The broker routes without reading bodies: what it routes on travels in
frames of its own, and bodies pass through it untouched.

    gateway -> broker (DEALER frames):  [key, event, key, event, ...]  Connected, Lines, Disconnected:
                                                        1 to 64 events (stack.frames.MAX_EVENTS)
                                        [control]       Heartbeat
    broker -> worker:                   [control]       Heartbeat, Unknown
                                        [Heartbeat, key, event, key, event, ...]  a dispatch
    worker -> broker:                   [control]       Ready, Heartbeat
                                        [Done, topic, batch, topic, batch, ...]
    broker -> gateway:                  [control]       Heartbeat, Fenced

`key` is an event's unique ID (cid, seq) as bytes: `seq` in 8 bytes,
big-endian, then `cid` in UTF-8 (at most MAX_KEY_BYTES in all). The top bit
of those 8 bytes flags an event sampled for per-hop times (protocol.hops);
it is no part of the seq. A worker
takes an event only if its key and its body name the same event (the broker
checked the key's cid against the sending gateway, not the body's).
`topic` is a gateway's pub-out topic (`<gateway>:`) and `batch` the Batch
frame the broker publishes under it, as the worker encoded it.

Every body and control frame is a msgpack array whose first element is its tag:

    [1, cid, seq, addr]                 Connected
    [2, cid, seq, [line, ...]]          Lines
    [3, cid, seq, reason]               Disconnected
    [4, gateway]                        GatewayLost
    [5, credit]                         Ready
    [6, [[cid, seq], ...]]              Done (its topics and batches follow in frames of their own)
    [7, sender]                         Heartbeat (epoch 0, active: a broker without a lease)
    [7, sender, epoch, active]          Heartbeat of a broker of a pair (its lease's epoch)
    [7, sender, epoch, active, beat]    Heartbeat between a gateway and a broker: the gateway's number
                                        for it, or the last number the broker heard from that gateway
    [9, broker]                         Unknown
    [10, broker]                        Fenced
    [8, [item, ...]]                    Batch, whose items are
        [0, [cid, ...], [type, text, room, sender, to, id, ts, origin, of, code, [arg, ...]]]
        [1, cid, json]                                                   SetMode
        [2, cid, reason, departed]                                       Close
        [2, cid, reason]                                                 Close, not departed (the
                                                                         form outside publishers
                                                                         wrote before `departed`)
        [3, cid, seq]                                                    Mark
        [4, room, seq, member, change, event]                            RoomEvent

`code` is a `protocol.replies.ReplyCode` value or '' (a code unknown to
this version decodes as is and is shown as free text); `args` its data.
Strings are UTF-8 msgpack str. `decode`, `decode_key` and `decode_done`
check every field's type and raise only `DecodeError`: a malformed frame
from any peer is reported, never a crash.
Arrays decode as tuples (a message's tuple fields take them as they come),
and a decoded message is built through `maker` once its fields are checked.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import fields
from operator import attrgetter
from typing import Any

import msgpack

from protocol.errors import DecodeError
from protocol.hops import SAMPLED_BIT
from protocol.messages import (
    MAX_EPOCH,
    Batch,
    BatchItem,
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
    WorkItem,
    event_key,
    is_gateway_topic,
    maker,
    topic_of,
)

MAX_KEY_BYTES = 8 + 256  # a key frame: seq and a cid (a gateway name is at most 128 bytes)
_SEQ_MASK = (1 << 63) - 1  # a key's seq without the sampled flag


def _type_name(value: Any) -> str:
    """The type of a decoded value, as errors name it: an array is a list (we decode arrays as tuples)."""
    return "list" if type(value) is tuple else type(value).__name__


def _str(value: Any) -> str:
    if type(value) is not str:
        raise DecodeError(f"expected str, got {_type_name(value)}")
    return value


def _int(value: Any) -> int:
    if type(value) is not int:
        raise DecodeError(f"expected int, got {_type_name(value)}")
    return value


def _bool(value: Any) -> bool:
    if type(value) is not bool:
        raise DecodeError(f"expected bool, got {_type_name(value)}")
    return value


def _counter(value: Any, what: str) -> int:
    """An int from 0 to MAX_EPOCH (an epoch, a heartbeat number); errors say `what` it should be."""
    if type(value) is not int or not 0 <= value <= MAX_EPOCH:
        raise DecodeError(f"expected {what} (an int from 0 to 2**63-1)")
    return value


def _epoch(value: Any) -> int:
    return _counter(value, "an epoch")


def _beat(value: Any) -> int:
    """A gateway's heartbeat number."""
    return _counter(value, "a heartbeat number")


def _strs(value: Any) -> tuple[str, ...]:
    """An array of str. A room's worth of cids is on the hot path: str.join checks every item in C
    (msgpack makes no str subclass, so each item it takes is a str)."""
    if type(value) is tuple:
        try:
            "".join(value)
        except TypeError:
            pass
        else:
            return value
    raise DecodeError("expected an array of str")


def _list(value: Any, size: int | None = None) -> tuple[Any, ...]:
    if type(value) is not tuple or (size is not None and len(value) != size):
        raise DecodeError(f"expected an array of {size or 'any'} items")
    return value


def _event_to_wire(e: ChatEvent) -> list[Any]:
    # the type as is: an EventType is a str, and msgpack packs it as one (no `.value` look-up)
    return [e.type, e.text, e.room, e.sender, e.to, e.id, e.ts, e.origin, e.of, e.code, list(e.args)]


# `_event_to_wire` as the encoders' hot loop takes it: the fields in the wire's order (the class's own),
# read in C into a tuple, which msgpack packs as the array the list makes
_event_fields: Callable[[ChatEvent], tuple[Any, ...]] = attrgetter(*(f.name for f in fields(ChatEvent)))


_EVENT_TYPES = {kind.value: kind for kind in EventType}  # a dict look-up, not an enum call: once per room event
_new_event = maker(ChatEvent)  # the decoders' constructors: every field checked already, in order
_new_room_event = maker(RoomEvent)
_new_deliver = maker(Deliver)
_new_mark = maker(Mark)


def _event_from_wire(raw: Any) -> ChatEvent:
    if type(raw) is not tuple or len(raw) != 11:
        _list(raw, 11)  # raises
    t, text, room, sender, to, id_, ts, origin, of, code, args = raw
    kind = _EVENT_TYPES.get(t) if type(t) is str else None
    if kind is None:  # an array shown as msgpack has always given them to us, a list
        raise DecodeError(f"unknown event type {list(t) if type(t) is tuple else t!r}")
    if type(ts) is not float:
        if type(ts) is not int:
            raise DecodeError("expected a number for ts")
        ts = float(ts)
    if not (type(text) is str and type(room) is str and type(sender) is str and type(to) is str
            and type(id_) is str and type(origin) is str and type(of) is str and type(code) is str):
        for value in (text, room, sender, to, id_, origin, of, code):
            _str(value)  # raises, saying which type came
    return _new_event(kind, text, room, sender, to, id_, ts, origin, of, code, args if args == () else _strs(args))


def _item_to_wire(item: BatchItem) -> list[Any]:
    if isinstance(item, Deliver):
        return [0, list(item.cids), _event_to_wire(item.event)]
    if isinstance(item, SetMode):
        return [1, item.cid, item.json]
    if isinstance(item, Mark):
        return [3, item.cid, item.seq]
    if isinstance(item, RoomEvent):
        return [4, item.room, item.seq, item.member, item.change, _event_to_wire(item.event)]
    return [2, item.cid, item.reason, item.departed]


def _room_event(fields: tuple[Any, ...]) -> RoomEvent:
    _, room, seq, member, change, event = fields
    if type(room) is str and type(seq) is int and type(member) is str and type(change) is int and (
            change == 0 if member == "" else change in (-1, 1)):
        return _new_room_event(room, seq, _event_from_wire(event), member, change)
    # something is wrong: find it in the order the checks have always run
    if _int(change) not in (-1, 0, 1) or (change != 0) != (member != ""):
        raise DecodeError("a room event's change is -1 or 1 with a member, 0 without")
    return RoomEvent(_str(room), _int(seq), _event_from_wire(event), _str(member), change)


def _item_from_wire(raw: Any) -> BatchItem:
    fields = raw if type(raw) is tuple else _list(raw)
    if len(fields) == 6 and fields[0] == 4 and type(fields[0]) is int:
        return _room_event(fields)
    if len(fields) == 4 and fields[0] == 2 and type(fields[0]) is int:
        return Close(_str(fields[1]), _str(fields[2]), _bool(fields[3]))
    if len(fields) != 3 or type(fields[0]) is not int:
        raise DecodeError("a batch item is [tag, field, field], [2, ...] with 2 or 3 fields or [4, ...] with 5")
    if fields[0] == 3:
        return _new_mark(_str(fields[1]), _int(fields[2]))
    if fields[0] == 0:
        return _new_deliver(_strs(fields[1]), _event_from_wire(fields[2]))
    if fields[0] == 2:
        return Close(_str(fields[1]), _str(fields[2]))
    if fields[0] == 1 and type(fields[2]) is bool:
        return SetMode(_str(fields[1]), fields[2])
    raise DecodeError("unknown batch item")


def to_wire(msg: Message) -> list[Any]:
    """The msgpack-ready array for `msg` (see the module docstring)."""
    match msg:
        case Connected(cid, seq, addr):
            return [1, cid, seq, addr]
        case Lines(cid, seq, lines):
            return [2, cid, seq, list(lines)]
        case Disconnected(cid, seq, reason):
            return [3, cid, seq, reason]
        case GatewayLost(gateway):
            return [4, gateway]
        case Ready(credit):
            return [5, credit]
        case Done(events, _):
            return [6, [list(e) for e in events]]
        case Heartbeat(sender, 0, True, None):
            return [7, sender]
        case Heartbeat(sender, epoch, active, None):
            return [7, sender, epoch, active]
        case Heartbeat(sender, epoch, active, beat):
            return [7, sender, epoch, active, beat]
        case Batch(items):
            return [8, [_item_to_wire(i) for i in items]]
        case Unknown(broker):
            return [9, broker]
        case Fenced(broker):
            return [10, broker]
    raise TypeError(f"not a message: {msg!r}")


def _done(events: Any) -> Done:
    return Done(tuple((_str(c), _int(s)) for c, s in (_list(e, 2) for e in _list(events))), ())


_DECODERS: dict[tuple[int, int], Callable[..., Message]] = {
    (1, 3): lambda c, s, a: Connected(_str(c), _int(s), _str(a)),
    (2, 3): lambda c, s, ls: Lines(_str(c), _int(s), _strs(ls)),
    (3, 3): lambda c, s, r: Disconnected(_str(c), _int(s), _str(r)),
    (4, 1): lambda g: GatewayLost(_str(g)),
    (5, 1): lambda n: Ready(_int(n)),
    (6, 1): _done,
    (7, 1): lambda s: Heartbeat(_str(s)),
    (7, 3): lambda s, e, a: Heartbeat(_str(s), _epoch(e), _bool(a)),
    (7, 4): lambda s, e, a, b: Heartbeat(_str(s), _epoch(e), _bool(a), _beat(b)),
    (8, 1): lambda items: Batch(tuple(map(_item_from_wire, _list(items)))),
    (9, 1): lambda b: Unknown(_str(b)),
    (10, 1): lambda b: Fenced(_str(b)),
}


def encode(msg: Message) -> bytes:
    return msgpack.packb(to_wire(msg), use_bin_type=True)


def encode_batches(batches: Iterable[tuple[str, Sequence[BatchItem]]]) -> tuple[tuple[str, bytes], ...]:
    """(gateway, items) pairs -> (gateway, the bytes `encode(Batch(items))` makes) pairs. The event of
    a delivery or a room event that goes to several gateways is made ready for msgpack once."""
    batches = tuple(batches)
    # events by id, all alive until we return; with one batch, no event is seen twice
    wired: dict[int, tuple[Any, ...]] | None = {} if len(batches) > 1 else None
    pack = msgpack.Packer(use_bin_type=True).pack  # one packer for all the batches
    return tuple((gateway, pack((8, _batch_to_wire(items, wired)))) for gateway, items in batches)


def _batch_to_wire(items: Sequence[BatchItem], wired: dict[int, tuple[Any, ...]] | None) -> list[Any]:
    """The items of a batch ready for msgpack (tuples pack as arrays); one loop, no Python call per item
    on the hot kinds: a worker encodes every item of every event."""
    wire: list[Any] = []
    append, fields_of = wire.append, _event_fields
    for i in items:
        kind = type(i)
        if kind is RoomEvent or kind is Deliver:
            event = i.event  # type: ignore[union-attr]
            if wired is None:
                shown = fields_of(event)
            else:
                shown = wired.get(id(event))  # type: ignore[assignment]
                if shown is None:
                    shown = wired[id(event)] = fields_of(event)
            if kind is RoomEvent:
                append((4, i.room, i.seq, i.member, i.change, shown))  # type: ignore[union-attr]
            else:
                append((0, i.cids, shown))  # type: ignore[union-attr]
        elif kind is Mark:
            append((3, i.cid, i.seq))  # type: ignore[union-attr]
        else:
            append(_item_to_wire(i))
    return wire


def decode(frame: bytes) -> Message:
    """One frame -> a message; raises DecodeError for anything malformed."""
    try:
        raw = msgpack.unpackb(frame, raw=False, use_list=False)
    except (ValueError, TypeError, msgpack.ExtraData, msgpack.FormatError,
            msgpack.StackError, UnicodeDecodeError) as exc:
        raise DecodeError(f"not msgpack: {exc}") from None
    if type(raw) is not tuple or not raw or type(raw[0]) is not int:
        raise DecodeError("not a tagged array")
    decoder = _DECODERS.get((raw[0], len(raw) - 1))
    if decoder is None:
        raise DecodeError(f"unknown message tag {raw[0]} with {len(raw) - 1} fields")
    try:
        return decoder(*raw[1:])
    except (TypeError, ValueError) as exc:  # wrong arity inside nested arrays
        raise DecodeError(f"malformed message: {exc}") from None


def encode_key(cid: str, seq: int, sampled: bool = False) -> bytes:
    """The key frame of event (cid, seq): what the broker routes it on (`sampled`: timed per hop)."""
    key = seq.to_bytes(8, "big") + cid.encode()
    return sampled_key(key) if sampled else key


def sampled_key(key: bytes) -> bytes:
    """The same key, flagged as a sampled event's."""
    return bytes((key[0] | SAMPLED_BIT,)) + key[1:]


def decode_key(frame: bytes) -> tuple[str, int]:
    """A key frame -> (cid, seq); raises DecodeError for anything malformed."""
    if not 8 < len(frame) <= MAX_KEY_BYTES:
        raise DecodeError(f"a key is 9 to {MAX_KEY_BYTES} bytes, not {len(frame)}")
    try:
        cid = frame[8:].decode()
    except UnicodeDecodeError:
        raise DecodeError("a key's cid is not UTF-8") from None
    return cid, int.from_bytes(frame[:8], "big") & _SEQ_MASK


def event_frames(item: WorkItem, sampled: bool = False) -> list[bytes]:
    """An event as it travels to the broker and on to a worker: [key, body]."""
    return [encode_key(*event_key(item), sampled), encode(item)]


def done_frames(done: Done) -> list[bytes]:
    """A Done as it travels to the broker: [Done, topic, batch, ...]."""
    frames = [encode(done)]
    for gateway, batch in done.publish:
        frames += [topic_of(gateway), batch]
    return frames


def decode_done(frames: list[bytes]) -> Done:
    """[Done, topic, batch, ...] -> the Done, its batches untouched; DecodeError if malformed."""
    done = decode(frames[0]) if len(frames) % 2 == 1 else None
    if type(done) is not Done:
        raise DecodeError("a Done is its frame and (topic, batch) pairs")
    if len(frames) == 1:
        return done
    publish = []
    for at in range(1, len(frames), 2):
        topic = frames[at]
        if not is_gateway_topic(topic):
            raise DecodeError("a Done names a topic that is not one gateway's")
        publish.append((topic[:-1].decode(), frames[at + 1]))
    return Done(done.events, tuple(publish))
