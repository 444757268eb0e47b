"""pub-out holds a batch for a gateway whose subscription has not come yet: a live one, and,
for one liveness window after the broker starts, one it has not heard yet (after a broker
restart, one gateway's event may be answered before the other's first heartbeat)."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
import zmq

from broker.config import BrokerConfig
from broker.metrics import Drop
from broker.role import Role
from broker.server import Broker
from protocol.messages import topic_of
from tests.broker.running import ANY, running_broker


@pytest.fixture
def broker() -> Iterator[Broker]:
    with running_broker(BrokerConfig(ANY, ANY, ANY, ANY, heartbeat=0.05, liveness=4)) as b:
        yield b


def subscribe(broker: Broker, topic: bytes) -> zmq.Socket[bytes]:
    """A real SUB on pub-out; the broker takes its subscription as its loop would."""
    sub = broker.sockets.pub_out.context.socket(zmq.SUB)
    sub.setsockopt(zmq.LINGER, 0)
    sub.connect(broker.endpoints()["pub-out"])
    sub.setsockopt(zmq.SUBSCRIBE, topic)
    assert broker.pub_out.poll(5000), "the subscription did not come"
    broker._on_subscription(broker.pub_out.recv_multipart())
    return sub


def test_a_batch_for_a_gateway_not_heard_yet_is_held_while_the_broker_is_new(broker: Broker) -> None:
    topic = topic_of("gw-late.abc")
    broker.pub.send(topic, b"batch-1", "test")  # no heartbeat from gw-late yet, no subscription
    assert broker.metrics.drops.get(Drop.NO_SUBSCRIBER, 0) == 0
    sub = subscribe(broker, topic)
    try:
        assert sub.poll(5000), "the held batch was not sent when the subscription came"
        got = sub.recv_multipart()
        assert got[0] == topic and got[2] == b"batch-1" and int.from_bytes(got[1][8:], "big") == 1
    finally:
        sub.close()


def test_once_gateways_had_their_window_an_unheard_ones_batches_are_dropped(broker: Broker) -> None:
    topic = topic_of("gw-never.abc")
    broker.pub.send(topic, b"held", "test")
    broker.pub.sweep_held(time.monotonic())  # inside the window: kept
    assert broker.metrics.drops.get(Drop.NO_SUBSCRIBER, 0) == 0
    broker.pub.expect_gateways(time.monotonic())  # the window is over (time as a value, no waiting)
    broker.pub.sweep_held(time.monotonic())
    assert broker.metrics.drops.get(Drop.NO_SUBSCRIBER, 0) == 1  # what was held, counted
    broker.pub.send(topic, b"late", "test")
    assert broker.metrics.drops.get(Drop.NO_SUBSCRIBER, 0) == 2  # not held any more: dropped at once



def test_a_broker_that_is_not_active_any_more_sends_nothing_it_held(broker: Broker) -> None:
    """A broker of a pair frozen past its lease wakes up and reads a subscription before it
    looks at its lease: what it held must not go out under its old epoch (the gateway would
    take it for a deposed broker's after the new active one's, and re-instance)."""
    topic = topic_of("gw-late.abc")
    broker.pub.send(topic, b"held while active", "test")
    broker.role = Role(ttl=1.0)  # the lease is gone: epoch 0, a standby
    sub = subscribe(broker, topic)
    try:
        assert not sub.poll(300), "a batch held while active went out after the lease was lost"
        assert broker.metrics.drops.get(Drop.NOT_ACTIVE, 0) == 1
    finally:
        sub.close()
