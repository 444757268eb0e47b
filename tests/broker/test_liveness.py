"""Tests for broker.liveness: who is alive, with time passed in as a value."""

from __future__ import annotations

import pytest

from broker.liveness import Liveness


def test_timeout_is_interval_times_liveness() -> None:
    assert Liveness(0.5, 4).timeout == pytest.approx(2.0)


def test_heard_says_whether_the_peer_is_new() -> None:
    live = Liveness(1.0, 3)
    assert live.heard(b"w1", 0.0)
    assert not live.heard(b"w1", 1.0)
    assert live.heard(b"w2", 1.0)
    assert b"w1" in live and b"w2" in live and b"w3" not in live
    assert sorted(live) == [b"w1", b"w2"]


def test_expires_only_after_the_timeout() -> None:
    live = Liveness(1.0, 3)
    live.heard(b"w1", 10.0)
    assert live.expired(12.0) == []
    assert live.expired(13.0) == []  # exactly the timeout: not yet
    assert live.expired(13.01) == [b"w1"]
    assert b"w1" not in live


def test_hearing_again_restarts_the_clock() -> None:
    live = Liveness(1.0, 3)
    live.heard(b"w1", 0.0)
    live.heard(b"w1", 2.5)
    assert live.expired(4.0) == []
    assert live.expired(5.6) == [b"w1"]


def test_only_silent_peers_expire_and_are_forgotten() -> None:
    live = Liveness(1.0, 2)
    live.heard(b"old", 0.0)
    live.heard(b"fresh", 1.5)
    assert live.expired(2.5) == [b"old"]
    assert list(live) == [b"fresh"]
    assert live.expired(2.5) == []  # reported once
    assert live.heard(b"old", 3.0)  # new again after it expired


def test_forget() -> None:
    live = Liveness(1.0, 3)
    live.heard(b"w1", 0.0)
    live.forget(b"w1")
    live.forget(b"never-seen")  # no error
    assert b"w1" not in live
    assert live.expired(100.0) == []
    assert live.heard(b"w1", 100.0)


def test_iteration_is_a_snapshot() -> None:
    live = Liveness(1.0, 3)
    for peer in (b"a", b"b", b"c"):
        live.heard(peer, 0.0)
    for peer in live:  # forgetting while iterating is safe
        live.forget(peer)
    assert list(live) == []
