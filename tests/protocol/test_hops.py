"""protocol.hops: the sampler, the per-hop histograms, quantiles from buckets."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from protocol.hops import (
    GATEWAY_HOPS,
    HOP_BUCKETS,
    MAX_HOP_SAMPLE,
    Hop,
    HopTimes,
    Sampler,
    is_sampled,
    quantile,
)

INF = float("inf")


def test_a_sampler_of_zero_picks_nothing() -> None:
    sampler = Sampler(0)
    assert not any(sampler.pick() for _ in range(1000))


@pytest.mark.parametrize("every", [1, 3, 50])
def test_a_sampler_picks_one_in_every(every: int) -> None:
    sampler = Sampler(every)
    picks = [sampler.pick() for _ in range(every * 10)]
    assert sum(picks) == 10 and picks[every - 1]


@pytest.mark.parametrize("every", [-1, MAX_HOP_SAMPLE + 1])
def test_a_sampler_out_of_range_is_refused(every: int) -> None:
    with pytest.raises(ValueError, match="hop sample"):
        Sampler(every)


def test_hop_times_count_each_hop_apart_and_clamp_a_negative_time() -> None:
    times = HopTimes(GATEWAY_HOPS)
    times.observe(Hop.WAIT, 0.002)
    times.observe(Hop.WAIT, -0.001)  # a clock that went backwards is 0, not a negative sum
    times.observe(Hop.FLUSH, 10.0)
    wait = times.hops[Hop.WAIT]
    assert wait.buckets()[-1] == ("+Inf", 2) and wait.total == pytest.approx(0.002)
    assert times.hops[Hop.FLUSH].counts[-1] == 1  # above every bound
    assert times.hops[Hop.ROUND_TRIP].total == 0
    with pytest.raises(KeyError):
        times.observe(Hop.QUEUE, 0.1)  # not a gateway hop


def test_is_sampled_reads_the_top_bit_of_the_first_byte() -> None:
    assert is_sampled(b"\x80rest") and is_sampled(b"\xffx")
    assert not is_sampled(b"\x7fx") and not is_sampled(b"")


def test_quantile_of_nothing_is_none() -> None:
    assert quantile([], 0.5) is None
    assert quantile([(0.001, 0), (INF, 0)], 0.5) is None


def test_quantile_interpolates_inside_its_bucket() -> None:
    buckets = [(0.001, 0), (0.002, 10), (0.004, 20), (INF, 20)]
    assert quantile(buckets, 0.5) == pytest.approx(0.002)
    assert quantile(buckets, 0.25) == pytest.approx(0.0015)
    assert quantile(buckets, 0.99) == pytest.approx(0.002 + 0.002 * 9.8 / 10)


def test_quantile_above_the_last_bound_is_the_last_bound() -> None:
    assert quantile([(0.001, 1), (INF, 10)], 0.99) == 0.001


@given(st.lists(st.floats(0, 10, allow_nan=False), min_size=1, max_size=50), st.floats(0, 1))
def test_property_quantiles_lie_within_the_buckets_and_grow_with_q(values: list[float], q: float) -> None:
    times = HopTimes((Hop.WAIT,))
    for v in values:
        times.observe(Hop.WAIT, v)
    buckets = [(INF if le == "+Inf" else float(le), n) for le, n in times.hops[Hop.WAIT].buckets()]
    low, high = quantile(buckets, 0.0), quantile(buckets, q)
    assert low is not None and high is not None
    assert 0 <= low <= high <= HOP_BUCKETS[-1]
