"""Tests for broker.liveness: who is alive, with time passed in as a value."""

from __future__ import annotations

import pytest

from broker.liveness import Fence, LinkWatch, Liveness


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


def test_grace_gives_every_peer_a_fresh_window() -> None:
    live = Liveness(1.0, 3)
    live.heard(b"a", 0.0)
    live.heard(b"b", 2.0)
    live.grace(10.0)
    assert live.expired(12.9) == []
    assert sorted(live.expired(13.1)) == [b"a", b"b"]


def test_link_watch_allows_reaping_while_someone_is_heard() -> None:
    watch = LinkWatch(3.0, now=0.0)
    assert watch.may_reap(1.5)  # someone heard within half the window
    watch.heard(2.0)
    assert watch.may_reap(3.5)
    assert not watch.silent


def test_link_watch_suspects_itself_when_everyone_is_silent() -> None:
    watch = LinkWatch(3.0, now=0.0)
    watch.heard(1.0)
    assert not watch.may_reap(4.5)
    assert watch.silent
    assert not watch.may_reap(100.0)  # however long it lasts
    assert watch.heard(101.0) == pytest.approx(100.0)  # silent since the last peer was heard
    assert not watch.silent
    assert watch.may_reap(101.5)


def test_a_cut_link_reaps_not_even_the_peer_that_fell_silent_first() -> None:
    """Cut at 1.0: gw2 was last heard at 0.0, w1 at 0.9. When gw2's window ends (3.01),
    the broker must already suspect its own link, not reap gw2 first."""
    live, watch = Liveness(1.0, 3), LinkWatch(3.0, now=0.0)
    for peer, at in ((b"gw2", 0.0), (b"w1", 0.9)):
        live.heard(peer, at)
        watch.heard(at)
    assert not watch.may_reap(3.01)
    assert live.expired(3.01) == [b"gw2"]  # what would have been reaped


def test_link_watch_reports_no_silence_when_there_was_none() -> None:
    watch = LinkWatch(3.0, now=0.0)
    assert watch.heard(1.0) is None
    assert watch.heard(3.9) is None  # within the window: not a silence


def test_partition_then_return_reaps_nobody_and_only_the_truly_dead_later() -> None:
    """The broker's rule, as it runs it: reap only while someone speaks; after a
    silence of its own, the silent get a fresh window."""
    live, watch = Liveness(1.0, 3), LinkWatch(3.0, now=0.0)
    for peer in (b"gw1", b"gw2", b"w1"):
        live.heard(peer, 0.0)
        watch.heard(0.0)
    assert not watch.may_reap(10.0)  # everyone silent for 10 s: our link, not theirs
    live.heard(b"w1", 10.5)  # the link is back: the worker speaks first
    if watch.heard(10.5) is not None:
        live.grace(10.5)
    assert watch.may_reap(11.0) and live.expired(11.0) == []
    live.heard(b"gw1", 11.0)
    watch.heard(11.0)
    live.heard(b"w1", 13.0)
    watch.heard(13.0)
    assert watch.may_reap(13.6)
    assert live.expired(13.6) == [b"gw2"]  # gw2 never came back: reaped after its fresh window


def test_fence_tells_a_fenced_peer_at_most_once_per_interval() -> None:
    fence = Fence(1.0)
    assert not fence.tell(b"gw", 0.0)  # not fenced
    fence.add(b"gw")
    assert b"gw" in fence and b"other" not in fence
    assert fence.tell(b"gw", 0.0)
    assert not fence.tell(b"gw", 0.5)
    assert fence.tell(b"gw", 1.0)
    fence.add(b"gw")  # again: no reset
    assert not fence.tell(b"gw", 1.2)


def test_fence_is_bounded_oldest_first() -> None:
    fence = Fence(1.0, capacity=2)
    for peer in (b"a", b"b", b"c"):
        fence.add(peer)
    assert len(fence) == 2
    assert b"a" not in fence and b"b" in fence and b"c" in fence
