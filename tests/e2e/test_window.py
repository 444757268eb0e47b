"""The kill -9 window's shapes (tests.e2e.window), and the failure tests' verdict on them
(tests.e2e.load.judge): pure, hand-made orders."""

from __future__ import annotations

import json
import socket
import time
from typing import Any

from tests.e2e.chatclient import ChatClient
from tests.e2e.load import STOP_WITHIN, Receiver, Seen, Verdict, judge
from tests.e2e.window import late_copies, set_apart, window_shaped

GW = {"s": 1, "a": 1, "x": 2, "y": 2}  # the sender and a on gateway 1, x and y on gateway 2
ORIGIN = {n: 1 for n in range(200)}  # every message sent on gateway 1
ALL = set(range(200))


def _losses(missing: dict[str, set[int]], due: int = 800) -> int:
    got = {r: ALL - missing.get(r, set()) for r in GW}
    lost, _ = set_apart(window_shaped({r: k for r, k in missing.items() if k}, got, GW, ORIGIN), 0, due)
    return lost


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


def test_late_copies_are_set_apart_within_the_share_with_the_losses() -> None:
    assert set_apart(2, 2, 400) == (2, 2)  # 4 of 400: 1%
    assert set_apart(2, 3, 400) == (2, 0)  # 5 of 400: the late ones are not the window
    assert set_apart(5, 2, 400) == (0, 2)  # the losses alone are too many; the late ones fit
    assert set_apart(0, 0, 400) == (0, 0)


# the failure tests' verdict (tests.e2e.load.judge): senders s0 on gateway A, s1 on gateway B;
# the receivers as RoomLoad has them: s0 (A), s1 (B), a listener on A, one on B
COUNT = 50  # each: 100 messages, 400 deliveries due, 4 of them the share
HOMES = {"s0": "A", "s1": "B"}


def _msg(sender: int, n: int) -> dict[str, Any]:
    return {"id": f"m{sender}-{n}", "from": f"s{sender}", "text": f"{sender} {n}"}


def _order(*late: int, early: tuple[int, ...] = ()) -> list[dict[str, Any]]:
    """One room's messages, the senders taking turns; s0's messages `late` come after s1's of the
    same number, s1's messages `early` before s0's."""
    order: list[dict[str, Any]] = []
    for n in range(COUNT):
        turn = [_msg(1, n), _msg(0, n)] if n in late or n in early else [_msg(0, n), _msg(1, n)]
        order += turn
    return order


def _judge(on_a: list[dict[str, Any]], on_b: list[dict[str, Any]], killed: bool = True,
           listener_a: list[dict[str, Any]] | None = None, listener_b: list[dict[str, Any]] | None = None) -> Verdict:
    seen = [Seen(on_a, "A"), Seen(on_b, "B"), Seen(on_a if listener_a is None else listener_a, "A"),
            Seen(on_b if listener_b is None else listener_b, "B")]
    return judge(seen, HOMES, COUNT, broker_killed=killed)


def _without(order: list[dict[str, Any]], *ids: str) -> list[dict[str, Any]]:
    return [m for m in order if m["id"] not in ids]


def test_the_verdict_of_one_order_everywhere() -> None:
    v = _judge(_order(), _order())
    assert v.ok() and v.complete() and (v.window, v.late) == (0, 0), v.line("in order")


def test_a_message_late_at_its_senders_whole_gateway_after_a_broker_kill_is_set_apart() -> None:
    v = _judge(_order(10), _order())  # s0's message 10 late on A, where s0 is
    assert v.ok() and v.complete(), v.line("late copy")
    assert (v.late, v.window, v.order_mismatches) == (2, 0, 0)


def test_a_late_copy_without_a_broker_kill_is_a_mismatch() -> None:
    v = _judge(_order(10), _order(), killed=False)  # a graceful restart, a worker kill: no window
    assert not v.ok() and v.order_mismatches == 2 and v.late == 0, v.line("no kill")


def test_a_message_late_at_the_gateway_its_sender_is_not_on_is_a_mismatch() -> None:
    v = _judge(_order(), _order(10))  # s0's message 10 late on B
    assert not v.ok() and v.order_mismatches and v.late == 0, v.line("late elsewhere")
    v = _judge(_order(early=(10,)), _order())  # s1's message 10 early on A: late on B, its own
    assert v.ok() and v.late == 2, v.line("late at s1's own gateway")


def test_one_member_of_a_gateway_seeing_another_order_is_a_mismatch() -> None:
    v = _judge(_order(10), _order(), listener_a=_order())
    assert not v.ok() and v.order_mismatches and v.late == 0, v.line("one member")


def test_more_late_copies_than_the_share_are_mismatches() -> None:
    v = _judge(_order(10, 20, 30), _order())  # 6 late copies: more than 4
    assert not v.ok() and v.order_mismatches == 2 and v.late == 0, v.line("too many")


def test_a_lost_batch_and_a_late_copy_together_within_the_share() -> None:
    v = _judge(_order(10), _without(_order(), "m0-20"))  # s0's 20 lost for all of B
    assert v.ok() and v.complete() and (v.window, v.late) == (2, 2), v.line("both")
    v = _judge(_order(10), _without(_order(), "m0-20", "m0-21"))  # 4 lost and 2 late: 6
    assert not v.ok() and (v.window, v.late) == (4, 0), v.line("both, too many")


def test_a_copy_lost_for_one_member_of_a_gateway_fails() -> None:
    v = _judge(_order(), _order(), listener_b=_without(_order(), "m0-20"))
    assert not v.ok() and v.lost == 1 and v.window == 0, v.line("one member lost")


def test_a_duplicate_or_a_senders_own_reorder_fails_after_a_broker_kill() -> None:
    order = _order()
    v = _judge(order, order, listener_b=[*order[:30], order[20], *order[30:]])
    assert not v.ok() and v.duplicated == 1, v.line("duplicate")
    swapped = [*order[:20], order[22], order[21], order[20], *order[23:]]  # s0's 10 after its 11
    v = _judge(swapped, swapped, listener_b=swapped, listener_a=swapped)
    assert not v.ok() and v.reordered, v.line("sender reorder")


def test_a_receiver_still_waiting_stops_when_told_before_its_socket_closes() -> None:
    """One receiver's missing copies (the window) keep it waiting: `stop()` ends its reads within
    STOP_WITHIN, keeping what it got, and its connection stays open for the test to judge and close."""
    listener = socket.create_server(("127.0.0.1", 0))
    client = ChatClient(listener.getsockname()[1], greet=False)
    server, _ = listener.accept()
    try:
        receiver = Receiver(client, "#r", want=2, deadline=time.monotonic() + 60)
        receiver.start()
        server.sendall(json.dumps({"type": "message", "room": "#r", "id": "a"}).encode() + b"\n")
        deadline = time.monotonic() + 10
        while not receiver.got and time.monotonic() < deadline:
            receiver.join(0.01)
        began = time.monotonic()
        receiver.stop()
        assert not receiver.is_alive() and time.monotonic() - began < 5 * STOP_WITHIN + 1
        assert [m["id"] for m in receiver.got] == ["a"] and not client.closed
    finally:
        client.close()
        server.close()
        listener.close()
