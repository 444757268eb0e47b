"""Real processes for the end-to-end tests: Valkey, broker, workers, gateways.

Every endpoint is on 127.0.0.1 with a port chosen by the OS; every process
is stopped by its PID in teardown.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from stack.children import Child, python_module, start, stop
from stack.valkey import start_valkey


def ready_field(line: str, name: str) -> str:
    """The value of `name=` in a part's ready line."""
    match = re.search(rf"{name}=(\S+)", line)
    assert match, f"no {name}= in {line!r}"
    return match.group(1)


def start_broker(*args: str) -> tuple[Child, dict[str, str]]:
    child = start("broker", python_module(
        "broker.cli", "--frontend", "tcp://127.0.0.1:*", "--backend", "tcp://127.0.0.1:*",
        "--pub-in", "tcp://127.0.0.1:*", "--pub-out", "tcp://127.0.0.1:*", *args), "chat-broker ready")
    eps = {name: ready_field(child.ready_line, name) for name in ("frontend", "backend", "pub-in", "pub-out")}
    return child, eps


def start_workers(n: int, backend: str, redis_url: str, *args: str) -> Child:
    return start("workers", python_module(
        "workers.cli", "-n", str(n), "--backend", backend, "--redis-url", redis_url, *args),
        "chat-worker started")


def gateway_instance(child: Child) -> str:
    """The instance name a gateway announced: its pub-out topic without the ':'."""
    return child.ready_line.split()[1]


def start_gateway(eps: dict[str, str], name: str, *args: str) -> tuple[Child, int]:
    child = start(name, python_module(
        "gateway.cli", "--listen", "127.0.0.1:0", "--frontend", eps["frontend"],
        "--pub-out", eps["pub-out"], "--id", name, *args), f"chat-gateway {name}.")
    try:
        port = int(child.ready_line.split(" listening on ", 1)[1].split()[0].rsplit(":", 1)[1])
    except (IndexError, ValueError):
        stop(child)  # not recorded anywhere yet: it would outlive the test
        raise
    return child, port


@dataclass
class Cluster:
    redis_url: str
    endpoints: dict[str, str]
    ports: list[int]
    children: dict[str, Child] = field(default_factory=dict)
    data_dir: Path | None = None
    pair_endpoints: list[dict[str, str]] = field(default_factory=list)  # a broker pair's, each broker's own

    def stop(self) -> None:
        for name in reversed(list(self.children)):
            stop(self.children[name])


GATEWAY_ARGS = ("--rate-limit", "0")  # the tests send faster than people type
# failure tests: notice deaths in a fraction of a second
FAST = ("--heartbeat", "0.2", "--liveness", "3")
FAST_GATEWAY = (*GATEWAY_ARGS, *FAST, "--resend-after", "1")


def start_cluster(data_dir: Path, workers: int = 2, gateways: int = 2,
                  redis_url: str | None = None, gateway_args: tuple[str, ...] = GATEWAY_ARGS,
                  broker_args: tuple[str, ...] = (), worker_args: tuple[str, ...] = ()) -> Cluster:
    children: dict[str, Child] = {}
    try:
        if redis_url is None:
            children["valkey"], redis_url = start_valkey(data_dir)
        children["broker"], eps = start_broker(*broker_args)
        children["workers"] = start_workers(workers, eps["backend"], redis_url, *worker_args)
        ports = []
        for i in range(gateways):
            children[f"gw{i + 1}"], port = start_gateway(eps, f"gw{i + 1}", *gateway_args)
            ports.append(port)
    except BaseException:
        for child in reversed(list(children.values())):
            stop(child)
        raise
    return Cluster(redis_url, eps, ports, children, data_dir)


def start_fast_cluster(data_dir: Path, workers: int = 2, gateways: int = 2,
                       gateway_args: tuple[str, ...] = ()) -> Cluster:
    """A cluster whose parts notice a death within about a second."""
    return start_cluster(data_dir, workers, gateways, gateway_args=(*FAST_GATEWAY, *gateway_args),
                         broker_args=FAST, worker_args=(*FAST, "--redis-timeout", "0.25"))


def _pair_endpoints(pair: list[dict[str, str]]) -> dict[str, str]:
    return {name: ",".join(eps[name] for eps in pair) for name in ("frontend", "backend", "pub-out")}


def start_pair_cluster(data_dir: Path, workers: int = 2, gateways: int = 2,
                       wait_for_lease: Callable[[str], None] | None = None) -> Cluster:
    """A broker pair on one Valkey: `broker-a` starts first and (once `wait_for_lease` says
    it holds the lease) `broker-b` stands by; workers and gateways get both brokers' endpoints.
    `endpoints` are the pair's, comma-separated; each broker's own are `pair_endpoints`."""
    children: dict[str, Child] = {}
    try:
        children["valkey"], redis_url = start_valkey(data_dir)
        pair = []
        for name in ("broker-a", "broker-b"):
            children[name], own = start_broker(*FAST, "--redis-url", redis_url)
            pair.append(own)
            if wait_for_lease is not None and name == "broker-a":
                wait_for_lease(redis_url)
        eps = _pair_endpoints(pair)
        children["workers"] = start_workers(workers, eps["backend"], redis_url, *FAST, "--redis-timeout", "0.25")
        ports = []
        for i in range(gateways):
            children[f"gw{i + 1}"], port = start_gateway(eps, f"gw{i + 1}", *FAST_GATEWAY)
            ports.append(port)
    except BaseException:
        for child in reversed(list(children.values())):
            stop(child)
        raise
    return Cluster(redis_url, eps, ports, children, data_dir, pair)
