"""A broker's heartbeat to a gateway says the number of the last of that gateway's heartbeats it
heard (`Heartbeat.beat`), so the gateway can tell it from heartbeats that waited in a cut link;
a gateway that does not number its heartbeats (an older one) gets the plain heartbeat.

A real `Broker` (sockets bound on 127.0.0.1, its loop not run: the test drives its handlers) and
real gateway DEALERs connected to its frontend.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import zmq

from broker.server import Broker
from protocol import codec
from protocol.messages import Fenced, Heartbeat, Message
from stack.frames import recv_frames
from tests.broker.running import running_broker

WAIT_MS = 5000


@pytest.fixture
def broker() -> Iterator[Broker]:
    with running_broker() as b:
        yield b


def _dealer(broker: Broker, identity: bytes) -> zmq.Socket[bytes]:
    sock = zmq.Context.instance().socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.IDENTITY, identity)
    sock.connect(broker.endpoints()["frontend"])
    return sock


def _say(broker: Broker, dealer: zmq.Socket[bytes], beat: Heartbeat) -> None:
    """The gateway's heartbeat, through the frontend to the broker's handler."""
    dealer.send(codec.encode(beat))
    assert broker.frontend.poll(WAIT_MS), "the broker got nothing"
    frames = recv_frames(broker.frontend)
    assert frames is not None
    broker._on_frontend(frames)


def _heard(dealer: zmq.Socket[bytes]) -> Message:
    assert dealer.poll(WAIT_MS), "no heartbeat from the broker"
    return codec.decode(dealer.recv())


def test_a_gateway_hears_the_number_of_its_last_heartbeat_the_broker_heard(broker: Broker) -> None:
    dealer = _dealer(broker, b"gw1.a")
    try:
        for number in (1, 2, 7):
            _say(broker, dealer, Heartbeat("gw1.a", beat=number))
            broker._beat_gateways()
            heard = _heard(dealer)
            assert isinstance(heard, Heartbeat) and heard.beat == number and heard.sender == broker.name
    finally:
        dealer.close()


def test_an_older_gateway_gets_the_plain_heartbeat(broker: Broker) -> None:
    new, old = _dealer(broker, b"gw1.new"), _dealer(broker, b"gw2.old")
    try:
        _say(broker, new, Heartbeat("gw1.new", beat=3))
        _say(broker, old, Heartbeat("gw2.old"))
        broker._beat_gateways()
        assert old.poll(WAIT_MS)
        frame = old.recv()
        assert codec.decode(frame) == Heartbeat(broker.name) and frame == codec.encode(Heartbeat(broker.name))
        assert _heard(new) == Heartbeat(broker.name, beat=3)
    finally:
        new.close()
        old.close()


def test_a_gateway_the_broker_lost_is_forgotten_with_its_number(broker: Broker) -> None:
    dealer = _dealer(broker, b"gw1.a")
    try:
        _say(broker, dealer, Heartbeat("gw1.a", beat=5))
        broker._lose_gateway(b"gw1.a", "test")
        broker._beat_gateways()
        assert broker._beats == {}
        _say(broker, dealer, Heartbeat("gw1.a", beat=6))  # a fenced gateway: told so, its number not kept
        assert broker._beats == {}
        assert _heard(dealer) == Fenced(broker.name)
    finally:
        dealer.close()
