"""The gateway's metrics: a fixed set, prefix `chat_gateway_`, served on --metrics-listen.

The Trio loop owns every number here: it bumps plain ints on the hot path
(one attribute increment per line, delivery or event, no lock) and copies
its tables' sizes into a `Gauges` snapshot once per tick (every heartbeat).
The HTTP server thread only reads, through `GatewayMetrics.collect`, at
scrape time: it never touches the loop's tables. Gauges are thus at most
one heartbeat old.

Every refusal and every drop or cut is counted under one cause of a fixed
enum, so a label never grows with what peers send; the log line keeps the
detail. The event latency is a histogram kept as a list of ints: one
`bisect` per answered event; so are the per-hop times of the sampled events
(protocol.hops).
"""

from __future__ import annotations

import enum
from collections.abc import Iterator
from dataclasses import dataclass

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

from protocol.doors import DoorKind
from protocol.hops import GATEWAY_HOPS, Histogram, HopTimes
from stack.metrics import hop_family

PREFIX = "chat_gateway_"
# seconds: 0.25 ms to 5 s, roughly 1-2.5-5 a decade
LATENCY_BUCKETS = (0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


class Refusal(enum.StrEnum):
    """Why a connection was refused before it became a client (label `reason`)."""

    SERVER_FULL = "server_full"  # --max-connections (or the open-file limit) reached
    PER_ADDRESS = "per_address"  # --max-per-address reached for the client's address
    UNTRUSTED_PROXY = "untrusted_proxy"  # --proxy-protocol: a peer outside --trusted-proxies
    BAD_PROXY_HEADER = "bad_proxy_header"  # not a PROXY header, or the peer closed before one
    PROXY_TIMEOUT = "proxy_timeout"  # no PROXY header in time
    PEER_GONE = "peer_gone"  # reset or closed before it was read
    TLS_HANDSHAKE = "tls_handshake"  # a TLS handshake that failed (garbage, old protocol, no cipher)
    TLS_TIMEOUT = "tls_timeout"  # a TLS handshake not finished in time


class Drop(enum.StrEnum):
    """What the gateway dropped, and the clients it cut, by cause (label `cause`)."""

    SEQUENCE_GAP = "sequence_gap"  # pub-out messages missed (counted by how many)
    STALE_BROKER = "stale_broker"  # a pub-out message of a deposed broker (an older epoch)
    MALFORMED = "malformed"  # a frame from the broker that does not decode
    WRONG_FRAME_COUNT = "wrong_frame_count"  # a pub-out message not [topic, seq, batch]
    UNEXPECTED_MESSAGE = "unexpected_message"  # a valid message on the wrong socket
    EARLIER_INSTANCE = "earlier_instance"  # a batch for the instance we were before a fence
    REPLAY_DROPPED = "replay_dropped"  # an event shown already (an at-least-once replay)
    DELIVERY_TO_CLOSED = "delivery_to_closed"  # a delivery for a connection that is gone
    ROOM_CATCH_UP_MISSED = "room_catch_up_missed"  # a join came after more room events than a room's ring keeps
    OUTBOX_FULL = "outbox_full"  # a frame to the broker refused by the full outbox
    LINES_UNAVAILABLE = "lines_unavailable"  # lines refused while the broker is down
    FLOOD_CUT = "flood_cut"  # a client disconnected for flooding
    SLOW_CONSUMER_CUT = "slow_consumer_cut"  # a client disconnected for not reading its output


@dataclass(frozen=True, slots=True)
class Gauges:
    """The loop's state, copied once per tick."""

    connections: int = 0  # clients connected now
    in_flight: int = 0  # events sent to the broker, not yet answered
    broker_up: bool = False  # the broker heard within the liveness window
    serving: bool = False  # accepting clients
    parked: int = 0  # idle clients parked with the watcher: no task of their own (gateway.idle)


_COUNTERS = (  # attribute, name, help
    ("accepted", "connections_accepted", "Connections accepted as clients."),
    ("health_checks", "health_checks", "Balancer health checks (PROXY v2 LOCAL) answered by closing."),
    ("lines_in", "lines_in", "Client lines handed to the broker (bad lines are answered at the gateway)."),
    ("deliveries", "deliveries_out", "Lines written to clients."),
    ("events_sent", "events_sent", "Client events sent to the broker for the first time."),
    ("resent", "events_resent", "Client events sent again (unanswered in time, or the broker restarted)."),
    ("fences", "fences", "Times this gateway was fenced and re-joined under a new instance name."),
)

_GAUGES = (  # attribute of Gauges, name, help
    ("connections", "connections", "Clients connected now."),
    ("in_flight", "events_in_flight", "Client events sent to the broker and not yet answered."),
    ("broker_up", "broker_up", "1 while the broker is heard within the liveness window."),
    ("serving", "serving", "1 while the gateway accepts clients (its client ports are open)."),
    ("parked", "connections_parked", "Idle clients parked with the one watcher, without a task of their own."),
)


class GatewayMetrics(Collector):
    """The gateway's fixed metric set; the Trio loop writes, a scrape reads."""

    def __init__(self) -> None:
        self.accepted = 0
        self.accepted_by_door: dict[DoorKind, int] = dict.fromkeys(DoorKind, 0)  # line, irc, ws
        self.health_checks = 0
        self.lines_in = 0
        self.deliveries = 0
        self.events_sent = 0
        self.resent = 0
        self.fences = 0
        self.refusals: dict[Refusal, int] = dict.fromkeys(Refusal, 0)  # every key from the start
        self.drops: dict[Drop, int] = dict.fromkeys(Drop, 0)
        self.latency = Histogram(LATENCY_BUCKETS)
        self.hops = HopTimes(GATEWAY_HOPS)  # the sampled events' (protocol.hops)
        self.gauges = Gauges()

    def refuse(self, reason: Refusal) -> None:
        self.refusals[reason] += 1

    def drop(self, cause: Drop, n: int = 1) -> int:
        """Count `n` drops -> how many of that cause so far."""
        self.drops[cause] += n
        return self.drops[cause]

    def registry(self) -> CollectorRegistry:
        """A registry of the gateway's own (never the library's global one) holding this set."""
        registry = CollectorRegistry(auto_describe=False)
        registry.register(self)
        return registry

    def collect(self) -> Iterator[Metric]:
        for attr, name, text in _COUNTERS:
            yield CounterMetricFamily(PREFIX + name, text, value=getattr(self, attr))
        yield _labelled(PREFIX + "door_connections", "Connections accepted, by door (line, irc, ws).", "door",
                        self.accepted_by_door)
        yield _labelled(PREFIX + "connections_refused", "Connections refused, by reason.", "reason", self.refusals)
        yield _labelled(PREFIX + "drops", "Messages dropped and clients cut, by cause.", "cause", self.drops)
        latency = self.latency
        yield HistogramMetricFamily(
            PREFIX + "event_latency_seconds",
            "From sending a client event to the broker to receiving its answer (its Mark).",
            buckets=latency.buckets(), sum_value=latency.total)
        yield hop_family(PREFIX, self.hops)
        gauges = self.gauges  # one snapshot for every gauge of this scrape
        for attr, name, text in _GAUGES:
            yield GaugeMetricFamily(PREFIX + name, text, value=int(getattr(gauges, attr)))

    def describe(self) -> Iterator[Metric]:
        return self.collect()


def _labelled(name: str, text: str, label: str,
              values: dict[Refusal, int] | dict[Drop, int] | dict[DoorKind, int]) -> CounterMetricFamily:
    family = CounterMetricFamily(name, text, labels=[label])
    for key, count in list(values.items()):
        family.add_metric([key.value], count)
    return family

