"""The vocabulary between processes: frozen, slotted dataclasses.

Gateway -> broker -> worker: the *client events* of one connection, each
numbered by the gateway (`cid`, `seq`): `Connected`, `Lines`,
`Disconnected`. The pair (cid, seq) is the event's unique ID. A connection
ID names the gateway instance that owns it: `<gateway>:<n>` (see
`gateway_of`), so a worker can address a reply without asking anyone.

Broker -> worker also carries `GatewayLost` (the broker saw a gateway's
heartbeats stop).

Worker -> broker: `Ready` (credit to take events), `Done` (events finished,
with what to publish: one payload per gateway), `Heartbeat`. A broker that
hears from a worker it does not know answers `Unknown`.

Broker -> gateway, on pub-out under the gateway's topic: a `Batch` of
`Mark` (whose event the next items belong to, and the acknowledgement of
the gateway's own events), `Deliver` (an event for some connections),
`RoomEvent` (an event for the gateway's own members of a room, and the
joins and parts that make them members), `SetMode` and `Close` items, in order.

Gateway <-> broker: `Heartbeat` both ways keeps each alive to the other.
A broker's heartbeat says its epoch and whether it is active (a pair's
standby is not); every dispatch to a worker starts with it, so the worker
knows the epoch it works under.
Broker -> gateway: `Fenced` when the broker hears from a gateway instance it
has declared lost (its connections were freed): the gateway must take a new
instance name and ask its clients to reconnect.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Callable
from dataclasses import MISSING, dataclass, fields
from typing import Any, TypeVar

_M = TypeVar("_M")

# What a fenced gateway tells each of its clients before it closes them
# (and what a worker tells a connection of a gateway it knows was lost).
GATEWAY_GONE = "this server lost its link to the service: please reconnect"
GATEWAY_LOST_REASON = "gateway lost"  # the reason of a worker's Close for such a connection

_GATEWAY_TOPIC = re.compile(rb"[A-Za-z0-9_.-]{1,128}:")


def gateway_of(cid: str) -> str:
    """The gateway instance that owns connection `cid`."""
    return cid.rpartition(":")[0]


class EventType(enum.StrEnum):
    """The `type` of what a client is sent (README, "The protocol in brief": JSON mode)."""

    MESSAGE = "message"
    ACTION = "action"
    PRIVATE = "private"
    JOIN = "join"
    PART = "part"
    QUIT = "quit"
    NICK = "nick"
    INFO = "info"
    ERROR = "error"
    HISTORY = "history"
    TOPIC = "topic"


# --- construction at the speed of plain attribute stores --------------------
#
# A frozen dataclass's __init__ stores each field through object.__setattr__,
# the slowest way to fill a slot (about 0.1 us a field), and a message is
# built once per event on every hop. `quick` keeps the class frozen and gives
# it an __init__ that turns the new object for a moment into an instance of a
# thawed twin, a subclass with the same slots and the plain __setattr__, stores
# the fields as attribute assignments, then makes it its class again. The
# twin, called with every field in order, is the codec's constructor (`maker`).
# Nobody but these two functions ever sees a thawed instance.


def _thawed_twin(cls: type) -> type:
    """A subclass of frozen `cls` with its layout (so `__class__` may change between them), not frozen."""
    return type(cls.__name__, (cls,), {
        "__slots__": (), "__module__": cls.__module__, "__qualname__": cls.__qualname__,
        "__setattr__": object.__setattr__, "__delattr__": object.__delattr__,
    })


def _init_source(names: list[str], defaults: list[bool], thaw: bool) -> str:
    params = ", ".join(f"{n}=_defaults[{n!r}]" if d else n for n, d in zip(names, defaults, strict=True))
    body = [f"    self.{n} = {n}\n" for n in names]
    if thaw:  # the public __init__: a subclass of `cls` (if any) keeps the dataclass's own
        body[:0] = ["    if self.__class__ is not _cls:\n",
                    f"        return _own(self, {', '.join(names)})\n",
                    "    _set_class(self, _thawed)\n"]
    return f"def __init__(self, {params}):\n{''.join(body)}    self.__class__ = _cls\n"


def _quick_init(cls: type, thawed: type, thaw: bool) -> Callable[..., None]:
    declared = fields(cls)
    names = [f.name for f in declared]
    defaults = {f.name: f.default for f in declared if f.default is not MISSING}
    if any(f.default_factory is not MISSING for f in declared):
        raise TypeError(f"{cls.__name__}: quick construction takes no default_factory")
    scope: dict[str, Any] = {"_cls": cls, "_thawed": thawed, "_own": cls.__dict__["__init__"], "_defaults": defaults,
                             "_set_class": object.__dict__["__class__"].__set__}
    exec(_init_source(names, [n in defaults for n in names], thaw), scope)  # as dataclasses make theirs
    init: Callable[..., None] = scope["__init__"]
    init.__qualname__ = f"{cls.__qualname__}.__init__"
    return init


def quick(cls: type[_M]) -> type[_M]:
    """Class decorator, above @dataclass(frozen=True, slots=True): the same class, built about 3x faster."""
    thawed = _thawed_twin(cls)
    type.__setattr__(thawed, "__init__", _quick_init(cls, thawed, thaw=False))
    type.__setattr__(cls, "__init__", _quick_init(cls, thawed, thaw=True))
    type.__setattr__(cls, "_maker", thawed)
    return cls


def maker(cls: type[_M]) -> Callable[..., _M]:
    """The fastest constructor of a `quick` class: every field, positionally and in order, no defaults."""
    made: Callable[..., _M] = cls.__dict__["_maker"]
    return made


# --- client events: gateway -> broker -> worker ---------------------------


@quick
@dataclass(frozen=True, slots=True)
class Connected:
    cid: str
    seq: int
    addr: str


# lines one `Lines` event may carry: a worker refuses the rest (a gateway sends more in the next event)
MAX_EVENT_LINES = 10_000


@quick
@dataclass(frozen=True, slots=True)
class Lines:
    """Every line that one read of the client's socket completed."""

    cid: str
    seq: int
    lines: tuple[str, ...]


@quick
@dataclass(frozen=True, slots=True)
class Disconnected:
    cid: str
    seq: int
    reason: str


@quick
@dataclass(frozen=True, slots=True)
class GatewayLost:
    """A gateway stopped: free everything its connections held."""

    gateway: str


ClientEvent = Connected | Lines | Disconnected
WorkItem = Connected | Lines | Disconnected | GatewayLost


# --- worker <-> broker ------------------------------------------------------


@quick
@dataclass(frozen=True, slots=True)
class Ready:
    """A worker can take `credit` more events."""

    credit: int


@quick
@dataclass(frozen=True, slots=True)
class Done:
    """Events finished (by (cid, seq)); `publish` holds (gateway, Batch bytes)."""

    events: tuple[tuple[str, int], ...]
    publish: tuple[tuple[str, bytes], ...]


# the largest lease epoch (it travels in 8 bytes, signed, as Redis counts)
MAX_EPOCH = (1 << 63) - 1


@quick
@dataclass(frozen=True, slots=True)
class Heartbeat:
    """A sign of life. A broker of a pair says its lease's `epoch` (a fencing number,
    1 and up) and whether it is the `active` one; a lone broker, a gateway or a
    worker says epoch 0, active.

    `beat`, between a gateway and a broker: a gateway numbers its heartbeats (1 and
    up) and a broker's heartbeat to a gateway says the number of the last one it
    heard from it (0: none yet), so a gateway can tell a broker that hears it now
    from heartbeats that waited in a link while it was cut. None: not said (workers,
    and a broker's heartbeats to them)."""

    sender: str
    epoch: int = 0
    active: bool = True
    beat: int | None = None


@quick
@dataclass(frozen=True, slots=True)
class Unknown:
    """Broker -> worker: 'I do not know you' (a broker restarted): send Ready again."""

    broker: str


# --- broker -> gateway -------------------------------------------------------


@quick
@dataclass(frozen=True, slots=True)
class Fenced:
    """Broker -> gateway: 'I declared you lost and freed your connections'."""

    broker: str


@quick
@dataclass(frozen=True, slots=True)
class ChatEvent:
    """One thing a client is shown; rendered by the gateway per connection mode.

    `origin` is the connection whose line caused it: a text-mode client
    does not get its own messages back. `code` says which reply an info or
    error is, `args` carries its data (see `protocol.replies`).
    """

    type: EventType
    text: str = ""
    room: str = ""
    sender: str = ""
    to: str = ""
    id: str = ""
    ts: float = 0.0
    origin: str = ""
    of: str = ""  # for HISTORY: the type of the message it replays
    code: str = ""  # a protocol.replies.ReplyCode value, or '' for free text
    args: tuple[str, ...] = ()  # the reply's data, per code


@quick
@dataclass(frozen=True, slots=True)
class Deliver:
    cids: tuple[str, ...]
    event: ChatEvent


@quick
@dataclass(frozen=True, slots=True)
class SetMode:
    """Switch a connection's rendering (`json=True` after /json)."""

    cid: str
    json: bool


@quick
@dataclass(frozen=True, slots=True)
class Close:
    """Flush what is queued for the connection, then close it.

    `departed`: the chat holds nothing of the connection any more, as of the
    event this Close answers: its departure ran in that event (a /quit), or
    it was refused registration (a refused connect, a failed recovery). Its
    gateway then owes the chat no `Disconnected`: the session is over once
    this Close is applied. Without it, the connection's departure is still
    the gateway's to send.
    """

    cid: str
    reason: str
    departed: bool = False


@quick
@dataclass(frozen=True, slots=True)
class Mark:
    """The items after it (up to the next Mark) are the effects of event (cid, seq).

    To the gateway that owns `cid` it is also the event's acknowledgement.
    A gateway skips the items of an event it has already seen: that is how
    an event handled twice (re-sent after a broker restart) shows once.
    """

    cid: str
    seq: int


@quick
@dataclass(frozen=True, slots=True)
class RoomEvent:
    """An event for every member of `room` on the receiving gateway, sent once per gateway.

    `seq` places it in the room's membership history, as Redis committed it:
    each join and part of the room takes the next number, a message the
    current one. The event goes to the gateway's connections that joined at
    or before `seq` and had not parted by then (`protocol.rooms`). `member`
    joined (`change` 1) or parted (`change` -1) at `seq`, and is not shown
    the event; '' and 0 for a message.
    """

    room: str
    seq: int
    event: ChatEvent
    member: str = ""
    change: int = 0


BatchItem = Deliver | SetMode | Close | Mark | RoomEvent


@quick
@dataclass(frozen=True, slots=True)
class Batch:
    items: tuple[BatchItem, ...]


Message = Connected | Lines | Disconnected | GatewayLost | Ready | Done | Heartbeat | Unknown | Fenced | Batch


def event_key(item: WorkItem) -> tuple[str, int]:
    """The unique ID of a work item: (cid, seq); a gateway's loss is ('!gw', 0)."""
    if isinstance(item, GatewayLost):
        return ("!" + item.gateway, 0)
    return (item.cid, item.seq)


def topic_of(gateway: str) -> bytes:
    """The pub-out topic of a gateway; the ':' keeps 'gw1' from matching 'gw10'."""
    return gateway.encode() + b":"


def is_gateway_topic(topic: bytes) -> bool:
    """Whether `topic` is exactly one gateway's pub-out topic (`<name>:`)."""
    return _GATEWAY_TOPIC.fullmatch(topic) is not None
