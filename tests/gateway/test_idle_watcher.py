"""gateway.idle on its own: real socket pairs, one watcher, Trio's loop."""

from __future__ import annotations

import socket

import trio

from gateway.idle import IdleWatcher


class Parked:
    """What the watcher needs of a client: its socket and whether the set knows it."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.watched = 0


def test_a_parked_socket_wakes_once_on_input_and_again_once_parked_again() -> None:
    async def main() -> None:
        woken: list[Parked] = []
        watcher = IdleWatcher(woken.append)
        ours, theirs = socket.socketpair()
        client = Parked(ours)
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(watcher.run)
                assert watcher.park(client) and len(watcher) == 1
                theirs.send(b"x")
                with trio.fail_after(5):
                    while not woken:
                        await trio.sleep(0.01)  # polling a condition, with a deadline
                assert woken == [client] and len(watcher) == 0
                await trio.sleep(0.05)
                assert woken == [client]  # one shot: unread input wakes nobody until parked again
                assert watcher.park(client)
                with trio.fail_after(5):  # the input still waits: level-triggered, it wakes at once
                    while len(woken) < 2:
                        await trio.sleep(0.01)
                nursery.cancel_scope.cancel()
        finally:
            assert watcher.close() == []
            ours.close()
            theirs.close()

    trio.run(main)


def test_rouse_hands_back_a_parked_client_and_close_returns_the_rest() -> None:
    woken: list[Parked] = []
    watcher = IdleWatcher(woken.append)
    pairs = [socket.socketpair() for _ in range(2)]
    try:
        first, second = (Parked(ours) for ours, _ in pairs)
        assert watcher.park(first) and watcher.park(second)
        watcher.rouse(first)
        watcher.rouse(first)  # not parked any more: nothing
        assert woken == [first]
        assert watcher.close() == [second]
    finally:
        for pair in pairs:
            for sock in pair:
                sock.close()


def test_a_reused_descriptor_is_parked_whatever_the_flag_says() -> None:
    watcher = IdleWatcher(lambda client: None)
    ours, theirs = socket.socketpair()
    try:
        client = Parked(ours)
        client.watched = 1  # wrong: never in the set
        assert watcher.park(client)
        stale = Parked(ours)  # a second client on the same descriptor, flag unset
        watcher.rouse(client)
        assert watcher.park(stale)
    finally:
        watcher.close()
        ours.close()
        theirs.close()
