"""The kill -9 window's shape (tests.e2e.window): pure."""

from __future__ import annotations

from tests.e2e.window import late_copies, window_losses

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


# the window's other shape: a message that comes late at its sender's own gateway
LATE_GW = {"s": 1, "a": 1, "x": 2, "y": 2}
LATE_ORIGIN = {"s1": 1, "s2": 1, "x1": 2, "x2": 2, "x3": 2}
IN_ORDER = ["s1", "x1", "x2", "s2", "x3"]


def _late(orders: dict[str, list[str]]) -> int | None:
    return late_copies(orders, LATE_GW, LATE_ORIGIN)


def test_one_order_everywhere_has_no_late_copy() -> None:
    assert _late({r: IN_ORDER for r in LATE_GW}) == 0


def test_a_message_late_at_its_senders_whole_gateway_is_the_window() -> None:
    late = ["x1", "s1", "x2", "s2", "x3"]  # s1 came after x1 on gateway 1, whose sender s is there
    assert _late({"s": late, "a": late, "x": IN_ORDER, "y": IN_ORDER}) == 2


def test_a_message_late_at_the_other_gateway_is_not() -> None:
    late = ["x1", "s1", "x2", "s2", "x3"]  # s1 late on gateway 2, where its sender is not
    assert _late({"s": IN_ORDER, "a": IN_ORDER, "x": late, "y": late}) is None


def test_one_member_of_a_gateway_seeing_another_order_is_not() -> None:
    late = ["x1", "s1", "x2", "s2", "x3"]
    assert _late({"s": late, "a": IN_ORDER, "x": IN_ORDER, "y": IN_ORDER}) is None


def test_a_message_early_at_its_senders_gateway_is_not() -> None:
    early = ["s1", "x1", "s2", "x2", "x3"]  # s2 before x2 at its own gateway: not a late copy
    assert _late({"s": early, "a": early, "x": IN_ORDER, "y": IN_ORDER}) is None
