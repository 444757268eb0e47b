from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator

import pytest

from tests.e2e.chatclient import ChatClient
from tests.e2e.cluster import Cluster, start_cluster
from tests.e2e.doors import DoorCluster, start_door_cluster

_names = itertools.count(1)


@pytest.fixture(scope="session")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """Valkey, a broker, `chat-worker -n 2` and two gateways, for the whole session."""
    c = start_cluster(tmp_path_factory.mktemp("valkey"), workers=2, gateways=2)
    yield c
    c.stop()


@pytest.fixture
def unique() -> str:
    """A fresh suffix for nicks and rooms, so tests sharing the cluster never meet."""
    return f"t{next(_names)}"


@pytest.fixture
def connect(cluster: Cluster) -> Iterator:
    """connect(gateway_index) -> a ChatClient on that gateway, closed after the test."""
    clients: list[ChatClient] = []

    def _connect(gateway: int = 0, greet: bool = True) -> ChatClient:
        client = ChatClient(cluster.ports[gateway], greet=greet)
        clients.append(client)
        return client

    yield _connect
    for client in clients:
        client.close()


@pytest.fixture(scope="module")
def doors(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DoorCluster]:
    """A cluster whose gateways also open their IRC and WebSocket doors, for one module."""
    cluster = start_door_cluster(tmp_path_factory.mktemp("valkey"))
    yield cluster
    cluster.stop()


@pytest.fixture
def line(doors: DoorCluster) -> Iterator[Callable[..., ChatClient]]:
    """line(gateway_index) -> a line-protocol client on the door cluster, closed after the test."""
    clients: list[ChatClient] = []

    def _connect(gateway: int = 1) -> ChatClient:
        clients.append(ChatClient(doors.ports[gateway]))
        return clients[-1]

    yield _connect
    for client in clients:
        client.close()
