"""Fixtures of the gateway's tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import zmq


@pytest.fixture
def ctx() -> Iterator[zmq.Context[zmq.Socket[bytes]]]:
    """A ZeroMQ context for a gateway run in the test's own thread, terminated after it."""
    context: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    yield context
    context.term()
