"""Fixtures of the gateway's tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import zmq

from tests.e2e.cluster import Cluster, start_cluster


@pytest.fixture
def ctx() -> Iterator[zmq.Context[zmq.Socket[bytes]]]:
    """A ZeroMQ context for a gateway run in the test's own thread, terminated after it."""
    context: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    yield context
    context.term()


@pytest.fixture(scope="module")
def backend(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """Valkey, a broker and a worker for a module's gateways (the tests start their own)."""
    cluster = start_cluster(tmp_path_factory.mktemp("backend"), workers=1, gateways=0)
    try:
        yield cluster
    finally:
        cluster.stop()
