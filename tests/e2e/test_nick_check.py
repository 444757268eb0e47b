"""`nick_violations`, the failover tests' check of the nickname invariant, against a real
Valkey: it finds a break, and a connection that leaves while it scans is no break."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import redis

from stack.children import stop
from stack.valkey import start_valkey
from tests.e2e.chaos import nick_violations

PREFIX = "chat:"


class LeavingOnRead(redis.Redis):
    """A client whose first read after the scan lets a connection leave first: its departure
    (both keys freed at once, as the LEAVE script frees them) lands inside the check."""

    cid = nick = ""
    left = False

    def execute_command(self, *args: Any, **options: Any) -> Any:
        if not self.left and args[0] in ("GET", "EVAL", "EVALSHA"):
            self.left = True
            with self.pipeline(transaction=True) as tx:
                tx.delete(f"{PREFIX}conn:{self.cid}", f"{PREFIX}nick:{self.nick.lower()}")
                tx.execute()
        return super().execute_command(*args, **options)


@pytest.fixture(scope="module")
def url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    child, url = start_valkey(tmp_path_factory.mktemp("valkey"))
    try:
        yield url
    finally:
        stop(child)


@pytest.fixture
def db(url: str) -> Iterator[redis.Redis]:
    conn = redis.Redis.from_url(url, decode_responses=True)
    conn.flushall()
    yield conn
    conn.close()


def _register(db: redis.Redis, cid: str, nick: str) -> None:
    db.hset(f"{PREFIX}conn:{cid}", mapping={"nick": nick, "room": ""})
    db.set(f"{PREFIX}nick:{nick.lower()}", cid)


def test_a_consistent_store_has_no_violation(db: redis.Redis) -> None:
    _register(db, "gw1.a:1", "Ann")
    _register(db, "gw1.a:2", "bob")
    assert nick_violations(db, PREFIX) == []


def test_both_sides_of_a_break_are_found(db: redis.Redis) -> None:
    _register(db, "gw1.a:1", "ann")
    db.hset(f"{PREFIX}conn:gw1.a:2", "nick", "ann")  # a second holder of ann
    db.set(f"{PREFIX}nick:carl", "gw1.a:9")  # held for a connection that is not there
    found = nick_violations(db, PREFIX)
    assert any(v.startswith("gw1.a:2 has nick 'ann'") for v in found), found
    assert any(v.startswith(f"{PREFIX}nick:carl points to gw1.a:9") for v in found), found


def test_a_connection_that_leaves_during_the_check_is_no_violation(db: redis.Redis, url: str) -> None:
    _register(db, "gw1.a:1", "guest-1")
    leaving = LeavingOnRead.from_url(url, decode_responses=True)
    leaving.cid, leaving.nick = "gw1.a:1", "guest-1"
    try:
        assert nick_violations(leaving, PREFIX) == []
        assert leaving.left  # the departure did land inside the check
    finally:
        leaving.close()
