"""A real Valkey for the chat logic tests: one server for the session, one key prefix per test."""

from __future__ import annotations

import itertools
from collections.abc import Iterator

import pytest
import redis

from stack.children import stop
from stack.valkey import start_valkey
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


@pytest.fixture
def chat(store: Store) -> Chat:
    return Chat(store)
