"""The broker's frontend as a door: someone who is not a gateway (no CURVE here) sends
thousands of frames, an even count, empty frames, more events than the bound, large
ones, others' connection IDs. Real processes on loopback (Valkey, broker, a worker, a
gateway, clients): each bad message is counted under its cause, the broker stays small
and up, and the clients keep chatting through it.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
import zmq

from protocol import codec
from protocol.messages import Connected
from stack.children import Child, python_module, start, stop
from stack.frames import MAX_EVENTS, send_frames
from stack.valkey import start_valkey
from tests.e2e.chatclient import ChatClient
from tests.e2e.cluster import FAST, GATEWAY_ARGS, ready_field, start_gateway, start_workers
from tests.e2e.load import wait_until
from tests.e2e.scrape import Scrape

ANY = "tcp://127.0.0.1:*"
DROPS = 'chat_broker_drops_total{{cause="{}"}}'


@pytest.fixture
def parts(tmp_path: Path) -> Iterator[tuple[dict[str, str], Scrape, int, int]]:
    """-> (the broker's endpoints, its scrape, a gateway's client port, the broker's PID)."""
    children: list[Child] = []
    try:
        valkey, redis_url = start_valkey(tmp_path / "valkey")
        children.append(valkey)
        broker = start("broker", python_module(
            "broker.cli", "--frontend", ANY, "--backend", ANY, "--pub-in", ANY, "--pub-out", ANY,
            "--metrics-listen", "127.0.0.1:0", *FAST), "chat-broker ready")
        children.append(broker)
        eps = {name: ready_field(broker.ready_line, name) for name in ("frontend", "backend", "pub-in", "pub-out")}
        children.append(start_workers(1, eps["backend"], redis_url, *FAST))
        gateway, port = start_gateway(eps, "gw1", *GATEWAY_ARGS, *FAST)
        children.append(gateway)
        yield eps, Scrape(ready_field(broker.ready_line, "metrics")), port, broker.pid
    finally:
        for child in reversed(children):
            stop(child)


@pytest.fixture
def intruder(parts) -> Iterator[zmq.Socket[bytes]]:  # type: ignore[no-untyped-def]
    ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.IDENTITY, b"gw9.evil")
    sock.connect(parts[0]["frontend"])
    try:
        yield sock
    finally:
        sock.close()
        ctx.term()


def _foreign_events(count: int) -> list[bytes]:
    """[key, event, ...] for connections of gw1's name: not the intruder's to speak for."""
    frames: list[bytes] = []
    for n in range(count):
        frames += codec.event_frames(Connected(f"gw1.forged:{n}", 0, "127.0.0.1:9"))
    return frames


def test_hostile_frontend_messages_cost_only_themselves(parts, intruder) -> None:  # type: ignore[no-untyped-def]
    _, scrape, port, broker_pid = parts
    a, b = ChatClient(port), ChatClient(port)
    with a, b:
        for client, nick in ((a, "ann"), (b, "bob")):
            client.send(f"/nick {nick}")
            client.expect(f"* you are now {nick}")
            client.join("#door")
        before = psutil.Process(broker_pid).memory_info().rss
        refused = 0
        # with the identity the broker sees one frame more: odd past the bound, even, even, the bound + 1
        for count in (10_000, 10_001, 5, 2 * (MAX_EVENTS + 1)):
            send_frames(intruder, [b""] * count if count != 2 * (MAX_EVENTS + 1) else _foreign_events(MAX_EVENTS + 1),
                        block=True)
            refused += 1
        large = [b"k" * 20, b"\xc1" * (64 << 10)] * (MAX_EVENTS + 1)
        for _ in range(20):  # 4 MiB messages of 65 events: refused whole, one by one
            send_frames(intruder, large, block=True)
            refused += 1
        send_frames(intruder, [b"", b"body", b"short", b"body", *_foreign_events(2)], block=True)  # within the bound
        wait_until(lambda: scrape.value(DROPS.format("wrong_frame_count")) == refused, 10, "the refusals counted")
        wait_until(lambda: scrape.value(DROPS.format("malformed")) == 2
                   and scrape.value(DROPS.format("foreign_connection_id")) == 2, 10, "each event counted")
        assert psutil.Process(broker_pid).memory_info().rss - before < 64 << 20
        a.send("still here")
        b.expect("#door <ann> still here")
    assert scrape.value("chat_broker_gateways_lost_total") == 0
    # the gauges are copied at each heartbeat tick: the first may not have come yet
    wait_until(lambda: scrape.value("chat_broker_gateways_alive") >= 1, 10, "the gateway counted alive")
