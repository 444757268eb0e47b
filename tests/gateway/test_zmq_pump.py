"""Tests for gateway.zmq_pump: a bounded outbox, drained over a real ZeroMQ pair."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import trio
import zmq

from gateway.zmq_pump import ZmqPump


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
