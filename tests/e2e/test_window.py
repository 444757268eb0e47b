"""The kill -9 window's shape (tests.e2e.window): pure."""

from __future__ import annotations

from tests.e2e.window import window_losses

GW = {"s": 1, "a": 1, "x": 2, "y": 2}  # the sender and a on gateway 1, x and y on gateway 2
ORIGIN = {n: 1 for n in range(200)}  # every message sent on gateway 1
ALL = set(range(200))


def _losses(missing: dict[str, set[int]], due: int = 800) -> int:
    got = {r: ALL - missing.get(r, set()) for r in GW}
    return window_losses({r: k for r, k in missing.items() if k}, got, GW, ORIGIN, due)


def test_a_batch_lost_for_a_whole_other_gateway_is_the_window() -> None:
    assert _losses({"x": {7, 8}, "y": {7, 8}}) == 4


def test_a_copy_lost_for_one_member_of_a_gateway_is_not() -> None:
    assert _losses({"x": {7}}) == 0


def test_a_copy_lost_at_the_senders_own_gateway_is_not() -> None:
    assert _losses({"a": {7}}) == 0


def test_a_message_nobody_at_the_senders_gateway_got_is_not() -> None:
    assert _losses({"s": {7}, "a": {7}, "x": {7}, "y": {7}}) == 0


def test_more_than_a_share_of_the_deliveries_is_not() -> None:
    assert _losses({"x": set(range(10)), "y": set(range(10))}, due=800) == 0  # 20 > 1% of 800
    assert _losses({"x": set(range(10)), "y": set(range(10))}, due=2000) == 20
