"""A real Broker in the test's own thread, on OS-chosen loopback ports, and what it counted."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import zmq

from broker.config import BrokerConfig
from broker.metrics import Drop
from broker.server import Broker

ANY = "tcp://127.0.0.1:*"


@contextmanager
def running_broker(config: BrokerConfig | None = None) -> Iterator[Broker]:
    """A broker (its sockets bound, its loop not run: a test drives its handlers), closed after."""
    ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    b = Broker(config or BrokerConfig(ANY, ANY, ANY, ANY), ctx)
    try:
        yield b
    finally:
        b.close()
        ctx.term()


def drops(broker: Broker) -> dict[Drop, int]:
    """The broker's drops so far, by cause (the causes it has not counted left out)."""
    return {cause: n for cause, n in broker.metrics.drops.items() if n}
