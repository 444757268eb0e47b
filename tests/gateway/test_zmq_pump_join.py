"""gateway.zmq_pump joining events: the [key, body] entries waiting together go out as one
message, within the bounds; anything else goes alone; order and the outbox's count hold.
Over a real DEALER -> ROUTER pair on 127.0.0.1, as the gateway talks to the broker."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
import trio
import zmq

from gateway.zmq_pump import ZmqPump
from stack.frames import recv_frames

DEADLINE = 5.0
Link = tuple[zmq.Socket[bytes], zmq.Socket[bytes]]  # the gateway's DEALER, the broker's ROUTER


@pytest.fixture
def link() -> Iterator[Link]:
    ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    router, dealer = ctx.socket(zmq.ROUTER), ctx.socket(zmq.DEALER)
    for sock in (router, dealer):
        sock.setsockopt(zmq.LINGER, 0)
    port = router.bind_to_random_port("tcp://127.0.0.1")
    dealer.setsockopt(zmq.IDENTITY, b"gw")
    dealer.connect(f"tcp://127.0.0.1:{port}")
    try:
        yield dealer, router
    finally:
        dealer.close()
        router.close()
        ctx.term()


def _event(n: int, size: int = 100) -> list[bytes]:
    return [b"key%04d" % n, b"%d" % n + b"." * size]


def _pump_out(dealer: zmq.Socket[bytes], router: zmq.Socket[bytes], entries: list[list[bytes]],
              join_at_most: int = 4, join_bytes: int = 10_000, capacity: int = 10_000) -> tuple[list[list[bytes]], int]:
    """Queue `entries` before the pump runs, run it until all of their frames came -> (the messages
    the router got, without the identity; how many entries the outbox refused)."""
    pump = ZmqPump(dealer, lambda frames: None, capacity=capacity, join_at_most=join_at_most,
                   join_bytes=join_bytes)
    refused = sum(not pump.put_nowait(entry) for entry in entries)
    wanted = sum(len(entry) for entry in entries[:capacity])
    got: list[list[bytes]] = []

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(pump.run)
            with trio.fail_after(DEADLINE):
                while sum(len(message) for message in got) < wanted:
                    await trio.to_thread.run_sync(router.poll, 100)
                    while (frames := recv_frames(router)) is not None:
                        assert frames[0] == b"gw"
                        got.append(frames[1:])
            assert len(pump) == 0
            nursery.cancel_scope.cancel()

    trio.run(main)
    return got, refused


def test_waiting_events_go_out_joined_up_to_the_count(link: Link) -> None:
    events = [_event(n) for n in range(10)]
    got, _ = _pump_out(link[0], link[1], events)
    assert [len(message) // 2 for message in got] == [4, 4, 2]
    assert [frame for message in got for frame in message] == [frame for event in events for frame in event]


def test_a_heartbeat_is_never_joined_and_keeps_its_place(link: Link) -> None:
    beat = [b"heartbeat"]
    entries = [_event(0), _event(1), beat, _event(2), beat, beat, _event(3)]
    got, _ = _pump_out(link[0], link[1], entries)
    assert got == [_event(0) + _event(1), beat, _event(2), beat, beat, _event(3)]


def test_joined_frames_stay_under_the_byte_bound_and_a_large_event_goes_alone(link: Link) -> None:
    entries = [_event(0, 3000), _event(1, 3000), _event(2, 3000), _event(3, 50_000), _event(4), _event(5)]
    got, _ = _pump_out(link[0], link[1], entries)
    assert all(sum(map(len, message)) <= 10_000 or len(message) == 2 for message in got)
    assert got == [_event(0, 3000) + _event(1, 3000) + _event(2, 3000), _event(3, 50_000), _event(4) + _event(5)]


def test_a_lone_event_and_no_joining_look_as_ever(link: Link) -> None:
    got, _ = _pump_out(link[0], link[1], [_event(0)])
    assert got == [_event(0)]
    events = [_event(n) for n in range(3)]
    got, _ = _pump_out(link[0], link[1], events, join_at_most=1)
    assert got == events


def test_the_outbox_counts_entries_not_messages(link: Link) -> None:
    events = [_event(n) for n in range(10)]
    got, refused = _pump_out(link[0], link[1], events, capacity=6)
    assert refused == 4
    assert [frame for message in got for frame in message] == [frame for event in events[:6] for frame in event]


def test_at_the_high_water_mark_nothing_is_lost_or_reordered(link: Link) -> None:
    """A full pipe refuses a joined message whole: its events stay queued and go out later."""
    dealer, router = link
    dealer.setsockopt(zmq.SNDHWM, 2)
    router.setsockopt(zmq.RCVHWM, 2)
    events = [_event(n, 20_000) for n in range(400)]
    started = time.monotonic()
    got, refused = _pump_out(dealer, router, events, join_at_most=64, join_bytes=256 << 10)
    assert refused == 0 and time.monotonic() - started < DEADLINE
    assert [frame for message in got for frame in message] == [frame for event in events for frame in event]
