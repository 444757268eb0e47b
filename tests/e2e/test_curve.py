"""CURVE across the real parts: chat works with keys, and nothing passes without the right key."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import zmq

from stack.certs import write_key_pair
from stack.children import python_module
from stack.curve import StackKeys, connect_curve, make_stack_keys
from tests.e2e.chatclient import ChatClient
from tests.e2e.cluster import Cluster, start_cluster, start_gateway

QUIET = 1.0  # seconds in which an eavesdropper may get nothing


@pytest.fixture
def keys(tmp_path: Path) -> StackKeys:
    made = make_stack_keys(tmp_path)
    public, _ = write_key_pair(tmp_path / "keys", "pub", "publisher")
    (made.clients / public.name).write_bytes(public.read_bytes())
    write_key_pair(tmp_path / "keys", "stranger", "gateway")  # not admitted
    return made


@pytest.fixture
def cluster(tmp_path: Path, keys: StackKeys) -> Iterator[Cluster]:
    server = ("--curve-server", str(keys.broker_public))
    c = start_cluster(tmp_path / "valkey", workers=1, gateways=2,
                      broker_args=("--curve-secret", str(keys.broker_secret), "--curve-clients", str(keys.clients)),
                      worker_args=("--curve-secret", str(keys.worker_secret), *server),
                      gateway_args=("--rate-limit", "0", "--curve-secret", str(keys.gateway_secret), *server))
    try:
        yield c
    finally:
        c.stop()


def eavesdropper(ctx: zmq.Context[zmq.Socket[bytes]], endpoint: str, secret: Path | None,
                 server: Path) -> zmq.Socket[bytes]:
    sub = ctx.socket(zmq.SUB)
    sub.setsockopt(zmq.LINGER, 0)
    if secret is not None:
        connect_curve(sub, secret, server)
    sub.setsockopt(zmq.SUBSCRIBE, b"")
    sub.connect(endpoint)
    return sub


def test_chat_over_curve_and_no_eavesdropping(cluster: Cluster, keys: StackKeys) -> None:
    ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    spies = [eavesdropper(ctx, cluster.endpoints["pub-out"], secret, keys.broker_public)
             for secret in (None, keys.broker_secret.parent / "pub.key_secret",
                            keys.broker_secret.parent / "stranger.key_secret")]
    try:
        with ChatClient(cluster.ports[0]) as alice, ChatClient(cluster.ports[1]) as bob:
            alice.send("/nick alice")
            alice.expect("* you are now alice")
            bob.send("/nick bob")
            bob.expect("* you are now bob")
            alice.send("/msg bob psst")
            assert bob.expect(lambda line: line.startswith("*alice")) == "*alice* psst"
        for spy in spies:
            assert spy.poll(int(QUIET * 1000)) == 0
    finally:
        for spy in spies:
            spy.close()
        ctx.term()


def test_a_gateway_with_an_unknown_key_serves_nobody(cluster: Cluster, keys: StackKeys) -> None:
    stranger = keys.broker_secret.parent / "stranger.key_secret"
    child, port = start_gateway(cluster.endpoints, "intruder", "--curve-secret", str(stranger),
                                "--curve-server", str(keys.broker_public))
    cluster.children["intruder"] = child
    with ChatClient(port, greet=False) as client:
        assert client.read_line(time.monotonic() + QUIET) is None  # never registered


@pytest.mark.parametrize("part", ["gateway.cli", "workers.cli"])
def test_a_part_given_the_wrong_key_says_so_and_exits(part: str, keys: StackKeys) -> None:
    wrong = keys.worker_secret if part == "gateway.cli" else keys.gateway_secret
    result = subprocess.run(
        python_module(part, "--curve-secret", str(wrong), "--curve-server", str(keys.broker_public)),
        check=False, capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
    assert result.returncode == 1
    assert "key; this part needs a" in result.stderr


def test_half_a_configuration_is_refused(keys: StackKeys) -> None:
    result = subprocess.run(python_module("broker.cli", "--curve-secret", str(keys.broker_secret)),
                            check=False, capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
    assert result.returncode == 1 and "give both --curve-secret and --curve-clients" in result.stderr
