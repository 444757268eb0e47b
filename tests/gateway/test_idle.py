"""Idle connections hold no task, and one woken after a long idle is served as before.

A real gateway runs in this process (in a thread with its own Trio loop, so
the tests' blocking clients and the gateway's inside can both be looked at),
against a real broker, worker and Valkey, with real sockets on 127.0.0.1.
"""

from __future__ import annotations

import gc
import socket
import threading
import time
import tracemalloc
from collections.abc import Callable
from typing import Any, TypeVar

import pytest
import trio
import zmq

from gateway.client import ClientLimits
from gateway.server import Gateway, GatewayConfig, IrcDoorConfig
from gateway.tls import TlsConfig
from tests.e2e.chatclient import ChatClient
from tests.e2e.cluster import Cluster
from tests.e2e.test_tls import make_cert, tls_client

T = TypeVar("T")
START_TIMEOUT = 15.0
WAIT = 10.0  # seconds a condition gets before a test fails
NAP = 1.0  # a long idle: parked clients must keep working after it


class GatewayThread:
    """A real gateway in a thread of its own; `call` runs a function inside its Trio loop."""

    def __init__(self, config: GatewayConfig) -> None:
        self.config = config
        self.gateway: Gateway
        self.bound: dict[str, tuple[str, int]] = {}
        self._token: trio.lowlevel.TrioToken
        self._cancel: trio.CancelScope
        self._ready = threading.Event()
        self._thread = threading.Thread(target=trio.run, args=(self._main,), daemon=True)
        self.failure: BaseException | None = None

    def __enter__(self) -> GatewayThread:
        self._thread.start()
        if not self._ready.wait(START_TIMEOUT):
            raise AssertionError(f"gateway did not start: {self.failure!r}")
        if self.failure is not None:
            raise AssertionError("gateway did not start") from self.failure
        wait_until(lambda: self.call(lambda: self.gateway.serving), "the gateway hears the broker")
        return self

    def __exit__(self, *exc: object) -> None:
        if self._thread.is_alive() and self._ready.is_set() and self.failure is None:
            trio.from_thread.run_sync(self._cancel.cancel, trio_token=self._token)
        self._thread.join(START_TIMEOUT)
        assert not self._thread.is_alive(), "gateway thread did not end"

    async def _main(self) -> None:
        ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
        try:
            self.gateway = Gateway(self.config, ctx)
            try:
                async with trio.open_nursery() as nursery:
                    self._cancel = nursery.cancel_scope
                    self._token = trio.lowlevel.current_trio_token()
                    self.bound = await nursery.start(self.gateway.serve)
                    self._ready.set()
            finally:
                self.gateway.close()
        except BaseException as exc:
            self.failure = exc
            raise
        finally:
            self._ready.set()
            ctx.term()

    def call(self, fn: Callable[[], T]) -> T:
        return trio.from_thread.run_sync(fn, trio_token=self._token)

    def port(self, door: str = "plain") -> int:
        return self.bound[door][1]

    def parked(self) -> int:
        return self.call(lambda: len(getattr(self.gateway, "idle", None) or ()))

    def tasks(self) -> int:
        return self.call(count_tasks)


def count_tasks() -> int:
    """Every task of the running Trio loop."""
    def walk(task: trio.lowlevel.Task) -> int:
        return 1 + sum(walk(child) for nursery in task.child_nurseries for child in nursery.child_tasks)
    return walk(trio.lowlevel.current_root_task())


def wait_until(test: Callable[[], bool], what: str, timeout: float = WAIT) -> None:
    deadline = time.monotonic() + timeout
    while not test():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting until {what}")
        time.sleep(0.01)  # polling a condition, with a deadline


@pytest.fixture(scope="module")
def cert(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str]:
    return make_cert(tmp_path_factory.mktemp("idle-tls"))


def config_for(backend: Cluster, **changes: Any) -> GatewayConfig:
    eps = backend.endpoints
    base: dict[str, Any] = dict(host="127.0.0.1", port=0, frontend=eps["frontend"], pub_out=eps["pub-out"],
                                limits=ClientLimits(rate=0))
    return GatewayConfig(**(base | changes))


def named(port: int, nick: str) -> ChatClient:
    client = ChatClient(port)
    client.send(f"/nick {nick}")
    client.expect(f"* you are now {nick}")
    return client


def all_parked(gw: GatewayThread, n: int) -> None:
    wait_until(lambda: gw.parked() == n, f"{n} connections are parked")


def test_idle_connections_hold_no_task(backend: Cluster) -> None:
    n = 60
    with GatewayThread(config_for(backend)) as gw:
        before = gw.tasks()
        clients = [named(gw.port(), f"idle{i}x{time.monotonic_ns() % 10**6}") for i in range(n)]
        try:
            wait_until(lambda: gw.tasks() <= before, f"{n} idle connections hold no task")
            assert gw.parked() == n
            assert gw.call(lambda: len(gw.gateway.clients)) == n
        finally:
            for client in clients:
                client.close()
        wait_until(lambda: gw.call(lambda: len(gw.gateway.clients)) == 0, "the closed clients are gone")
        assert gw.parked() == 0


def gateway_bytes(snapshot: tracemalloc.Snapshot) -> int:
    """What the gateway's thread allocated (Trio, the gateway, the protocol code), still held."""
    ours = snapshot.filter_traces([tracemalloc.Filter(False, "*/tests/*", all_frames=True)])  # not the clients'
    filters = [tracemalloc.Filter(True, pattern, all_frames=True)
               for pattern in ("*/trio/*", "*/gateway/*", "*/protocol/*")]
    return sum(stat.size for stat in ours.filter_traces(filters).statistics("filename"))


def test_an_idle_connection_costs_little_memory(backend: Cluster) -> None:
    n = 150
    bound = 2048  # bytes a parked connection may keep in the gateway (a task alone is ~3.5 KB)
    with GatewayThread(config_for(backend)) as gw:
        warm = named(gw.port(), f"warm{time.monotonic_ns() % 10**6}")  # what is allocated once, on first use
        all_parked(gw, 1)
        tracemalloc.start(30)
        clients: list[ChatClient] = []
        try:
            gc.collect()
            before = gateway_bytes(tracemalloc.take_snapshot())
            clients = [named(gw.port(), f"mem{i}x{time.monotonic_ns() % 10**6}") for i in range(n)]
            all_parked(gw, n + 1)
            gc.collect()
            after = gateway_bytes(tracemalloc.take_snapshot())
        finally:
            tracemalloc.stop()
            for client in [warm, *clients]:
                client.close()
        per_connection = (after - before) / n
        assert per_connection < bound, f"{per_connection:.0f} bytes per idle connection"


def test_a_woken_connection_chats_and_gets_deliveries(backend: Cluster) -> None:
    room = f"#wake{time.monotonic_ns() % 10**6}"
    with GatewayThread(config_for(backend)) as gw:
        alice, bob = named(gw.port(), f"al{room[5:]}"), named(gw.port(), f"bo{room[5:]}")
        with alice, bob:
            for client in (alice, bob):
                client.join(room)
            alice.expect(lambda line: "joined" in line and line.startswith("* bo"))
            all_parked(gw, 2)
            time.sleep(NAP)  # a long idle: what parks must keep working afterwards
            alice.send("hello after a nap")
            assert bob.expect(lambda line: "hello after a nap" in line).endswith("hello after a nap")
            all_parked(gw, 2)
            bob.send("and back")
            alice.expect(lambda line: line.endswith("and back"))


class SpawnCounter(trio.abc.Instrument):
    """Counts the tasks a Trio loop starts."""

    def __init__(self) -> None:
        self.spawned = 0

    def task_spawned(self, task: trio.lowlevel.Task) -> None:
        self.spawned += 1


def test_a_woken_connection_is_served_and_closed_without_a_task(backend: Cluster) -> None:
    """A parked client's short read (lines, no rate-limit debt) is handed on by the watcher
    itself: no task is started for it, and it is parked again; its /quit closes it the same way."""
    with GatewayThread(config_for(backend)) as gw, named(gw.port(), f"nt{time.monotonic_ns() % 10**6}") as client:
        all_parked(gw, 1)
        counter = SpawnCounter()
        gw.call(lambda: trio.lowlevel.add_instrument(counter))
        try:
            for n in range(5):
                client.send(f"/ping {n}" if n % 2 else "/ping")
                client.expect(lambda line: line.startswith(("* pong", "! usage")))
                all_parked(gw, 1)
            client.send("/quit")
            assert client.wait_closed() == ["* bye"]
            wait_until(lambda: gw.call(lambda: not gw.gateway.clients and not gw.gateway.sessions), "it is gone")
        finally:
            gw.call(lambda: trio.lowlevel.remove_instrument(counter))
        assert counter.spawned == 0, f"{counter.spawned} task(s) started for a parked client's lines and close"
        assert gw.parked() == 0


def test_a_parked_connection_closed_by_the_gateway_ends(backend: Cluster) -> None:
    with GatewayThread(config_for(backend)) as gw, named(gw.port(), f"cl{time.monotonic_ns() % 10**6}") as client:
        all_parked(gw, 1)

        def close_all() -> None:
            for each in list(gw.gateway.clients.values()):
                each.close_after(b"* bye\n", "test")

        gw.call(close_all)
        assert client.wait_closed() == ["* bye"]
        wait_until(lambda: gw.call(lambda: not gw.gateway.clients), "the client is gone")
        assert gw.parked() == 0


def test_the_rate_limit_holds_after_a_wake(backend: Cluster) -> None:
    limits = ClientLimits(rate=0.5, burst=3, max_waiting_lines=5)
    with GatewayThread(config_for(backend, limits=limits)) as gw:
        nick = f"rl{time.monotonic_ns() % 10**6}"
        with named(gw.port(), nick) as client:
            all_parked(gw, 1)
            client.send(*(f"/nick {nick}{i}" for i in range(4)))
            client.expect(f"* you are now {nick}0")
            began = time.monotonic()
            client.expect(f"* you are now {nick}3")
            assert time.monotonic() - began >= 1.0, "the 4th line went through as if there were no rate limit"
            all_parked(gw, 1)
            client.send_raw(b"x\n" * 6)  # more than may wait at once: a flooder, even woken from idle
            assert any("flooding" in line for line in client.wait_closed())


def test_half_close_after_idle_lets_the_replies_out(backend: Cluster) -> None:
    with GatewayThread(config_for(backend)) as gw, named(gw.port(), f"hc{time.monotonic_ns() % 10**6}") as client:
        all_parked(gw, 1)
        client.send(f"/join #hc{time.monotonic_ns() % 10**6}")
        client.sock.shutdown(socket.SHUT_WR)
        assert any(line.startswith("* you joined") for line in client.wait_closed())


def test_an_unregistered_irc_client_is_not_parked_and_is_cut_at_its_deadline(backend: Cluster) -> None:
    config = config_for(backend, irc=IrcDoorConfig("127.0.0.1", 0, "irc.test"), ready_timeout=1.0)
    with GatewayThread(config) as gw, socket.create_connection(("127.0.0.1", gw.port("irc")), timeout=WAIT) as sock:
        sock.sendall(b"NICK half\r\n")  # no USER: never registered
        began = time.monotonic()
        data = b""
        while chunk := sock.recv(4096):
            data += chunk
            assert gw.parked() == 0
        assert time.monotonic() - began >= 0.5
        assert b"registration timeout" in data


def test_a_tls_client_woken_from_idle_is_served(backend: Cluster, cert: tuple[str, str]) -> None:
    config = config_for(backend, tls=TlsConfig("127.0.0.1", 0, *cert))
    with GatewayThread(config) as gw:
        nick = f"tl{time.monotonic_ns() % 10**6}"
        with tls_client(gw.port("tls"), cert[0]) as client:
            client.send(f"/nick {nick}")
            client.expect(f"* you are now {nick}")
            all_parked(gw, 1)
            client.send(f"/nick {nick}b", f"/nick {nick}c")
            client.expect(f"* you are now {nick}c")
            all_parked(gw, 1)


def test_shutdown_closes_parked_connections(backend: Cluster) -> None:
    with GatewayThread(config_for(backend)) as gw:
        client = named(gw.port(), f"sd{time.monotonic_ns() % 10**6}")
        all_parked(gw, 1)
    with client:
        client.wait_closed()
