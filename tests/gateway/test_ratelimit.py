"""Tests for gateway.ratelimit: a token bucket with time passed in as a value."""

from __future__ import annotations

import pytest

from gateway.ratelimit import TokenBucket, read_cost


def test_a_full_burst_at_once_then_nothing() -> None:
    bucket = TokenBucket(rate=2.0, burst=5, now=0.0)
    assert bucket.take(3, 0.0) == 3
    assert bucket.take(5, 0.0) == 2
    assert bucket.take(1, 0.0) == 0


def test_refill_at_rate() -> None:
    bucket = TokenBucket(rate=4.0, burst=10, now=0.0)
    assert bucket.take(10, 0.0) == 10
    assert bucket.take(10, 0.5) == 2  # 0.5 s at 4/s
    assert bucket.take(10, 0.75) == 1
    assert bucket.take(10, 0.75) == 0


def test_refill_stops_at_burst() -> None:
    bucket = TokenBucket(rate=100.0, burst=3, now=0.0)
    assert bucket.take(3, 0.0) == 3
    assert bucket.take(50, 1000.0) == 3


def test_fractions_are_saved() -> None:
    bucket = TokenBucket(rate=1.0, burst=1, now=0.0)
    assert bucket.take(1, 0.0) == 1
    assert bucket.take(1, 0.5) == 0
    assert bucket.take(1, 1.0) == 1


def test_burst_of_at_least_one() -> None:
    bucket = TokenBucket(rate=1.0, burst=0, now=0.0)
    assert bucket.burst == 1
    assert bucket.take(5, 0.0) == 1


def test_time_going_backwards_adds_nothing() -> None:
    bucket = TokenBucket(rate=1.0, burst=2, now=10.0)
    assert bucket.take(2, 10.0) == 2
    assert bucket.take(1, 5.0) == 0


def test_delay_until_the_next_token() -> None:
    bucket = TokenBucket(rate=4.0, burst=2, now=0.0)
    assert bucket.delay(0.0) == 0.0  # tokens saved up
    bucket.take(2, 0.0)
    assert bucket.delay(0.0) == pytest.approx(0.25)
    assert bucket.delay(0.125) == pytest.approx(0.125)
    assert bucket.delay(0.25) == pytest.approx(0.0)
    assert bucket.take(1, 0.25) == 1


def test_delay_does_not_take() -> None:
    bucket = TokenBucket(rate=2.0, burst=1, now=0.0)
    bucket.take(1, 0.0)
    bucket.delay(0.5)
    bucket.delay(0.5)
    assert bucket.take(5, 0.5) == 1


@pytest.mark.parametrize("rate", [0.0, -1.0])
def test_rate_zero_is_unlimited(rate: float) -> None:
    bucket = TokenBucket(rate=rate, burst=1, now=0.0)
    for _ in range(3):
        assert bucket.take(1000, 0.0) == 1000
    assert bucket.delay(0.0) == 0.0


def test_a_charge_past_zero_is_a_debt_to_wait_off() -> None:
    bucket = TokenBucket(rate=10.0, burst=5, now=0.0)
    bucket.charge(25.0, 0.0)  # 5 saved up, 20 owed
    assert bucket.debt_delay(0.0) == pytest.approx(2.0)
    assert bucket.take(1, 1.0) == 0  # still owing
    assert bucket.debt_delay(1.0) == pytest.approx(1.0)
    assert bucket.debt_delay(2.0) == pytest.approx(0.0)
    assert bucket.take(1, 2.1) == 1


def test_without_a_rate_nothing_is_owed() -> None:
    bucket = TokenBucket(rate=0.0, burst=1, now=0.0)
    bucket.charge(1e9, 0.0)
    assert bucket.debt_delay(0.0) == 0.0
    assert bucket.take(7, 0.0) == 7


def test_every_read_costs_something() -> None:
    assert read_cost(0, 0) > 0  # a read of nothing but a wake-up
    assert read_cost(0, 1) < read_cost(0, 65536)  # bytes cost, with or without lines
    assert read_cost(10, 10) >= 10  # every line it ends: empty, bad or good


def test_a_stream_of_reads_is_held_to_the_rate() -> None:
    """A client paying its debts gets rate tokens a second of work, however it sends."""
    bucket = TokenBucket(rate=20.0, burst=100, now=0.0)
    now, cost = 0.0, 0.0
    while now < 60.0:  # tiny reads, each waited off like the reader does
        bucket.charge(read_cost(1, 2), now)
        cost += read_cost(1, 2)
        now += bucket.debt_delay(now)
    assert cost <= 100 + 20 * 60.0 + read_cost(1, 2)
