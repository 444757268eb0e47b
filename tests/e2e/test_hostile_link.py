"""Faults on the gateway <-> broker link that must not outlive their cause.

Real processes on loopback: a subscriber that does not read, a gateway
paused past the liveness window, every peer of the broker silent at once,
and a huge frame sent to the broker.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from collections.abc import Iterator

import psutil
import zmq

from protocol.messages import GATEWAY_GONE
from tests.e2e.chatclient import ChatClient
from tests.e2e.cluster import FAST, FAST_GATEWAY, Cluster, start_cluster, start_fast_cluster
from tests.e2e.load import RoomLoad, wait_until

RECONNECT = f"! {GATEWAY_GONE}"


@contextlib.contextmanager
def paused(*pids: int) -> Iterator[None]:
    """SIGSTOP the processes; SIGCONT them on the way out, whatever happened."""
    try:
        for pid in pids:
            os.kill(pid, signal.SIGSTOP)
        yield
    finally:
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)


def pool_pids(cluster: Cluster) -> list[int]:
    """The worker pool: its supervisor and every worker process."""
    parent = psutil.Process(cluster.children["workers"].pid)
    return [parent.pid, *(p.pid for p in parent.children(recursive=True))]


def named(port: int, nick: str) -> ChatClient:
    c = ChatClient(port)
    c.send(f"/nick {nick}")
    c.expect(f"* you are now {nick}")
    return c


def chats(port: int, nick: str, room: str, peer: ChatClient) -> bool:
    """A new client on `port` can take `nick`, join `room` and reach `peer`."""
    try:
        c = named(port, nick)
    except (AssertionError, OSError):
        return False
    with c:
        c.join(room)
        c.send("still here")
        peer.expect(lambda line: line == f"{room} <{nick}> still here"
                    or (line.startswith("{") and f'"from": "{nick}", "text": "still here"' in line))
    return True


def test_a_subscriber_that_subscribes_to_everything_and_never_reads_hurts_nobody(tmp_path) -> None:
    c = start_cluster(tmp_path / "v", gateways=2, broker_args=("--hwm", "100"))
    ctx = zmq.Context()
    sloth = ctx.socket(zmq.SUB)
    try:
        sloth.setsockopt(zmq.RCVHWM, 10)
        sloth.setsockopt(zmq.RCVBUF, 4096)
        sloth.setsockopt(zmq.LINGER, 0)
        sloth.setsockopt(zmq.SUBSCRIBE, b"")  # every topic: its full pipe would fail every send
        sloth.connect(c.endpoints["pub-out"])
        _push_megabytes(c.ports[1], 24)  # through the sloth's pipe too, if it got everything
        clients = [ChatClient(c.ports[i % 2]) for i in range(4)]
        load = RoomLoad("#sl", clients[:2], clients[2:], "sl", count=300, interval=0.002)
        load.join()
        load.start(time.monotonic() + 60)
        verdict = load.finish(60)
        assert verdict.ok() and verdict.delivered == verdict.expected, verdict.line("sloth subscriber")
        for client in clients:
            client.close()
    finally:
        sloth.close()
        ctx.term()
        c.stop()


def _push_megabytes(port: int, megabytes: int) -> None:
    """Fat /history replies to one client that reads them: about `megabytes` MB on pub-out."""
    with ChatClient(port) as c:
        c.join("#fat")
        c.send(*(f"{n} {'x' * 4000}" for n in range(100)))
        c.sync(timeout=30)
        for _ in range(megabytes * 10 // 4):
            c.send("/history #fat 100")
            c.sync(timeout=30)


def test_a_stalled_gateway_costs_only_itself_and_rejoins(tmp_path) -> None:
    """A gateway stopped while fat deliveries pile up for it: the other gateway's
    clients get everything, promptly; the stalled one is fenced, tells its clients
    and serves again under a new name once it runs."""
    slow_liveness = ("--heartbeat", "0.5", "--liveness", "120")  # only the full pipe can reveal it
    c = start_cluster(tmp_path / "v", gateways=2, broker_args=("--hwm", "100", *slow_liveness),
                      gateway_args=("--rate-limit", "0", "--max-waiting-lines", "100000", *slow_liveness))
    try:
        target = named(c.ports[0], "target")  # in the room, never reads again: only a sink
        target.join("#st")
        calm = named(c.ports[0], "calm")  # idle on the stalled gateway: must be told
        flooder = named(c.ports[1], "flooder")
        clients = [ChatClient(c.ports[1]) for _ in range(3)]
        load = RoomLoad("#st", clients[:2], clients[2:], "st", count=300, interval=0.005)
        load.join()
        with paused(c.children["gw1"].pid):
            _flood(flooder, "target", 6000)  # fills the TCP buffers towards the stalled gateway
            flooder.sync(timeout=30)
            started = time.monotonic()
            load.start(time.monotonic() + 60)  # one batch for the stalled gateway per message
            verdict = load.finish(60)
            assert verdict.ok() and verdict.delivered == verdict.expected, verdict.line("stalled gateway")
            assert time.monotonic() - started < 30
        assert RECONNECT in calm.wait_closed(15)
        wait_until(lambda: chats(c.ports[0], "thawed", "#st", clients[2]), 15, "the gateway to serve again")
        target.close()
    finally:
        c.stop()


def _flood(client: ChatClient, target: str, count: int) -> None:
    line = f"/msg {target} {'x' * 4000}\n".encode()
    for _ in range(count // 100):
        client.send_raw(line * 100)


def test_a_gateway_paused_past_the_window_rejoins_under_a_new_name(tmp_path) -> None:
    c = start_fast_cluster(tmp_path / "v", workers=1, gateways=2)
    try:
        stuck = named(c.ports[0], "stuck")
        idle = ChatClient(c.ports[0])  # says nothing: must be told too
        witness = named(c.ports[1], "witness")
        for client in (stuck, witness):
            client.join("#zz")
        with paused(c.children["gw1"].pid):
            witness.expect("* stuck quit (connection lost)", timeout=10)
        assert RECONNECT in stuck.wait_closed(10)
        assert RECONNECT in idle.wait_closed(10)
        wait_until(lambda: chats(c.ports[0], "stuck", "#zz", witness), 15, "the gateway to serve again")
    finally:
        c.stop()


def test_everyone_silent_at_once_is_a_pause_not_a_purge(tmp_path) -> None:
    """Every gateway and the whole worker pool stopped past the window: the broker
    suspects its own link, reaps nobody, and the chat goes on with nothing lost."""
    c = start_fast_cluster(tmp_path / "v", workers=2, gateways=2)
    try:
        clients = [ChatClient(c.ports[i % 2]) for i in range(4)]
        load = RoomLoad("#ps", clients[:2], clients[2:], "ps", count=150, interval=0.005)
        load.join()
        load.start(time.monotonic() + 60)
        wait_until(lambda: load.delivered() > 100, 20, "the stream to flow")
        pids = [c.children["gw1"].pid, c.children["gw2"].pid, *pool_pids(c)]
        with paused(*pids):
            time.sleep(2.0)  # the fault itself: silent for three times the window (0.6 s)
        verdict = load.finish(45)
        assert verdict.ok() and verdict.delivered == verdict.expected, verdict.line("all paused")
        assert not any(cl.closed for cl in clients)
        clients[0].send("/who #ps")
        clients[0].expect_json(lambda o: o["type"] == "info" and o["text"].startswith("#ps (4)"))
        for client in clients:
            client.close()
    finally:
        c.stop()


def test_a_huge_frame_is_refused_and_the_broker_stays_small(tmp_path) -> None:
    c = start_cluster(tmp_path / "v", workers=1, gateways=1, broker_args=FAST, gateway_args=FAST_GATEWAY)
    ctx = zmq.Context()
    intruder = ctx.socket(zmq.DEALER)
    try:
        broker = psutil.Process(c.children["broker"].pid)
        before = broker.memory_info().rss
        intruder.setsockopt(zmq.LINGER, 0)
        intruder.connect(c.endpoints["frontend"])
        intruder.send(b"\0" * (200 << 20), copy=False)
        peak = before
        client = ChatClient(c.ports[0])
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:  # the frame goes out meanwhile: watch the broker
            peak = max(peak, broker.memory_info().rss)
            client.sync()
        assert peak - before < 32 << 20, f"broker RSS grew by {(peak - before) >> 20} MiB"
        client.close()
    finally:
        intruder.close()
        ctx.term()
        c.stop()

