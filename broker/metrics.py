"""The broker's metrics: a fixed set, prefix `chat_broker_`, served on --metrics-listen.

The poll loop is single-threaded and owns every number here: it bumps plain
ints on the hot path (one attribute increment an event, no lock) and copies
the scheduler's and liveness tables' sizes into a `Gauges` snapshot once per
housekeeping pass (every heartbeat). The HTTP server thread only reads them,
through `BrokerMetrics.collect`, at scrape time: it never touches the loop's
tables, so it cannot race them. Gauges are thus at most one heartbeat old.

Every message the broker drops, ignores or refuses is counted under one
`Drop` cause: a fixed set, so the label never grows with what peers send
(the log line keeps the detail).
"""

from __future__ import annotations

import enum
from collections.abc import Iterator
from dataclasses import dataclass

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector

from protocol.hops import BROKER_HOPS, HopTimes
from stack.metrics import hop_family

PREFIX = "chat_broker_"


class Drop(enum.StrEnum):
    """Why the broker dropped, ignored or refused a message (label `cause`)."""

    MALFORMED = "malformed"  # a frame that does not decode (frontend, backend)
    WRONG_FRAME_COUNT = "wrong_frame_count"  # not [peer, body] (or [topic, batch] on pub-in)
    FOREIGN_CONNECTION_ID = "foreign_connection_id"  # a gateway's event for another gateway's connection
    UNEXPECTED_MESSAGE = "unexpected_message"  # a valid message on the wrong socket
    DUPLICATE_EVENT = "duplicate_event"  # an event queued or in flight already (a gateway's resend)
    UNKNOWN_WORKER = "unknown_worker"  # a worker that never said Ready to this broker: told Unknown
    FENCED_GATEWAY = "fenced_gateway"  # an event from a gateway instance declared lost
    TO_FENCED_GATEWAY = "to_fenced_gateway"  # a batch for a gateway instance declared lost
    NO_SUBSCRIBER = "no_subscriber"  # a batch for a topic nobody subscribed to
    PUB_OUT_FULL = "pub_out_full"  # a subscriber's pipe at the high-water mark
    NOT_A_SUBSCRIPTION = "not_a_subscription"  # an XPUB frame that is no (un)subscription
    REFUSED_SUBSCRIPTION = "refused_subscription"  # a prefix that is not one gateway topic
    TOO_MANY_TOPICS = "too_many_topics"  # a subscription beyond the topic bound
    BACKEND_UNROUTABLE = "backend_unroutable"  # a dispatch a worker could not take: worker lost
    NOT_ACTIVE = "not_active"  # an event, Done or pub-in batch that came to a standby of a pair


@dataclass(frozen=True, slots=True)
class Gauges:
    """The loop's state, copied once per housekeeping pass."""

    waiting: int = 0  # events queued, not yet given to a worker
    in_flight: int = 0  # events given to a worker, not yet Done
    connections: int = 0  # connections with an event waiting or in flight
    workers: int = 0  # workers alive
    credit: int = 0  # their free credit, in all
    gateways: int = 0  # gateways alive
    fenced: int = 0  # gateway instances declared lost and remembered


_COUNTERS = (  # attribute, name, help
    ("received", "events_received", "Client events taken from gateways into the queue."),
    ("dispatched", "events_dispatched", "Events sent to workers (again after a worker loss)."),
    ("done", "done", "Done messages from workers."),
    ("published", "batches_published", "Batches sent to gateways on pub-out."),
    ("gateways_lost", "gateways_lost", "Gateway instances declared lost (silent or not reading)."),
    ("workers_lost", "workers_lost", "Workers declared lost (silent or unroutable)."),
)

_GAUGES = (  # attribute of Gauges, name, help
    ("connections", "connections_queued", "Connections with an event waiting or in flight."),
    ("workers", "workers_alive", "Workers heard within the liveness window."),
    ("credit", "worker_credit", "Free credit of all live workers: events they can take now."),
    ("gateways", "gateways_alive", "Gateways heard within the liveness window."),
    ("fenced", "gateways_fenced", "Gateway instances declared lost and remembered (fenced)."),
)


class BrokerMetrics(Collector):
    """The broker's fixed metric set; the poll loop writes, a scrape reads."""

    def __init__(self) -> None:
        self.received = 0
        self.dispatched = 0
        self.done = 0
        self.published = 0
        self.gateways_lost = 0
        self.workers_lost = 0
        self.drops: dict[Drop, int] = dict.fromkeys(Drop, 0)  # every key from the start: never resized
        self.gauges = Gauges()
        self.hops = HopTimes(BROKER_HOPS)  # the sampled events' (protocol.hops, broker.hops)

    def drop(self, cause: Drop) -> int:
        """Count one drop -> how many of that cause so far."""
        self.drops[cause] += 1
        return self.drops[cause]

    def registry(self) -> CollectorRegistry:
        """A registry of the broker's own (never the library's global one) holding this set."""
        registry = CollectorRegistry(auto_describe=False)
        registry.register(self)
        return registry

    def collect(self) -> Iterator[CounterMetricFamily | GaugeMetricFamily | HistogramMetricFamily]:
        for attr, name, text in _COUNTERS:
            yield CounterMetricFamily(PREFIX + name, text, value=getattr(self, attr))
        drops = CounterMetricFamily(PREFIX + "drops", "Messages dropped, ignored or refused, by cause.",
                                    labels=["cause"])
        for cause, count in list(self.drops.items()):
            drops.add_metric([cause.value], count)
        yield drops
        yield hop_family(PREFIX, self.hops)
        gauges = self.gauges  # one snapshot for every gauge of this scrape
        queue = GaugeMetricFamily(PREFIX + "queue_events", "Events in the broker's queue, by state.",
                                  labels=["state"])
        queue.add_metric(["waiting"], gauges.waiting)
        queue.add_metric(["in_flight"], gauges.in_flight)
        yield queue
        for attr, name, text in _GAUGES:
            yield GaugeMetricFamily(PREFIX + name, text, value=getattr(gauges, attr))

    def describe(self) -> Iterator[CounterMetricFamily | GaugeMetricFamily | HistogramMetricFamily]:
        return self.collect()
