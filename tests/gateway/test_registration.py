"""A connection's life at the gateway, cheaply: a burst of connects per wake-up, and an
idle client's own close handled without a task. Real sockets on 127.0.0.1; the gateway
tests run a real gateway against a real broker, worker and Valkey (tests.gateway.test_idle).
"""

from __future__ import annotations

import socket
import time

import trio

from gateway import accept
from gateway.idle import IdleWatcher
from tests.e2e.cluster import Cluster
from tests.gateway.test_idle import GatewayThread, SpawnCounter, all_parked, config_for, named, wait_until

BURST = 40  # connects waiting in the backlog when the acceptor first looks


class StepCounter(trio.abc.Instrument):
    """Counts the steps (runs between two waits) of one task."""

    def __init__(self, task: trio.lowlevel.Task) -> None:
        self.task = task
        self.steps = 0

    def before_task_step(self, task: trio.lowlevel.Task) -> None:
        if task is self.task:
            self.steps += 1


def test_a_burst_of_connects_is_taken_in_one_wake_up_with_each_peer_address() -> None:
    """Connects that wait in the backlog are taken together: a few steps of the accept task,
    not one wake-up (and one look at the listener) each. Each is handed on with the address
    `accept` gave, the client's own."""

    async def main() -> None:
        listener = accept.listen("127.0.0.1", 0, False)
        got: list[tuple[socket.socket, str]] = []
        clients = [socket.create_connection(listener.getsockname()) for _ in range(BURST)]
        try:
            acceptor = accept.Acceptor(listener, lambda sock, peer: got.append((sock, peer)))
            async with trio.open_nursery() as nursery:
                task = await nursery.start(_run_counted, acceptor)
                counter = StepCounter(task)
                trio.lowlevel.add_instrument(counter)
                with trio.fail_after(10):
                    while len(got) < BURST:
                        await trio.sleep(0.01)  # polling a condition, with a deadline
                trio.lowlevel.remove_instrument(counter)
                nursery.cancel_scope.cancel()
            assert counter.steps <= 4, f"{counter.steps} steps of the accept task for {BURST} waiting connects"
            mine = {"{}:{}".format(*client.getsockname()[:2]) for client in clients}
            assert {peer for _, peer in got} == mine
            assert all(not sock.getblocking() for sock, _ in got)
        finally:
            for sock in (*clients, *(sock for sock, _ in got), listener):
                sock.close()

    trio.run(main)


async def _run_counted(acceptor: accept.Acceptor, *, task_status=trio.TASK_STATUS_IGNORED) -> None:  # type: ignore[no-untyped-def]
    """Run the acceptor in this task, after handing the task over (to count its steps from its first look)."""
    acceptor.pause()
    task_status.started(trio.lowlevel.current_task())
    acceptor.resume()
    await acceptor.run()


def test_a_burst_of_connects_stops_when_the_gateway_pauses() -> None:
    """A client let in may fill the gateway (the acceptor is paused): the rest of the burst stays in the backlog."""

    async def main() -> None:
        listener = accept.listen("127.0.0.1", 0, False)
        got: list[socket.socket] = []
        acceptor: accept.Acceptor

        def take(sock: socket.socket, peer: str) -> None:
            got.append(sock)
            if len(got) == 3:
                acceptor.pause()

        acceptor = accept.Acceptor(listener, take)
        clients = [socket.create_connection(listener.getsockname()) for _ in range(10)]
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(acceptor.run)
                with trio.fail_after(10):
                    while len(got) < 3:
                        await trio.sleep(0.01)  # polling a condition, with a deadline
                with trio.move_on_after(0.3):
                    while len(got) == 3:
                        await trio.sleep(0.01)
                assert len(got) == 3  # paused: the others wait
                acceptor.resume()
                with trio.fail_after(10):
                    while len(got) < 10:
                        await trio.sleep(0.01)
                nursery.cancel_scope.cancel()
        finally:
            for sock in (*clients, *got, listener):
                sock.close()

    trio.run(main)


def test_an_idle_client_that_closes_ends_without_a_task_and_its_departure_is_told(backend: Cluster) -> None:
    """A parked client's FIN with nothing of its own on the way: the watcher closes it there and
    then (no task, no wait for the chat's answer), and the room hears that it quit."""
    tag = time.monotonic_ns() % 10**6
    room = f"#iq{tag}"
    with GatewayThread(config_for(backend)) as gw, named(gw.port(), f"iqa{tag}") as leaver, \
            named(gw.port(), f"iqb{tag}") as watcher:
        for client in (leaver, watcher):
            client.send(f"/join {room}")
            client.expect(lambda line: line.startswith("* you joined"))
        leaver.sync()
        all_parked(gw, 2)
        counter = SpawnCounter()
        gw.call(lambda: trio.lowlevel.add_instrument(counter))
        try:
            leaver.sock.shutdown(socket.SHUT_WR)
            assert leaver.wait_closed() == []
            watcher.expect(f"* iqa{tag} quit")
            wait_until(lambda: gw.call(lambda: len(gw.gateway.clients) == 1 and len(gw.gateway.sessions) == 1),
                       "its connection and session are gone")
        finally:
            gw.call(lambda: trio.lowlevel.remove_instrument(counter))
        assert counter.spawned == 0, f"{counter.spawned} task(s) started for an idle client's close"
        all_parked(gw, 1)


def test_a_client_that_closes_with_replies_on_the_way_still_gets_them(backend: Cluster) -> None:
    """Lines and a FIN in one go (`printf '/ping\\n' | nc`): the close waits for their replies."""
    with GatewayThread(config_for(backend)) as gw, named(gw.port(), f"ir{time.monotonic_ns() % 10**6}") as client:
        all_parked(gw, 1)
        client.send_raw(b"/ping\n/ping\n")
        client.sock.shutdown(socket.SHUT_WR)
        assert client.wait_closed() == ["* pong", "* pong"]


class Parked:
    """What the idle watcher needs of a client: its socket and where the set has it."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.watched = 0


def test_a_client_parked_again_from_its_wake_keeps_waking_and_one_left_out_is_never_reported() -> None:
    """Served at once and parked again inside `wake`, a client stays armed and wakes on its next
    input; one not parked again (it has a task) is disarmed: neither its unread input nor its
    peer's hang-up reaches the watcher again (no busy loop), until it is parked again."""

    async def main() -> None:
        woken: list[Parked] = []
        watcher: IdleWatcher

        def wake(client: Parked) -> None:
            woken.append(client)
            client.sock.recv(100)
            if client is again:
                assert watcher.park(again)  # type: ignore[arg-type]

        watcher = IdleWatcher(wake)  # type: ignore[arg-type]
        pairs = [socket.socketpair() for _ in range(2)]
        again, left = (Parked(ours) for ours, _ in pairs)
        try:
            async with trio.open_nursery() as nursery:
                task = await nursery.start(_run_watcher, watcher)
                counter = StepCounter(task)
                trio.lowlevel.add_instrument(counter)
                assert watcher.park(again) and watcher.park(left)  # type: ignore[arg-type]
                for n in range(1, 4):
                    pairs[0][1].send(b"x")
                    pairs[1][1].send(b"yy")
                    with trio.fail_after(5):
                        while woken.count(again) < n:
                            await trio.sleep(0.01)  # polling a condition, with a deadline
                pairs[1][1].close()  # a hang-up, which epoll reports whatever was asked
                await trio.sleep(0.2)  # a window for wrong wakes to show (nothing to wait for)
                trio.lowlevel.remove_instrument(counter)
                assert woken.count(left) == 1 and woken.count(again) == 3
                assert counter.steps < 20, f"{counter.steps} steps of the watcher: it spins"
                assert watcher.park(left)  # type: ignore[arg-type]  # re-armed: its input and hang-up wake it
                with trio.fail_after(5):
                    while woken.count(left) < 2:
                        await trio.sleep(0.01)
                nursery.cancel_scope.cancel()
        finally:
            watcher.close()
            for ours, theirs in pairs:
                ours.close()
                theirs.close()

    trio.run(main)


async def _run_watcher(watcher: IdleWatcher, *, task_status=trio.TASK_STATUS_IGNORED) -> None:  # type: ignore[no-untyped-def]
    task_status.started(trio.lowlevel.current_task())
    await watcher.run()
