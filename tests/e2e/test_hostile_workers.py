"""The workers against an unlucky operator and an attacker, with real processes:
Redis killed under steady load, envelopes forged straight to the broker."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator

import pytest
import zmq

from protocol import codec
from protocol.messages import MAX_EVENT_LINES, Batch, Connected, Deliver, Lines, Mark, topic_of
from stack.valkey import start_valkey
from tests.e2e.chatclient import ChatClient
from tests.e2e.cluster import Cluster, gateway_instance, start_fast_cluster
from tests.e2e.test_chat import named

SERVED = "* #steady (1): steady"
REFUSED = "! service temporarily unavailable"


@pytest.fixture
def one_worker(tmp_path) -> Iterator[Cluster]:  # type: ignore[no-untyped-def]
    """One worker process, so that it sees every /who of the load (4 a second, under the cooldown)."""
    c = start_fast_cluster(tmp_path / "valkey", workers=1, gateways=1)
    yield c
    c.stop()


def _who_for(client: ChatClient, seconds: float) -> list[tuple[float, str]]:
    """/who about 4 times a second for `seconds` -> (when read, reply) pairs; the reads pace the load."""
    out: list[tuple[float, str]] = []
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        client.send("/who")
        tick = time.monotonic() + 0.25
        while (line := client.read_line(tick)) is not None:
            out.append((time.monotonic(), line))
    return out


def test_redis_killed_and_restarted_under_steady_load_serves_again_within_a_second(one_worker) -> None:
    a = ChatClient(one_worker.ports[0])
    a.send("/nick steady", "/join #steady")
    a.expect(lambda line: line.startswith("* you joined #steady"))
    try:
        valkey = one_worker.children["valkey"]
        os.kill(valkey.pid, signal.SIGKILL)
        valkey.proc.wait(5)
        down = _who_for(a, 2.0)
        assert down and all(line == REFUSED for _, line in down), down[:5]
        one_worker.children["valkey"], _ = start_valkey(one_worker.data_dir)  # returns once it answers
        back_at = time.monotonic()
        after = _who_for(a, 4.0)
    finally:
        a.close()
    served = [at - back_at for at, line in after if line == SERVED]
    assert served, f"never served again under load: {after[-3:]}"
    assert served[0] < 2.0, f"served again only after {served[0]:.1f}s"  # about the cooldown, with slack
    last_refused = max((at - back_at for at, line in after if line == REFUSED), default=0.0)
    assert last_refused <= served[0], "refused again after it was served"
    assert len(served) >= 8  # and it stays served


class ForgedGateway:
    """A DEALER on the broker's frontend that calls itself a gateway, and a SUB on its pub-out topic."""

    def __init__(self, cluster: Cluster, name: str) -> None:
        self.name = name
        self.ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
        self.dealer = self.ctx.socket(zmq.DEALER)
        self.dealer.setsockopt(zmq.LINGER, 0)
        self.dealer.setsockopt_string(zmq.IDENTITY, name)
        self.dealer.connect(cluster.endpoints["frontend"])
        self.sub = self.ctx.socket(zmq.SUB)
        self.sub.setsockopt(zmq.LINGER, 0)
        self.sub.setsockopt(zmq.SUBSCRIBE, topic_of(name))
        self.sub.connect(cluster.endpoints["pub-out"])

    def send(self, event: Connected | Lines) -> None:
        self.dealer.send_multipart(codec.event_frames(event))

    def send_as(self, key: tuple[str, int], event: Lines) -> None:
        """An event under the key of another (the broker routes on the key alone)."""
        self.dealer.send_multipart([codec.encode_key(*key), codec.encode(event)])

    def answer(self, cid: str, seq: int, timeout: float = 10.0) -> list[str]:
        """Wait for the Mark of event `seq` -> the texts delivered to `cid` after it."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.sub.poll(int(max(0.0, deadline - time.monotonic()) * 1000)):
                break
            _, _, raw = self.sub.recv_multipart()
            batch = codec.decode(raw)
            assert isinstance(batch, Batch)
            texts, marked = [], False
            for item in batch.items:
                if isinstance(item, Mark):
                    marked = item.cid == cid and item.seq == seq
                elif marked and isinstance(item, Deliver) and cid in item.cids:
                    texts.append(item.event.text)
            if any(isinstance(i, Mark) and i.cid == cid and i.seq == seq for i in batch.items):
                return texts
        raise AssertionError(f"no answer to event {seq} of {cid}")

    def close(self) -> None:
        self.dealer.close()
        self.sub.close()
        self.ctx.term()


def _until_subscribed(forged: ForgedGateway, cid: str) -> None:
    """Send the Connected until its answer arrives (a SUB misses what precedes its subscription)."""
    for _ in range(20):
        forged.send(Connected(cid, 0, "203.0.113.9:1"))
        try:
            forged.answer(cid, 0, timeout=0.5)
            return
        except AssertionError:
            continue
    raise AssertionError("the forged gateway's connect was never answered")


def test_forged_envelopes_cannot_store_long_lines_or_flood(cluster, connect, unique) -> None:
    room = f"#forge{unique}"
    b = named(connect, 0, f"fb{unique}")
    b.join(room)
    forged = ForgedGateway(cluster, f"forge{unique}.x")
    cid = f"{forged.name}:1"
    try:
        _until_subscribed(forged, cid)
        forged.send(Lines(cid, 1, (f"/join {room}",)))
        assert forged.answer(cid, 1)[0].startswith(f"you joined {room}")
        forged.send(Lines(cid, 2, ("x" * 100_000, "y" * 4097)))
        assert forged.answer(cid, 2) == ["line too long (max 4096 bytes)"] * 2
        forged.send(Lines(cid, 4, (" ",) * MAX_EVENT_LINES + ("never handled",)))
        assert forged.answer(cid, 4) == [f"too many lines at once (max {MAX_EVENT_LINES}): the rest were dropped"]
        forged.send(Lines(cid, 4 + MAX_EVENT_LINES + 1, ("fine",)))
        forged.answer(cid, 4 + MAX_EVENT_LINES + 1)
    finally:
        forged.close()
    got = b.expect(lambda line: line.endswith("> fine"))
    assert all("xxxx" not in line and "yyyy" not in line and "never" not in line for line in b.seen)
    b.send(f"/history {room}")
    assert b.expect(lambda line: line.startswith("* history of")) == f"* history of {room}: 1 message"
    assert b.expect(lambda line: line.endswith("> fine")) == got
    for name, child in cluster.children.items():
        assert child.proc.poll() is None, f"{name} died"


def test_a_body_naming_another_gateways_connection_is_not_served(cluster, connect, unique) -> None:
    """The broker checks the key's cid against the sender, the worker the body against the key:
    a gateway cannot speak for another's connection by naming it in the body only."""
    room = f"#as{unique}"
    victim, watcher = named(connect, 0, f"va{unique}"), named(connect, 0, f"vw{unique}")
    for client in (victim, watcher):
        client.join(room)
    forged = ForgedGateway(cluster, f"forge{unique}.y")
    cid = f"{forged.name}:1"
    other = gateway_instance(cluster.children["gw1"])
    try:
        _until_subscribed(forged, cid)
        for n in range(1, 21):  # the victim's connection is one of the first of its gateway
            forged.send_as((cid, n), Lines(f"{other}:{n}", n, (f"/join {room}", "forged words")))
        forged.send(Lines(cid, 21, ("/ping",)))  # our turn was given back: the next event is served
        forged.answer(cid, 21)
    finally:
        forged.close()
    victim.send("after")
    watcher.expect(f"{room} <va{unique}> after")
    assert not any("forged" in line for line in watcher.seen + victim.seen)


def test_msg_to_yourself_is_shown_once_in_text_and_json_mode(connect, unique) -> None:
    text = named(connect, 0, f"st{unique}")
    text.send(f"/msg st{unique} note to self")
    assert text.sync() == [f"*st{unique}* note to self"]
    js = named(connect, 1, f"sj{unique}")
    js.send("/json")
    js.expect('{"type": "info", "text": "json mode on", "code": "json_on"}')
    js.send(f"/msg sj{unique} json note")
    before_pong = js.sync()
    privates = [line for line in before_pong if '"type": "private"' in line]
    assert len(privates) == 1 and '"text": "json note"' in privates[0], before_pong
