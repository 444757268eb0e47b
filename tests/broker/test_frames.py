"""Multipart sends and receives without pyzmq's per-frame overhead (stack.frames), on real
sockets over loopback TCP: whole messages or nothing, errors as pyzmq's own."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
import zmq

from stack.frames import recv_frames, send_frames

DEADLINE = 5.0


@pytest.fixture
def ctx() -> Iterator[zmq.Context[zmq.Socket[bytes]]]:
    context: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    yield context
    context.destroy(linger=0)


def pair(ctx: zmq.Context[zmq.Socket[bytes]], hwm: int = 1000) -> tuple[zmq.Socket[bytes], zmq.Socket[bytes]]:
    """A ROUTER (mandatory routing) on 127.0.0.1 and a DEALER 'peer' it has heard from."""
    router, dealer = ctx.socket(zmq.ROUTER), ctx.socket(zmq.DEALER)
    for sock in (router, dealer):
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.SNDHWM, hwm)
        sock.setsockopt(zmq.RCVHWM, hwm)
    router.setsockopt(zmq.ROUTER_MANDATORY, 1)
    port = router.bind_to_random_port("tcp://127.0.0.1")
    dealer.setsockopt(zmq.IDENTITY, b"peer")
    dealer.connect(f"tcp://127.0.0.1:{port}")
    dealer.send(b"hello")
    assert wait_recv(router) == [b"peer", b"hello"]
    return router, dealer


def wait_recv(sock: zmq.Socket[bytes]) -> list[bytes]:
    """The next message on `sock`, within the deadline."""
    deadline = time.monotonic() + DEADLINE
    while time.monotonic() < deadline:
        if sock.poll(100):
            frames = recv_frames(sock)
            assert frames is not None
            return frames
    raise AssertionError("no message within the deadline")


def test_a_message_arrives_whole_with_empty_and_large_frames(ctx: zmq.Context[zmq.Socket[bytes]]) -> None:
    router, dealer = pair(ctx)
    message = [b"", b"key", b"x" * 200_000, b"", b"last"]
    send_frames(router, [b"peer", *message])
    assert wait_recv(dealer) == message
    send_frames(dealer, [b"one"], block=True)
    assert wait_recv(router) == [b"peer", b"one"]


def test_nothing_waiting_is_none_not_an_exception(ctx: zmq.Context[zmq.Socket[bytes]]) -> None:
    router, dealer = pair(ctx)
    assert recv_frames(router) is None
    assert recv_frames(dealer) is None


def test_an_unknown_peer_raises_as_pyzmq_does(ctx: zmq.Context[zmq.Socket[bytes]]) -> None:
    router, _ = pair(ctx)
    with pytest.raises(zmq.ZMQError) as err:
        send_frames(router, [b"nobody", b"key", b"event"])
    assert err.value.errno == zmq.EHOSTUNREACH


def test_a_full_pipe_refuses_whole_messages_only(ctx: zmq.Context[zmq.Socket[bytes]]) -> None:
    """At the high-water mark a send raises zmq.Again before any frame went: the peer gets
    only whole messages, in order."""
    router, dealer = pair(ctx, hwm=4)
    sent = 0
    with pytest.raises(zmq.Again):
        for sent in range(100_000):  # bounded: the pipes and the kernel's buffers fill long before
            send_frames(router, [b"peer", b"%d" % sent, b"x" * 1000, b"end"])
    got = 0
    while (frames := _recv_within(dealer, 0.5)) is not None:
        assert frames == [b"%d" % got, b"x" * 1000, b"end"]
        got += 1
    assert got == sent


def test_no_frames_is_a_mistake(ctx: zmq.Context[zmq.Socket[bytes]]) -> None:
    router, _ = pair(ctx)
    with pytest.raises(ValueError, match="at least one frame"):
        send_frames(router, [])


def _recv_within(sock: zmq.Socket[bytes], seconds: float) -> list[bytes] | None:
    if not sock.poll(int(seconds * 1000)):
        return None
    return recv_frames(sock)
