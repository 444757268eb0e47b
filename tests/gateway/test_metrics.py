"""The gateway's metric set: fixed labels from the start, and the latency histogram."""

from __future__ import annotations

import re

from prometheus_client import generate_latest

from gateway.metrics import LATENCY_BUCKETS, Drop, GatewayMetrics, Gauges, Histogram, Refusal


def _scrape(metrics: GatewayMetrics) -> str:
    return generate_latest(metrics.registry()).decode()


def _value(text: str, sample: str) -> float:
    match = re.search(rf"^{re.escape(sample)} (\S+)$", text, re.MULTILINE)
    assert match, f"no {sample} in the scrape"
    return float(match.group(1))


def test_every_reason_and_cause_is_exposed_from_the_start_with_a_tidy_label() -> None:
    text = _scrape(GatewayMetrics())
    for reason in Refusal:
        assert re.fullmatch(r"[a-z][a-z_]*", reason.value), reason
        assert _value(text, f'chat_gateway_connections_refused_total{{reason="{reason.value}"}}') == 0
    for cause in Drop:
        assert re.fullmatch(r"[a-z][a-z_]*", cause.value), cause
        assert _value(text, f'chat_gateway_drops_total{{cause="{cause.value}"}}') == 0


def test_the_fixed_set_is_exposed() -> None:
    text = _scrape(GatewayMetrics())
    for sample in ("chat_gateway_connections_accepted_total", "chat_gateway_health_checks_total",
                   "chat_gateway_lines_in_total", "chat_gateway_deliveries_out_total",
                   "chat_gateway_events_sent_total", "chat_gateway_events_resent_total",
                   "chat_gateway_fences_total", "chat_gateway_connections", "chat_gateway_events_in_flight",
                   "chat_gateway_broker_up", "chat_gateway_serving", "chat_gateway_connections_parked",
                   "chat_gateway_event_latency_seconds_count"):
        assert _value(text, sample) == 0, sample


def test_counts_and_gauges_show_in_the_scrape() -> None:
    metrics = GatewayMetrics()
    metrics.refuse(Refusal.PER_ADDRESS)
    assert metrics.drop(Drop.SEQUENCE_GAP, 5) == 5
    metrics.lines_in += 3
    metrics.gauges = Gauges(connections=7, in_flight=2, broker_up=True, serving=True, parked=5)
    text = _scrape(metrics)
    assert _value(text, 'chat_gateway_connections_refused_total{reason="per_address"}') == 1
    assert _value(text, 'chat_gateway_drops_total{cause="sequence_gap"}') == 5
    assert _value(text, "chat_gateway_lines_in_total") == 3
    assert _value(text, "chat_gateway_connections") == 7
    assert _value(text, "chat_gateway_events_in_flight") == 2
    assert _value(text, "chat_gateway_connections_parked") == 5
    assert _value(text, "chat_gateway_broker_up") == 1


def test_the_histogram_is_cumulative_with_inf_last() -> None:
    hist = Histogram(LATENCY_BUCKETS)
    for value in (0.0001, 0.00025, 0.0003, 0.7, 9.0):
        hist.observe(value)
    buckets = dict(hist.buckets())
    assert buckets["0.00025"] == 2  # le: the bound itself counts
    assert buckets["0.0005"] == 3
    assert buckets["1.0"] == 4
    assert buckets["5.0"] == 4 and buckets["+Inf"] == 5
    assert abs(hist.total - 9.70065) < 1e-9
    metrics = GatewayMetrics()
    metrics.latency = hist
    text = _scrape(metrics)
    assert _value(text, "chat_gateway_event_latency_seconds_count") == 5
    assert _value(text, 'chat_gateway_event_latency_seconds_bucket{le="+Inf"}') == 5


def test_connections_are_counted_by_door() -> None:
    from protocol.doors import DoorKind

    metrics = GatewayMetrics()
    metrics.accepted_by_door[DoorKind.IRC] += 2
    text = _scrape(metrics)
    assert _value(text, 'chat_gateway_door_connections_total{door="irc"}') == 2
    assert _value(text, 'chat_gateway_door_connections_total{door="line"}') == 0
    assert _value(text, 'chat_gateway_door_connections_total{door="ws"}') == 0
