"""A real Valkey for the chat logic tests: one server for the session, one key prefix per test."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from protocol.messages import Deliver, Disconnected, RoomEvent, WorkItem, gateway_of
from protocol.rooms import RoomTable
from stack.children import stop
from stack.valkey import start_valkey
from workers.effects import Effects, ToGateways
from workers.logic import Chat
from workers.store import Store

_prefixes = itertools.count(1)


@pytest.fixture(scope="session")
def valkey_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    child, url = start_valkey(tmp_path_factory.mktemp("valkey"))
    try:
        yield url
    finally:
        stop(child)


@pytest.fixture(scope="session")
def client(valkey_url: str) -> Iterator[redis.Redis]:
    conn = redis.Redis.from_url(valkey_url, decode_responses=True)
    yield conn
    conn.close()


def new_prefix() -> str:
    """A key prefix no other test (or hypothesis example) uses."""
    return f"t{next(_prefixes)}:"


@pytest.fixture
def prefix() -> str:
    return new_prefix()


@pytest.fixture
def store(client: redis.Redis, prefix: str) -> Store:
    return Store(client, prefix=prefix)


class GatewaysChat(Chat):
    """A chat whose room events come back as the `Deliver`s the gateways make of them.

    Every gateway keeps its `RoomTable` from the room events, in the order
    they are handled here (one process: the order pub-out would give), so
    the tests see who gets what, as before the fan-out moved to the gateways.
    """

    def __init__(self, *args, **kwargs) -> None:  # type: ignore[no-untyped-def]
        super().__init__(*args, **kwargs)
        self.tables: dict[str, RoomTable] = {}
        self.shown: dict[tuple[tuple[str, ...], RoomEvent], list[Deliver]] = {}  # a replay shows what the first run showed

    def _table(self, gateway: str) -> RoomTable:
        if gateway not in self.tables:
            self.tables[gateway] = RoomTable(lambda cid: gateway_of(cid) == gateway)
        return self.tables[gateway]

    def handle_batch(self, items: list[WorkItem], now: float) -> list[Effects]:
        out = super().handle_batch(items, now)
        for item, fx in zip(items, out, strict=True):
            fx.items = [expanded for each in fx.items for expanded in self._expand(each, now)]
            if isinstance(item, Disconnected):
                self._table(gateway_of(item.cid)).forget(item.cid)
        return out

    def _expand(self, item, now: float) -> list:  # type: ignore[no-untyped-def]
        if not isinstance(item, ToGateways):
            return [item]
        return [delivery for each in item.items for delivery in self._expand_one(item.gateways, each, now)]

    def _expand_one(self, gateways: tuple[str, ...], event: RoomEvent, now: float) -> list[Deliver]:
        key = (gateways, event)
        if key in self.shown:  # a gateway drops a replayed event: the first run's deliveries stand
            return self.shown[key]
        out: list[Deliver] = []
        for gateway in gateways:
            table = self._table(gateway)
            out += [Deliver(*delivery) for delivery in table.apply(event, now)]
        self.shown[key] = _merged(out, event)
        return self.shown[key]


def _merged(delivers: list[Deliver], room_event: RoomEvent) -> list[Deliver]:
    """The gateways' deliveries of one room event as one `Deliver` (as a worker used to make it)."""
    cids = tuple(cid for d in delivers if d.event is room_event.event for cid in d.cids)
    rest = [d for d in delivers if d.event is not room_event.event]
    return ([Deliver(cids, room_event.event)] if cids else []) + rest


@pytest.fixture
def chat(store: Store) -> Chat:
    return GatewaysChat(store)


@pytest.fixture
def full_url(tmp_path: Path) -> Iterator[str]:
    """A Valkey of its own, 4 MB at most (noeviction): to be filled up."""
    child, url = start_valkey(tmp_path / "valkey", maxmemory=4 << 20)
    try:
        yield url
    finally:
        stop(child)
