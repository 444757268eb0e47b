"""The broker's frozen config: where it binds, its heartbeat and liveness window,
and the limits of its sockets (parsed by broker.cli)."""

from __future__ import annotations

from dataclasses import dataclass

from stack.curve import ServerKeys

MAX_MESSAGE = 64 << 20  # default bound of one frame from any peer (ZMQ_MAXMSGSIZE)


@dataclass(frozen=True, slots=True)
class BrokerConfig:
    frontend: str = "tcp://127.0.0.1:5555"
    backend: str = "tcp://127.0.0.1:5556"
    pub_in: str = "tcp://127.0.0.1:5557"
    pub_out: str = "tcp://127.0.0.1:5558"
    heartbeat: float = 1.0
    liveness: int = 3
    hwm: int = 100_000
    max_message: int = MAX_MESSAGE
    curve: ServerKeys | None = None  # None: plain links
