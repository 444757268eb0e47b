"""Several events in one frontend message: [gateway, key, event, key, event, ...].

Frames go straight to the poll loop's handler of a real `Broker` (sockets bound on
127.0.0.1, OS-chosen ports); no loop runs. Each event is checked as if it came alone;
a message the bound or the layout refuses is refused whole and counted once.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
import zmq

from broker.metrics import Drop
from broker.server import Broker
from protocol import codec
from protocol.hops import Hop
from protocol.messages import Connected, Heartbeat, Lines, Ready
from stack.frames import MAX_EVENTS
from tests.broker.running import drops, running_broker

GW = b"gw1.a"


@pytest.fixture
def broker() -> Iterator[Broker]:
    with running_broker() as b:
        yield b


def _events(count: int, gateway: str = "gw1.a", first: int = 1) -> list[bytes]:
    """[key, event, ...] of `count` connections' Connected events."""
    frames: list[bytes] = []
    for n in range(first, first + count):
        frames += codec.event_frames(Connected(f"{gateway}:{n}", 0, "127.0.0.1:9"))
    return frames


def _dispatched(broker: Broker, credit: int = 1000) -> list[bytes]:
    broker._on_backend([b"w1", codec.encode(Ready(credit))])
    return [frame for _, frames in broker.scheduler.dispatch() for frame in frames]


def test_every_event_of_a_message_is_queued_in_order(broker: Broker) -> None:
    frames = _events(5)
    broker._on_frontend([GW, *frames])
    assert drops(broker) == {} and broker.metrics.received == 5
    assert _dispatched(broker) == frames


def test_a_message_at_the_bound_is_taken_whole(broker: Broker) -> None:
    frames = _events(MAX_EVENTS)
    broker._on_frontend([GW, *frames])
    assert drops(broker) == {} and broker.metrics.received == MAX_EVENTS
    assert _dispatched(broker) == frames


def test_a_bad_event_costs_that_event_only(broker: Broker) -> None:
    good = _events(4)
    foreign = codec.event_frames(Connected("gw9.z:1", 0, "127.0.0.1:9"))  # another gateway's connection
    broker._on_frontend([GW, *good[:2], b"short", b"body", *foreign, *good[2:4], *good[:2], *good[4:]])
    assert drops(broker) == {Drop.MALFORMED: 1, Drop.FOREIGN_CONNECTION_ID: 1, Drop.DUPLICATE_EVENT: 1}
    assert broker.metrics.received == 4
    assert _dispatched(broker) == good


def test_an_even_count_or_too_many_events_is_refused_whole(broker: Broker) -> None:
    frames = _events(MAX_EVENTS + 1)
    broker._on_frontend([GW, *frames])  # one event over the bound
    broker._on_frontend([GW, *frames[:4], b"lone key"])  # an even count: no way to tell keys from bodies
    broker._on_frontend([GW, *([b""] * 10_000)])  # thousands of empty frames
    broker._on_frontend([GW, *([b""] * 9_999)])  # ... an odd count of them
    broker._on_frontend([GW, b"", b"", b"", b""])  # an even count of empty frames
    assert drops(broker) == {Drop.WRONG_FRAME_COUNT: 4, Drop.MALFORMED: 2}
    assert broker.metrics.received == 0 and broker.scheduler.queued == 0


def test_empty_and_huge_frames_cost_their_events_only(broker: Broker) -> None:
    """The broker reads keys, never bodies: a huge or empty body passes to a worker (which
    checks it), an empty key is malformed."""
    key = codec.encode_key("gw1.a:1", 1)
    huge = b"\xc1" * (1 << 20)
    good = _events(1, first=2)
    broker._on_frontend([GW, b"", b"body", key, huge, key, b"", *good])
    assert drops(broker) == {Drop.MALFORMED: 1, Drop.DUPLICATE_EVENT: 1}
    assert _dispatched(broker) == [key, huge, *good]


def test_a_fenced_gateway_s_events_are_each_counted_and_it_is_told_once(broker: Broker) -> None:
    broker._lose_gateway(GW, "a test")
    broker._on_frontend([GW, *_events(3)])
    assert drops(broker)[Drop.FENCED_GATEWAY] == 3
    assert broker.metrics.received == 0


def test_a_standby_takes_none_of_them(broker: Broker) -> None:
    class Standby:
        epoch = 1

        def active(self, now: float) -> bool:
            return False

    broker.role = Standby()  # type: ignore[assignment]
    broker._on_frontend([GW, *_events(3)])
    assert drops(broker) == {Drop.NOT_ACTIVE: 3} and broker.metrics.received == 0


def test_a_heartbeat_and_a_lone_event_are_as_before(broker: Broker) -> None:
    broker._on_frontend([GW, codec.encode(Heartbeat("gw1.a"))])
    broker._on_frontend([GW, *codec.event_frames(Lines("gw1.a:1", 1, ("hi",)))])
    broker._on_frontend([GW, codec.encode(Heartbeat("gw1.a")), *_events(1)])  # a heartbeat is never joined
    assert drops(broker) == {Drop.WRONG_FRAME_COUNT: 1} and broker.metrics.received == 1


def test_each_sampled_event_of_a_message_starts_its_own_clock(broker: Broker) -> None:
    frames = _events(3)
    frames[0], frames[4] = codec.sampled_key(frames[0]), codec.sampled_key(frames[4])
    broker._on_frontend([GW, *frames])
    assert broker.metrics.received == 3
    broker.hops.dispatched(_dispatched(broker))  # as the loop's dispatch does
    assert broker.metrics.hops.hops[Hop.QUEUE].buckets()[-1] == ("+Inf", 2)


def _drains(broker: Broker, messages: list[list[bytes]], burst: int, monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Send `messages` to the broker's frontend from a DEALER and drain them -> the frames each
    drain handled, until all came (within a deadline)."""
    monkeypatch.setattr("broker.server.BURST", burst)
    dealer = broker.frontend.context.socket(zmq.DEALER)
    dealer.setsockopt(zmq.LINGER, 0)
    dealer.setsockopt(zmq.IDENTITY, GW)
    try:
        dealer.connect(broker.endpoints()["frontend"])
        for message in messages:
            dealer.send_multipart(message)
        handled: list[int] = []
        drains: list[int] = []

        def handle(frames: list[bytes]) -> None:
            handled.append(len(frames))

        deadline = time.monotonic() + 5
        while len(handled) < len(messages) and time.monotonic() < deadline:
            if broker.frontend.poll(100):
                before = len(handled)
                broker._drain(broker.frontend, handle, True)
                drains.append(sum(handled[before:]))
        assert len(handled) == len(messages)
        return drains
    finally:
        dealer.close()


def test_a_frontend_drain_stops_after_a_burst_of_events_not_of_messages(
        broker: Broker, monkeypatch: pytest.MonkeyPatch) -> None:
    """Joined events do not make the other sockets wait longer than lone ones did."""
    drains = _drains(broker, [_events(40)] * 10, 100, monkeypatch)
    assert all(frames <= 3 * (1 + 80) for frames in drains)  # 3 messages of 40 events reach 100


def test_a_flood_of_one_frame_messages_still_ends_a_drain(broker: Broker, monkeypatch: pytest.MonkeyPatch) -> None:
    drains = _drains(broker, [[b"x"]] * 250, 100, monkeypatch)
    assert all(frames <= 100 * 2 for frames in drains)  # [gateway, x]: 100 messages a drain at most
