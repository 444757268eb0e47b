"""What handling events causes, as data: the worker loop publishes it.

`Effects` collects batch items in the order they happen, each event's
items after its `Mark`. `by_gateway` splits them into one `Batch` per
gateway, keeping that order: a gateway gets an event's Mark before its
items, and the gateway that sent the event always gets its Mark, which
is its acknowledgement. A `RoomEvent` goes, whole, to each of the
gateways named with it (those with members in the room).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from protocol import codec
from protocol.messages import (
    BatchItem,
    ChatEvent,
    Close,
    Deliver,
    EventType,
    Mark,
    RoomEvent,
    SetMode,
    gateway_of,
)


@dataclass(slots=True)
class ToGateways:
    """Room events, in order, and the gateways they go to (each gateway gets all of them). Not frozen:
    a run of room messages to the same gateways is added to one (`Effects.rooms`)."""

    gateways: tuple[str, ...]
    items: list[RoomEvent]


class Effects:
    __slots__ = ("items", "unserved")

    def __init__(self) -> None:
        self.items: list[BatchItem | ToGateways] = []
        self.unserved = False  # Redis refused the event's work: leave it unanswered, to come again

    def mark(self, cid: str, seq: int) -> None:
        """What follows is the effect of event (cid, seq)."""
        self.items.append(Mark(cid, seq))

    def deliver(self, cids: Iterable[str], event: ChatEvent) -> None:
        cids = tuple(cids)
        if cids:
            self.items.append(Deliver(cids, event))

    def room(self, gateways: Iterable[str], item: RoomEvent) -> None:
        """`item` for the members of its room on each of `gateways` (once each, in this order)."""
        self.items.append(ToGateways(tuple(dict.fromkeys(gateways)), [item]))

    def rooms(self, gateways: tuple[str, ...]) -> list[RoomEvent]:
        """Room events for each of `gateways` (distinct; in this order): the list to add them to, in order."""
        items: list[RoomEvent] = []
        self.items.append(ToGateways(gateways, items))
        return items

    def info(self, cid: str, text: str, code: str = "", args: tuple[str, ...] = ()) -> None:
        self.items.append(Deliver((cid,), ChatEvent(EventType.INFO, text, code=code, args=args)))

    def error(self, cid: str, text: str, code: str = "", args: tuple[str, ...] = ()) -> None:
        self.items.append(Deliver((cid,), ChatEvent(EventType.ERROR, text, code=code, args=args)))

    def set_json(self, cid: str) -> None:
        self.items.append(SetMode(cid, True))

    def close(self, cid: str, reason: str, departed: bool = False) -> None:
        """Close the connection after its output; `departed`: the chat forgot it already
        (`protocol.messages.Close`), so its gateway sends no departure for it."""
        self.items.append(Close(cid, reason, departed))

    def by_gateway(self) -> dict[str, list[BatchItem]]:
        routes = _Routes()
        to = routes.to
        for item in self.items:
            if type(item) is Mark:
                routes.mark_with(item)
            elif type(item) is ToGateways:
                for gateway in item.gateways if item.items else ():  # no events: nothing, not even a mark
                    to(gateway).extend(item.items)
            elif type(item) is Deliver:
                if item.cids:
                    one = _one_gateway(item.cids)
                    if one is not None:  # the usual case: the item itself, as a reply to its sender
                        to(one).append(item)
                    else:
                        for gateway, delivery in _by_gateway(item):
                            to(gateway).append(delivery)
            elif type(item) is SetMode or type(item) is Close:
                to(gateway_of(item.cid)).append(item)
            else:  # a room event is added with its gateways (`room`)
                raise TypeError(f"a room event without its gateways: {item!r}")
        return routes.out

    def encoded(self) -> tuple[tuple[str, bytes], ...]:
        """(gateway, Batch bytes) pairs, ready for a `Done`."""
        return codec.encode_batches(self.by_gateway().items())


class _Routes:
    """Items by gateway, in order, each gateway's first item of an event after the event's Mark."""

    __slots__ = ("last", "last_items", "mark", "marked", "out")

    def __init__(self) -> None:
        self.out: dict[str, list[BatchItem]] = {}
        self.mark: Mark | None = None
        self.marked: set[str] = set()  # gateways that got the current mark
        self.last: str | None = None  # the gateway of the item before, and its items
        self.last_items: list[BatchItem] = []

    def mark_with(self, mark: Mark) -> None:
        """What follows is the effect of `mark`'s event; the gateway that sent it always gets it."""
        self.mark, self.marked, self.last = mark, set(), None
        if not mark.cid.startswith("!"):  # a gateway's loss has no one to acknowledge
            self.to(gateway_of(mark.cid))

    def to(self, gateway: str) -> list[BatchItem]:
        """The items of `gateway`, its mark added if it did not have it yet."""
        if gateway == self.last:
            return self.last_items
        items = self.out.get(gateway)
        if items is None:
            items = self.out[gateway] = []
        if self.mark is not None and gateway not in self.marked:
            items.append(self.mark)
            self.marked.add(gateway)
        self.last, self.last_items = gateway, items
        return items


def _one_gateway(cids: tuple[str, ...]) -> str | None:
    """The gateway of all of (non-empty) `cids`, or None if they are on several."""
    first = gateway_of(cids[0])
    for cid in cids[1:]:
        if gateway_of(cid) != first:
            return None
    return first


def _by_gateway(item: Deliver) -> list[tuple[str, Deliver]]:
    """A delivery to connections of several gateways -> one per gateway."""
    groups: dict[str, list[str]] = {}
    for cid in item.cids:
        groups.setdefault(gateway_of(cid), []).append(cid)
    return [(gateway, Deliver(tuple(cids), item.event)) for gateway, cids in groups.items()]
