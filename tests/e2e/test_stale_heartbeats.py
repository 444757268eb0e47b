"""After a silence, a gateway serves again only once the broker says it heard one of the
heartbeats the gateway sent since the silence began: heartbeats that waited in the link
while it was cut (the broker may have declared the gateway lost meanwhile, and its Fenced
is on its way) do not open the client port for a moment.

A real gateway process against a scripted broker: a ROUTER for its frontend and an XPUB for
its pub-out, on 127.0.0.1 (OS-chosen ports). The broker's heartbeats say the number of the
gateway's last heartbeat they heard (`Heartbeat.beat`); the test chooses that number.
"""

from __future__ import annotations

import socket
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
import zmq
from prometheus_client.parser import text_string_to_metric_families

from protocol import codec
from protocol.messages import Heartbeat
from stack.children import Child, stop
from tests.e2e.cluster import ready_field, start_gateway
from tests.e2e.load import wait_until

HEARTBEAT = 0.1  # the gateway's: silent for 0.3 s (liveness 3) is down
WAIT = 10.0


@dataclass
class ScriptedBroker:
    """The broker's side of a gateway's links, played by the test."""

    router: zmq.Socket[bytes]
    xpub: zmq.Socket[bytes]
    gateway: bytes = b""  # the gateway's DEALER identity, once heard
    last_beat: int = 0  # the number of the gateway's last heartbeat heard

    def hear(self, timeout: float) -> None:
        """Take what the gateway sent within `timeout` seconds (its heartbeats' numbers; events are ignored)."""
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0 and self.router.poll(int(left * 1000)):
            frames = self.router.recv_multipart()
            if len(frames) != 2:
                continue  # an event: no worker answers in this test
            msg = codec.decode(frames[1])
            if isinstance(msg, Heartbeat) and msg.beat is not None:
                self.gateway, self.last_beat = frames[0], msg.beat

    def beat(self, heard: int) -> None:
        """A heartbeat to the gateway saying it heard the gateway's heartbeat number `heard`."""
        self.router.send_multipart([self.gateway, codec.encode(Heartbeat("broker.test", 0, True, heard))])


@pytest.fixture
def scripted() -> Iterator[ScriptedBroker]:
    ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    router, xpub = ctx.socket(zmq.ROUTER), ctx.socket(zmq.XPUB)
    for sock in (router, xpub):
        sock.setsockopt(zmq.LINGER, 0)
    try:
        router.bind("tcp://127.0.0.1:0")
        xpub.bind("tcp://127.0.0.1:0")
        yield ScriptedBroker(router, xpub)
    finally:
        router.close()
        xpub.close()
        ctx.term()


@pytest.fixture
def gateway(scripted: ScriptedBroker) -> Iterator[tuple[Child, int, str]]:
    endpoints = {"frontend": scripted.router.getsockopt_string(zmq.LAST_ENDPOINT),
                 "pub-out": scripted.xpub.getsockopt_string(zmq.LAST_ENDPOINT)}
    child, port = start_gateway(endpoints, "gwst", "--heartbeat", str(HEARTBEAT), "--liveness", "3",
                                "--metrics-listen", "127.0.0.1:0")
    try:
        yield child, port, f"http://{ready_field(child.ready_line, 'metrics')}/metrics"
    finally:
        stop(child)


def gauges(url: str) -> dict[str, float]:
    with urllib.request.urlopen(url, timeout=5) as reply:
        text = reply.read().decode()
    return {s.name: s.value for family in text_string_to_metric_families(text) for s in family.samples}


def accepting(port: int) -> bool:
    """Whether the gateway's client port takes a connection now."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False


def beat_until(scripted: ScriptedBroker, heard: int, done, what: str) -> None:  # type: ignore[no-untyped-def]
    """Heartbeat the gateway (saying `heard`) each half of its heartbeat, taking what it sends, until `done()`."""
    deadline = time.monotonic() + WAIT
    while not done():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        scripted.beat(heard)
        scripted.hear(HEARTBEAT / 2)


def test_heartbeats_from_before_a_silence_do_not_reopen_the_port(
        scripted: ScriptedBroker, gateway: tuple[Child, int, str]) -> None:
    _, port, metrics = gateway
    wait_until(lambda: scripted.hear(HEARTBEAT) or scripted.last_beat > 0, WAIT, "the gateway's first heartbeat")
    beat_until(scripted, scripted.last_beat, lambda: accepting(port), "the gateway to serve")
    before = scripted.last_beat  # the last of its heartbeats the broker heard before the cut

    # the broker falls silent (the link is cut): the gateway closes its port, and keeps beating
    wait_until(lambda: scripted.hear(HEARTBEAT) or not accepting(port), WAIT, "the port closed in the silence")
    wait_until(lambda: scripted.hear(HEARTBEAT) or scripted.last_beat > before + 3, WAIT, "beats during the silence")

    # the link is back, and what the broker queued before the cut arrives: heartbeats saying `before`
    beat_until(scripted, before, lambda: gauges(metrics).get("chat_gateway_broker_up") == 1.0,
               "the gateway to hear the broker again")
    assert gauges(metrics)["chat_gateway_serving"] == 0.0
    assert not accepting(port)

    # a heartbeat saying it heard one the gateway sent during the silence: it serves again
    beat_until(scripted, scripted.last_beat, lambda: accepting(port), "the gateway to serve again")
    wait_until(lambda: gauges(metrics).get("chat_gateway_serving") == 1.0, WAIT, "the serving gauge")


def test_a_broker_that_does_not_number_its_heartbeats_is_believed_as_before(
        scripted: ScriptedBroker, gateway: tuple[Child, int, str]) -> None:
    _, port, _ = gateway
    wait_until(lambda: scripted.hear(HEARTBEAT) or scripted.last_beat > 0, WAIT, "the gateway's first heartbeat")

    def old_beat(heard: int) -> None:  # an older broker: [7, sender]
        scripted.router.send_multipart([scripted.gateway, codec.encode(Heartbeat("broker.old"))])

    scripted.beat = old_beat  # type: ignore[method-assign]
    beat_until(scripted, 0, lambda: accepting(port), "the gateway to serve")
    wait_until(lambda: scripted.hear(HEARTBEAT) or not accepting(port), WAIT, "the port closed in the silence")
    beat_until(scripted, 0, lambda: accepting(port), "the gateway to serve again")
