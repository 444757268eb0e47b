"""Tests for gateway.zmq_pump: a bounded outbox, drained over a real ZeroMQ pair."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
import trio
import zmq

from gateway.zmq_pump import BURST, ZmqPump


@pytest.fixture
def pair() -> Iterator[tuple[zmq.Socket[bytes], zmq.Socket[bytes]]]:
    ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    a, b = ctx.socket(zmq.PAIR), ctx.socket(zmq.PAIR)
    for sock in (a, b):
        sock.setsockopt(zmq.LINGER, 0)
    a.bind("inproc://pump")
    b.connect("inproc://pump")
    yield a, b
    a.close()
    b.close()
    ctx.term()


def test_a_full_outbox_refuses_and_counts(pair: tuple[zmq.Socket[bytes], zmq.Socket[bytes]]) -> None:
    pump = ZmqPump(pair[0], lambda frames: None, capacity=3)
    assert [pump.put_nowait([b"%d" % n]) for n in range(5)] == [True, True, True, False, False]
    assert len(pump) == 3
    assert pump.dropped == 2


async def receive(sock: zmq.Socket[bytes]) -> bytes:
    """One message; a ZeroMQ FD only says 'look at EVENTS'."""
    while not sock.getsockopt(zmq.EVENTS) & zmq.POLLIN:
        await trio.lowlevel.wait_readable(sock.getsockopt(zmq.FD))
    return sock.recv(zmq.NOBLOCK)


def test_what_was_kept_goes_out_in_order_and_frees_room(pair: tuple[zmq.Socket[bytes], zmq.Socket[bytes]]) -> None:
    sender, receiver = pair
    got: list[bytes] = []

    async def main() -> None:
        pump = ZmqPump(sender, lambda frames: None, capacity=3)
        for n in range(5):
            pump.put_nowait([b"%d" % n])
        async with trio.open_nursery() as nursery:
            nursery.start_soon(pump.run)
            with trio.fail_after(5):
                got.extend([await receive(receiver) for _ in range(3)])
            assert len(pump) == 0
            assert pump.put_nowait([b"again"])
            with trio.fail_after(5):
                got.append(await receive(receiver))
            nursery.cancel_scope.cancel()

    trio.run(main)
    assert got == [b"0", b"1", b"2", b"again"]


def _received_between_after_bursts(pair: tuple[zmq.Socket[bytes], zmq.Socket[bytes]], sent: int,
                                   then: int = 0) -> list[int]:
    """Send `sent` messages, run a pump on the other end until all came, send `then` more one
    by one, each once the last was handed over -> how many came between two after_bursts."""
    sender, receiver = pair
    counts: list[int] = []
    received = [0]

    def on_message(frames: list[bytes]) -> None:
        received[0] += 1

    def after_burst() -> None:
        counts.append(received[0] - sum(counts))

    async def main() -> None:
        for n in range(sent):
            sender.send(b"%d" % n)
        pump = ZmqPump(receiver, on_message, after_burst=after_burst)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(pump.run)
            with trio.fail_after(5):
                while sum(counts) < sent:
                    await trio.sleep(0.001)  # polling a condition, with a deadline
                for n in range(then):
                    sender.send(b"lone %d" % n)  # a lone message is handed over without waiting for more
                    while sum(counts) < sent + n + 1:
                        await trio.sleep(0.001)
            nursery.cancel_scope.cancel()

    trio.run(main)
    return counts


def test_messages_that_came_together_share_one_after_burst(pair) -> None:  # type: ignore[no-untyped-def]
    assert _received_between_after_bursts(pair, 10) == [10]


def test_never_more_than_a_burst_between_two_after_bursts(pair) -> None:  # type: ignore[no-untyped-def]
    counts = _received_between_after_bursts(pair, 2 * BURST + 7)
    assert sum(counts) == 2 * BURST + 7 and max(counts) <= BURST


def test_a_lone_message_is_handed_over_at_once(pair) -> None:  # type: ignore[no-untyped-def]
    assert _received_between_after_bursts(pair, 1, then=3) == [1, 1, 1, 1]


def _slow_stream(pair, flush_cost: float) -> list[int]:  # type: ignore[no-untyped-def]
    """600 messages waiting at once, each taking 0.1 ms to handle (rendering for many clients),
    each after_burst `flush_cost` seconds -> how many came between two after_bursts."""
    sender, receiver = pair
    messages = 600
    counts: list[int] = []
    received = [0]

    def spin(seconds: float) -> None:
        until = time.monotonic() + seconds
        while time.monotonic() < until:
            pass

    def on_message(frames: list[bytes]) -> None:
        received[0] += 1
        spin(0.0001)

    def after_burst() -> None:
        counts.append(received[0] - sum(counts))
        spin(flush_cost)

    async def main() -> None:
        for n in range(messages):
            sender.send(b"%d" % n)
        pump = ZmqPump(receiver, on_message, after_burst=after_burst, flush_within=0.002)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(pump.run)
            with trio.fail_after(10):
                while sum(counts) < messages:
                    await trio.sleep(0.001)  # polling a condition, with a deadline
            nursery.cancel_scope.cancel()

    trio.run(main)
    assert sum(counts) == messages
    return counts


def test_a_stream_is_handed_over_every_flush_within_not_every_burst(pair) -> None:  # type: ignore[no-untyped-def]
    """Every message handled brings one more: the pump hands over every `flush_within`
    (about 20 messages of 0.1 ms here), instead of only every BURST messages."""
    counts = _slow_stream(pair, 0.0)
    assert len(counts) > 6 and max(counts) < BURST // 2, counts


def test_a_costly_after_burst_is_called_less_often(pair) -> None:  # type: ignore[no-untyped-def]
    """An after_burst that takes 5 ms (a write to thousands of clients) waits 4 times that:
    writing takes at most about a fifth of the time."""
    counts = _slow_stream(pair, 0.005)
    assert len(counts) >= 2 and max(counts[1:-1] or [BURST]) >= 100, counts  # 20 ms of 0.1 ms messages


def test_after_messages_ends_every_pass_before_any_other_task_runs(pair) -> None:  # type: ignore[no-untyped-def]
    """Messages waiting together are handed over in one pass, then `after_messages`, with no other
    task in between (the gateway's runs span the pass), then `after_burst`; a lone one likewise."""
    sender, receiver = pair
    seen: list[str] = []

    async def main() -> None:
        for n in range(10):
            sender.send(b"%d" % n)
        pump = ZmqPump(receiver, lambda frames: seen.append(frames[0].decode()),
                       after_burst=lambda: seen.append("burst"), after_messages=lambda: seen.append("pass"))

        async def other() -> None:
            while True:
                seen.append("other")
                await trio.lowlevel.checkpoint()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(pump.run)
            nursery.start_soon(other)
            with trio.fail_after(5):
                while "burst" not in seen:
                    await trio.sleep(0.001)  # polling a condition, with a deadline
                sender.send(b"lone")
                while seen.count("burst") < 2:
                    await trio.sleep(0.001)
            nursery.cancel_scope.cancel()

    trio.run(main)
    messages = [*(str(n) for n in range(10)), "lone"]
    assert [item for item in seen if item in messages] == messages
    taken = False  # a message handed over, its pass not ended yet
    for item in seen:
        assert not (taken and item in ("other", "burst")), seen  # nothing runs inside a pass, no burst ends it
        taken = item in messages or (taken and item != "pass")
    assert not taken
    assert seen.index("pass", seen.index("9")) < seen.index("burst", seen.index("9"))
