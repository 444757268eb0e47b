"""broker.hops: the broker's clocks for sampled events, as pure code (times come in as values)."""

from __future__ import annotations

import pytest

from broker.hops import BrokerHops
from protocol import codec
from protocol.hops import BROKER_HOPS, MAX_TRACKED, Hop, HopTimes


def _hops() -> BrokerHops:
    return BrokerHops(HopTimes(BROKER_HOPS))


def _clock(value: float):  # type: ignore[no-untyped-def]
    return lambda: value


def test_a_sampled_event_is_timed_from_queue_to_dispatch_and_its_done_to_publish() -> None:
    hops = _hops()
    sampled = codec.encode_key("gw.a:1", 5, sampled=True)
    plain = codec.encode_key("gw.a:2", 5)
    hops.queued(sampled, 10.0)
    hops.queued(plain, 10.0)
    hops.dispatched([plain, b"body", sampled, b"body"], _clock(10.25))
    queue = hops.times.hops[Hop.QUEUE]
    assert queue.buckets()[-1] == ("+Inf", 1) and queue.total == 0.25
    assert not hops.answered((("gw.a:2", 5),))
    assert hops.answered((("gw.a:2", 5), ("gw.a:1", 5)))
    hops.published(20.0, 20.001)
    assert hops.times.hops[Hop.PUBLISH].total == pytest.approx(0.001)
    assert not hops.answered((("gw.a:1", 5),))  # answered once: a replayed Done is not timed again


def test_without_a_sampled_event_nothing_is_kept_or_read() -> None:
    hops = _hops()
    hops.queued(codec.encode_key("gw.a:1", 1), 1.0)

    def no_clock() -> float:
        raise AssertionError("the clock is read only for a sampled dispatch")

    hops.dispatched([codec.encode_key("gw.a:1", 1), b"body"], no_clock)
    assert not hops.answered((("gw.a:1", 1),))
    assert all(h.total == 0 for h in hops.times.hops.values())


def test_clocks_are_bounded_the_oldest_goes_first() -> None:
    hops = _hops()
    keys = [codec.encode_key(f"gw.a:{n}", 1, sampled=True) for n in range(MAX_TRACKED + 10)]
    for key in keys:  # events queued and never dispatched (their gateway went away)
        hops.queued(key, 0.0)
    hops.dispatched([keys[0], b"", keys[-1], b""], _clock(1.0))
    assert hops.times.hops[Hop.QUEUE].buckets()[-1] == ("+Inf", 1)  # the first aged out, the last is timed


def test_a_done_naming_anything_is_not_an_error() -> None:
    hops = _hops()
    hops.queued(codec.encode_key("gw.a:1", 1, sampled=True), 0.0)
    hops.dispatched([codec.encode_key("gw.a:1", 1, sampled=True), b""], _clock(0.0))
    assert not hops.answered((("", -1), ("x" * 10_000, 2**70)))
    assert hops.answered((("gw.a:1", 1),))
