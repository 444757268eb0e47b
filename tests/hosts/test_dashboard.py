"""deploy/grafana-dashboard.json: valid JSON in Grafana's dashboard shape, and every metric
it queries (and every label it groups or filters by) is one the parts really serve: scraped
from a real broker, worker pool and gateway on loopback, and the probe's own registry."""

from __future__ import annotations

import json
import re
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from stack.children import python_module, start
from stack.probe import ProbeMetrics, ProbeResult
from tests.e2e.cluster import Cluster, start_cluster
from tests.e2e.load import wait_until

DASHBOARD = Path(__file__).resolve().parents[2] / "deploy" / "grafana-dashboard.json"
METRICS = ("--metrics-listen", "127.0.0.1:0")
NAME = re.compile(r"\bchat_[a-z0-9_]+")
GROUPED = re.compile(r"\bby \(([^)]*)\)")
MATCHED = re.compile(r"\{([^}]*)\}")
PROMQL_LABELS = {"le", "instance", "job"}  # added by histograms and by Prometheus itself


def samples(text: str) -> dict[str, set[str]]:
    """Exposition text -> sample name -> its label names."""
    found: dict[str, set[str]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found.setdefault(sample.name, set()).update(sample.labels)
    return found


def scrape(address: str) -> str:
    with urllib.request.urlopen(f"http://{address}/metrics", timeout=5) as reply:
        return str(reply.read().decode())


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, set[str]]]:
    """Every sample the parts serve, with its label names."""
    c: Cluster = start_cluster(tmp_path_factory.mktemp("dash"), workers=1, gateways=1,
                               broker_args=METRICS, gateway_args=("--rate-limit", "0", *METRICS))
    try:
        worker = start("metrics-workers", python_module(
            "workers.cli", "--backend", c.endpoints["backend"], "--redis-url", c.redis_url, *METRICS),
            "chat-worker metrics on")
        c.children["metrics-workers"] = worker
        broker = c.children["broker"].ready_line.rsplit("metrics=", 1)[1]
        # `chat-gateway metrics on HOST:PORT` (the cluster waits for any chat-gateway line) or the ready line
        gateway = c.children["gw1"].ready_line.split()[-1].removeprefix("metrics=")
        workers = worker.ready_line.rsplit(" ", 1)[1]
        wait_until(lambda: "chat_worker_events_total" in scrape(workers), 20, "the worker process's metrics")
        probe = ProbeMetrics()
        probe.record(ProbeResult(True, 0.01, "#chat-probe"))
        probe.record(ProbeResult(False, 0.0, "timeout"))
        found: dict[str, set[str]] = {}
        for text in (scrape(broker), scrape(gateway), scrape(workers), generate_latest(probe.registry).decode()):
            for name, labels in samples(text).items():
                found.setdefault(name, set()).update(labels)
        yield found
    finally:
        c.stop()


def expressions() -> list[str]:
    dashboard = json.loads(DASHBOARD.read_text())
    exprs = []
    for panel in dashboard["panels"]:
        assert {"id", "type", "title", "gridPos"} <= set(panel), panel
        exprs += [target["expr"] for target in panel.get("targets", [])]
    return exprs


def test_the_dashboard_is_grafana_json() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    assert dashboard["uid"] and dashboard["title"] and isinstance(dashboard["schemaVersion"], int)
    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    assert len(expressions()) >= 30


def test_every_queried_metric_and_label_is_served(served: dict[str, set[str]]) -> None:
    queried = set()
    for expr in expressions():
        names = set(NAME.findall(expr))
        assert names, expr
        missing = names - set(served)
        assert not missing, f"{expr}: not served: {missing}"
        queried |= names
        labels = set().union(*(served[name] for name in names))
        for group in GROUPED.findall(expr):
            used = {label.strip() for label in group.split(",")} - PROMQL_LABELS
            assert used <= labels, f"{expr}: no label {used - labels}"
        for matcher in MATCHED.findall(expr):
            used = {m.split("=")[0].strip() for m in matcher.split(",")}
            assert used <= labels, f"{expr}: no label {used - labels}"
    for part in ("chat_broker_", "chat_gateway_", "chat_worker_", "chat_probe_"):
        assert any(name.startswith(part) for name in queried), f"no panel for {part}*"
