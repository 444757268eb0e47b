"""Multipart sends and receives without pyzmq's per-frame overhead (stack.frames), on real
sockets over loopback TCP: whole messages or nothing, errors as pyzmq's own. Readiness: which
sockets hold a message, by one epoll over their ZMQ_FDs, and why a used socket must be touched."""

from __future__ import annotations

import select
import time
from collections.abc import Iterator

import pytest
import zmq

from stack.frames import Readiness, has_message, recv_frames, send_frames

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


def wait_ready(readiness: Readiness, deadline: float = DEADLINE) -> list[zmq.Socket[bytes]]:
    """What `readiness.wait` answers first, within the deadline (each wait is bounded)."""
    end = time.monotonic() + deadline
    while time.monotonic() < end:
        ready = readiness.wait(0.1)
        if ready:
            return ready
    raise AssertionError("no socket ready within the deadline")


def fd_readable(sock: zmq.Socket[bytes], deadline: float = DEADLINE) -> None:
    """Wait until `sock`'s ZMQ_FD is readable: a command (a message came) waits in its mailbox."""
    fd = int(sock.getsockopt(zmq.FD))
    end = time.monotonic() + deadline
    while time.monotonic() < end:
        if select.select([fd], [], [], 0.1)[0]:
            return
    raise AssertionError("the socket's fd never became readable")


def test_readiness_answers_the_sockets_holding_messages_in_their_order(ctx: zmq.Context[zmq.Socket[bytes]]) -> None:
    first, first_peer = pair(ctx)
    second, second_peer = pair(ctx)
    readiness = Readiness([first, second])
    try:
        began = time.monotonic()
        assert readiness.wait(0.05) == []  # nothing: it slept its timeout, no longer than a moment more
        assert 0.04 <= time.monotonic() - began < 2.0
        send_frames(second_peer, [b"to second"], block=True)
        assert wait_ready(readiness) == [second]
        assert recv_frames(second) == [b"peer", b"to second"] and recv_frames(second) is None
        send_frames(first_peer, [b"a"], block=True)
        send_frames(second_peer, [b"b"], block=True)
        fd_readable(first)
        fd_readable(second)
        assert readiness.wait(0.1) == [first, second]
    finally:
        readiness.close()


def test_a_used_socket_hides_its_message_from_the_fd_until_touched(ctx: zmq.Context[zmq.Socket[bytes]]) -> None:
    """The hazard Readiness's callers guard against: an operation on the socket takes in the command that
    says a message came, and its fd goes quiet although the message waits."""
    router, dealer = pair(ctx)
    readiness = Readiness([router])
    try:
        assert readiness.wait(0) == []  # looked at: nothing waits, the fd is quiet
        send_frames(dealer, [b"hidden"], block=True)
        fd_readable(router)
        assert has_message(router)  # an operation on the socket (any send or look would do)
        assert readiness.wait(0.1) == []  # the fd says nothing now: sleeping here would never wake for it
        readiness.touched(router)
        assert readiness.wait(0) == [router]
        assert recv_frames(router) == [b"peer", b"hidden"]
    finally:
        readiness.close()


def test_a_touched_ready_socket_does_not_keep_the_others_waiting(ctx: zmq.Context[zmq.Socket[bytes]]) -> None:
    busy, busy_peer = pair(ctx)
    other, other_peer = pair(ctx)
    readiness = Readiness([busy, other])
    try:
        assert readiness.wait(0) == []
        for i in range(3):
            send_frames(busy_peer, [b"%d" % i], block=True)
        assert wait_ready(readiness) == [busy]
        assert recv_frames(busy) == [b"peer", b"0"]  # one taken, more wait: the owner touches it
        send_frames(other_peer, [b"other"], block=True)
        fd_readable(other)
        readiness.touched(busy)
        assert readiness.wait(10.0) == [busy, other]  # without sleeping, the other's fd read too
    finally:
        readiness.close()
