"""Messages <-> bytes (msgpack), one frame per message.

Every message is a msgpack array whose first element is its tag:

    [1, cid, seq, addr]                 Connected
    [2, cid, seq, [line, ...]]          Lines
    [3, cid, seq, reason]               Disconnected
    [4, gateway]                        GatewayLost
    [5, credit]                         Ready
    [6, [[cid, seq], ...], [[gateway, batch_bytes], ...]]   Done
    [7, sender]                         Heartbeat (epoch 0, active: a broker without a lease)
    [7, sender, epoch, active]          Heartbeat of a broker of a pair (its lease's epoch)
    [9, broker]                         Unknown
    [10, broker]                        Fenced
    [8, [item, ...]]                    Batch, whose items are
        [0, [cid, ...], [type, text, room, sender, to, id, ts, origin, of, code, [arg, ...]]]
        [1, cid, json]                                                   SetMode
        [2, cid, reason]                                                 Close
        [3, cid, seq]                                                    Mark

`code` is a `protocol.replies.ReplyCode` value or '' (a code unknown to
this version decodes as is and is shown as free text); `args` its data.
Strings are UTF-8 msgpack str, `batch_bytes` is msgpack bin. `decode`
checks every field's type and raises only `DecodeError`: a malformed frame
from any peer is reported, never a crash.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import msgpack

from protocol.errors import DecodeError
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
    SetMode,
    Unknown,
)


def _str(value: Any) -> str:
    if type(value) is not str:
        raise DecodeError(f"expected str, got {type(value).__name__}")
    return value


def _int(value: Any) -> int:
    if type(value) is not int:
        raise DecodeError(f"expected int, got {type(value).__name__}")
    return value


def _bool(value: Any) -> bool:
    if type(value) is not bool:
        raise DecodeError(f"expected bool, got {type(value).__name__}")
    return value


def _epoch(value: Any) -> int:
    if type(value) is not int or not 0 <= value <= MAX_EPOCH:
        raise DecodeError("expected an epoch (an int from 0 to 2**63-1)")
    return value


def _bytes(value: Any) -> bytes:
    if type(value) is not bytes:
        raise DecodeError(f"expected bytes, got {type(value).__name__}")
    return value


def _strs(value: Any) -> tuple[str, ...]:
    """An array of str (checked in one pass: a room's worth of cids is on the hot path)."""
    if type(value) is not list or not all(type(v) is str for v in value):
        raise DecodeError("expected an array of str")
    return tuple(value)


def _list(value: Any, size: int | None = None) -> list[Any]:
    if type(value) is not list or (size is not None and len(value) != size):
        raise DecodeError(f"expected an array of {size or 'any'} items")
    return value


def _event_to_wire(e: ChatEvent) -> list[Any]:
    return [e.type.value, e.text, e.room, e.sender, e.to, e.id, e.ts, e.origin, e.of, e.code, list(e.args)]


def _event_from_wire(raw: Any) -> ChatEvent:
    t, text, room, sender, to, id_, ts, origin, of, code, args = _list(raw, 11)
    try:
        kind = EventType(t)
    except ValueError:
        raise DecodeError(f"unknown event type {t!r}") from None
    if type(ts) not in (float, int):
        raise DecodeError("expected a number for ts")
    return ChatEvent(
        kind, _str(text), _str(room), _str(sender), _str(to), _str(id_), float(ts), _str(origin),
        _str(of), _str(code), _strs(args),
    )


def _item_to_wire(item: BatchItem) -> list[Any]:
    if isinstance(item, Deliver):
        return [0, list(item.cids), _event_to_wire(item.event)]
    if isinstance(item, SetMode):
        return [1, item.cid, item.json]
    if isinstance(item, Mark):
        return [3, item.cid, item.seq]
    return [2, item.cid, item.reason]


def _item_from_wire(raw: Any) -> BatchItem:
    fields = _list(raw)
    if len(fields) != 3 or type(fields[0]) is not int:
        raise DecodeError("a batch item is [tag, field, field]")
    if fields[0] == 0:
        return Deliver(_strs(fields[1]), _event_from_wire(fields[2]))
    if fields[0] == 1 and type(fields[2]) is bool:
        return SetMode(_str(fields[1]), fields[2])
    if fields[0] == 2:
        return Close(_str(fields[1]), _str(fields[2]))
    if fields[0] == 3:
        return Mark(_str(fields[1]), _int(fields[2]))
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
        case Done(events, publish):
            return [6, [list(e) for e in events], [list(p) for p in publish]]
        case Heartbeat(sender, 0, True):
            return [7, sender]
        case Heartbeat(sender, epoch, active):
            return [7, sender, epoch, active]
        case Batch(items):
            return [8, [_item_to_wire(i) for i in items]]
        case Unknown(broker):
            return [9, broker]
        case Fenced(broker):
            return [10, broker]
    raise TypeError(f"not a message: {msg!r}")


def _done(events: Any, publish: Any) -> Done:
    done = tuple((_str(c), _int(s)) for c, s in (_list(e, 2) for e in _list(events)))
    pub = tuple((_str(g), _bytes(b)) for g, b in (_list(p, 2) for p in _list(publish)))
    return Done(done, pub)


_DECODERS: dict[tuple[int, int], Callable[..., Message]] = {
    (1, 3): lambda c, s, a: Connected(_str(c), _int(s), _str(a)),
    (2, 3): lambda c, s, ls: Lines(_str(c), _int(s), _strs(ls)),
    (3, 3): lambda c, s, r: Disconnected(_str(c), _int(s), _str(r)),
    (4, 1): lambda g: GatewayLost(_str(g)),
    (5, 1): lambda n: Ready(_int(n)),
    (6, 2): _done,
    (7, 1): lambda s: Heartbeat(_str(s)),
    (7, 3): lambda s, e, a: Heartbeat(_str(s), _epoch(e), _bool(a)),
    (8, 1): lambda items: Batch(tuple(_item_from_wire(i) for i in _list(items))),
    (9, 1): lambda b: Unknown(_str(b)),
    (10, 1): lambda b: Fenced(_str(b)),
}


def encode(msg: Message) -> bytes:
    return msgpack.packb(to_wire(msg), use_bin_type=True)


def decode(frame: bytes) -> Message:
    """One frame -> a message; raises DecodeError for anything malformed."""
    try:
        raw = msgpack.unpackb(frame, raw=False)
    except (ValueError, TypeError, msgpack.ExtraData, msgpack.FormatError,
            msgpack.StackError, UnicodeDecodeError) as exc:
        raise DecodeError(f"not msgpack: {exc}") from None
    if type(raw) is not list or not raw or type(raw[0]) is not int:
        raise DecodeError("not a tagged array")
    decoder = _DECODERS.get((raw[0], len(raw) - 1))
    if decoder is None:
        raise DecodeError(f"unknown message tag {raw[0]} with {len(raw) - 1} fields")
    try:
        return decoder(*raw[1:])
    except (TypeError, ValueError) as exc:  # wrong arity inside nested arrays
        raise DecodeError(f"malformed message: {exc}") from None
