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


@dataclass(frozen=True, slots=True)
class ToGateways:
    """A room event and the gateways it goes to."""

    gateways: tuple[str, ...]
    item: RoomEvent


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
        self.items.append(ToGateways(tuple(dict.fromkeys(gateways)), item))

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

        def to(gateway: str, item: BatchItem) -> None:
            items = out.setdefault(gateway, [])
            if mark is not None and gateway not in marked:
                items.append(mark)
                marked.add(gateway)
            items.append(item)

        for item in self.items:
            if isinstance(item, Mark):
                mark, marked = item, set()
                origin = gateway_of(item.cid)
                if not item.cid.startswith("!"):  # a gateway's loss has no one to acknowledge
                    out.setdefault(origin, []).append(item)
                    marked.add(origin)
            elif isinstance(item, Deliver):
                for gateway, delivery in _by_gateway(item):
                    to(gateway, delivery)
            elif isinstance(item, ToGateways):
                for gateway in item.gateways:
                    to(gateway, item.item)
            elif isinstance(item, (SetMode, Close)):
                to(gateway_of(item.cid), item)
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
    if all(gateway_of(cid) == first for cid in item.cids[1:]):
        return [(first, item)]
    groups: dict[str, list[str]] = {}
    for cid in item.cids:
        groups.setdefault(gateway_of(cid), []).append(cid)
    return [(gateway, Deliver(tuple(cids), item.event)) for gateway, cids in groups.items()]
