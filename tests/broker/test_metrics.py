"""The broker's metric set, and which fixed cause each kind of bad message is counted under.

The mapping tests feed frames straight to the poll loop's handlers of a real
`Broker` (sockets bound on 127.0.0.1, OS-chosen ports); no loop runs.
"""

from __future__ import annotations

import re
from collections.abc import Iterator

import pytest
from prometheus_client import generate_latest

from broker.metrics import BrokerMetrics, Drop
from broker.server import Broker
from protocol import codec
from protocol.messages import Connected, Done, Heartbeat, Lines, Ready, topic_of
from tests.broker.running import drops, running_broker


def _scrape(metrics: BrokerMetrics) -> str:
    return generate_latest(metrics.registry()).decode()


def _value(text: str, sample: str) -> float:
    match = re.search(rf"^{re.escape(sample)} (\S+)$", text, re.MULTILINE)
    assert match, f"no {sample} in the scrape"
    return float(match.group(1))


def test_every_cause_is_exposed_from_the_start_with_a_tidy_label() -> None:
    text = _scrape(BrokerMetrics())
    for cause in Drop:
        assert re.fullmatch(r"[a-z][a-z_]*", cause.value), cause
        assert _value(text, f'chat_broker_drops_total{{cause="{cause.value}"}}') == 0


def test_the_fixed_set_is_exposed() -> None:
    text = _scrape(BrokerMetrics())
    for sample in ("chat_broker_events_received_total", "chat_broker_events_dispatched_total",
                   "chat_broker_done_total", "chat_broker_batches_published_total",
                   "chat_broker_gateways_lost_total", "chat_broker_workers_lost_total",
                   'chat_broker_queue_events{state="waiting"}', 'chat_broker_queue_events{state="in_flight"}',
                   "chat_broker_connections_queued", "chat_broker_workers_alive", "chat_broker_worker_credit",
                   "chat_broker_gateways_alive", "chat_broker_gateways_fenced"):
        assert _value(text, sample) == 0, sample


def test_a_drop_counts_under_its_cause_only() -> None:
    metrics = BrokerMetrics()
    assert metrics.drop(Drop.MALFORMED) == 1
    assert metrics.drop(Drop.MALFORMED) == 2
    text = _scrape(metrics)
    assert _value(text, 'chat_broker_drops_total{cause="malformed"}') == 2
    assert _value(text, 'chat_broker_drops_total{cause="pub_out_full"}') == 0


def test_a_registry_is_the_brokers_own() -> None:
    a, b = BrokerMetrics(), BrokerMetrics()
    a.received += 3
    assert _value(_scrape(a), "chat_broker_events_received_total") == 3
    assert _value(_scrape(b), "chat_broker_events_received_total") == 0


@pytest.fixture
def broker() -> Iterator[Broker]:
    with running_broker() as b:
        yield b


def test_frontend_causes(broker: Broker) -> None:
    connected = codec.event_frames(Connected("gw1.a:1", 1, "127.0.0.1:9"))
    broker._on_frontend([b"gw1.a", b"\xc1not msgpack"])
    broker._on_frontend([b"gw1.a", b"short", connected[1]])  # a key of 5 bytes
    broker._on_frontend([b"gw1.a", *connected, b"extra"])
    broker._on_frontend([b"gw1.b", *connected])  # gw1.b speaks for gw1.a's connection
    broker._on_frontend([b"gw1.a", codec.encode(Ready(5))])
    broker._on_frontend([b"gw1.a", connected[1]])  # an event without its key
    broker._on_frontend([b"gw1.a", *connected])
    broker._on_frontend([b"gw1.a", *connected])  # a resend while it is queued
    broker._on_frontend([b"gw1.a", codec.encode(Heartbeat("gw1.a"))])
    assert drops(broker) == {Drop.MALFORMED: 2, Drop.WRONG_FRAME_COUNT: 1, Drop.FOREIGN_CONNECTION_ID: 1,
                              Drop.UNEXPECTED_MESSAGE: 2, Drop.DUPLICATE_EVENT: 1}
    assert broker.metrics.received == 1


def test_the_broker_routes_on_keys_and_passes_bodies_through_unread(broker: Broker) -> None:
    """Bodies are the workers' to read: the broker queues and dispatches them as they came."""
    key = codec.encode_key("gw1.a:1", 7)
    broker._on_backend([b"w1", codec.encode(Ready(4))])
    broker._on_frontend([b"gw1.a", key, b"\xc1 opaque to the broker"])
    assert drops(broker) == {} and broker.metrics.received == 1
    [(worker, frames)] = broker.scheduler.dispatch()
    assert (worker, frames) == (b"w1", [key, b"\xc1 opaque to the broker"])
    done = codec.done_frames(Done((("gw1.a:1", 7),), (("gw1.a", b"\xc1 a batch"),)))
    broker._on_subscription([b"\x01gw1.a:"])
    broker._on_backend([b"w1", *done])
    assert drops(broker) == {} and broker.metrics.done == 1 and broker.metrics.published == 1
    assert broker.scheduler.connections == 0  # the event is finished


def test_backend_causes(broker: Broker) -> None:
    done = codec.done_frames(Done((("gw1.a:1", 1),), (("gw1.a", b"batch"),)))
    broker._on_backend([b"w1", *done])  # never said Ready to us
    broker._on_backend([b"w1", b"\x01\x02"])
    broker._on_backend([b"w1", codec.encode(Ready(4))])
    broker._on_backend([b"w1", codec.encode(Lines("gw1.a:1", 1, ("hi",)))])
    broker._on_backend([b"w1", *done[:2]])  # a topic without its batch
    broker._on_backend([b"w1", done[0], b"gw1.a", b"batch"])  # not a topic
    broker.pub.expect_gateways(0.0)  # past the window in which a new broker holds batches for gateways not heard yet
    broker._on_backend([b"w1", *done])  # nobody subscribed to gw1.a:
    assert drops(broker) == {Drop.UNKNOWN_WORKER: 1, Drop.MALFORMED: 3, Drop.UNEXPECTED_MESSAGE: 1,
                              Drop.NO_SUBSCRIBER: 1}
    assert broker.metrics.done == 1


def test_pub_out_and_pub_in_causes(broker: Broker) -> None:
    broker._on_subscription([b"\x05gw1.a:"])
    broker._on_subscription([b"\x01"])  # everything: would match every topic
    broker._on_subscription([b"\x01gw1.a:"])
    broker._on_pub_in([topic_of("gw1.a"), b"batch", b"extra"])
    broker._on_pub_in([topic_of("gw1.a"), b"batch"])
    broker._lose_gateway(b"gw1.a", "a test")
    broker._on_pub_in([topic_of("gw1.a"), b"batch"])
    broker._on_frontend([b"gw1.a", *codec.event_frames(Connected("gw1.a:2", 1, "127.0.0.1:9"))])
    assert drops(broker) == {Drop.NOT_A_SUBSCRIPTION: 1, Drop.REFUSED_SUBSCRIPTION: 1,
                              Drop.WRONG_FRAME_COUNT: 1, Drop.TO_FENCED_GATEWAY: 1, Drop.FENCED_GATEWAY: 1}
    assert broker.metrics.published == 1
    assert broker.metrics.gateways_lost == 1


def test_the_snapshot_holds_the_queue_and_peers(broker: Broker) -> None:
    broker._on_backend([b"w1", codec.encode(Ready(1))])
    for n in (1, 2):
        broker._on_frontend([b"gw1.a", *codec.event_frames(Connected(f"gw1.a:{n}", 1, "127.0.0.1:9"))])
    broker._dispatch()  # the connection refused to be routed to w1 (not connected): w1 lost
    assert drops(broker) == {Drop.BACKEND_UNROUTABLE: 1}
    assert broker.metrics.workers_lost == 1
    broker._on_backend([b"w2", codec.encode(Ready(3))])
    broker._snapshot()
    g = broker.metrics.gauges
    assert (g.waiting, g.in_flight, g.connections, g.workers, g.credit, g.gateways, g.fenced) == (2, 0, 2, 1, 3, 1, 0)
