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
        out: dict[str, list[BatchItem]] = {}
        mark: Mark | None = None
        marked: set[str] = set()  # gateways that got the current mark

        def to(gateway: str) -> list[BatchItem]:
            items = out.get(gateway)
            if items is None:
                items = out[gateway] = []
            if mark is not None and gateway not in marked:
                items.append(mark)
                marked.add(gateway)
            return items

        for item in self.items:
            if type(item) is Mark:
                mark, marked = item, set()
                if not item.cid.startswith("!"):  # a gateway's loss has no one to acknowledge
                    to(gateway_of(item.cid))
            elif type(item) is ToGateways:
                for gateway in item.gateways:
                    to(gateway).extend(item.items)
            elif type(item) is Deliver:
                for gateway, delivery in _by_gateway(item):
                    to(gateway).append(delivery)
            elif type(item) is SetMode or type(item) is Close:
                to(gateway_of(item.cid)).append(item)
            else:  # a room event is added with its gateways (`room`)
                raise TypeError(f"a room event without its gateways: {item!r}")
        return out

    def encoded(self) -> tuple[tuple[str, bytes], ...]:
        """(gateway, Batch bytes) pairs, ready for a `Done`."""
        return codec.encode_batches(self.by_gateway().items())


def _by_gateway(item: Deliver) -> list[tuple[str, Deliver]]:
    """A delivery -> one per gateway of its connections (the item itself when they share one, as a
    reply to its sender does)."""
    if not item.cids:
        return []
    first = gateway_of(item.cids[0])
    if len(item.cids) == 1 or all(gateway_of(cid) == first for cid in item.cids[1:]):
        return [(first, item)]
    groups: dict[str, list[str]] = {}
    for cid in item.cids:
        groups.setdefault(gateway_of(cid), []).append(cid)
    return [(gateway, Deliver(tuple(cids), item.event)) for gateway, cids in groups.items()]
