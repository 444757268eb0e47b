"""What handling events causes, as data: the worker loop publishes it.

`Effects` collects batch items in the order they happen; `by_gateway`
splits them into one `Batch` per gateway, keeping that order, so each
gateway gets everything one dispatch caused as a single message.
"""

from __future__ import annotations

from collections.abc import Iterable

from protocol import codec
from protocol.messages import (
    Batch,
    BatchItem,
    ChatEvent,
    Close,
    Deliver,
    EventType,
    SetMode,
    gateway_of,
)


class Effects:
    __slots__ = ("items",)

    def __init__(self) -> None:
        self.items: list[BatchItem] = []

    def deliver(self, cids: Iterable[str], event: ChatEvent) -> None:
        cids = tuple(cids)
        if cids:
            self.items.append(Deliver(cids, event))

    def info(self, cid: str, text: str) -> None:
        self.items.append(Deliver((cid,), ChatEvent(EventType.INFO, text)))

    def error(self, cid: str, text: str) -> None:
        self.items.append(Deliver((cid,), ChatEvent(EventType.ERROR, text)))

    def set_json(self, cid: str) -> None:
        self.items.append(SetMode(cid, True))

    def close(self, cid: str, reason: str) -> None:
        self.items.append(Close(cid, reason))

    def by_gateway(self) -> dict[str, list[BatchItem]]:
        out: dict[str, list[BatchItem]] = {}
        for item in self.items:
            if isinstance(item, Deliver):
                for gateway, cids in _split_cids(item.cids).items():
                    out.setdefault(gateway, []).append(Deliver(cids, item.event))
            else:
                out.setdefault(gateway_of(item.cid), []).append(item)
        return out

    def encoded(self) -> tuple[tuple[str, bytes], ...]:
        """(gateway, Batch bytes) pairs, ready for a `Done`."""
        return tuple(
            (gateway, codec.encode(Batch(tuple(items))))
            for gateway, items in self.by_gateway().items()
        )


def _split_cids(cids: tuple[str, ...]) -> dict[str, tuple[str, ...]]:
    groups: dict[str, list[str]] = {}
    for cid in cids:
        groups.setdefault(gateway_of(cid), []).append(cid)
    return {gw: tuple(members) for gw, members in groups.items()}
