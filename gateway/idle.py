"""Idle connections: no task each, one watcher for them all.

A client with nothing to do (gateway.client: ready, no input for a while,
nothing owed to the rate limit, no decrypted TLS input waiting) is parked:
its task ends, and its socket joins one epoll set, armed for
EPOLLIN | EPOLLRDHUP | EPOLLONESHOT. The watcher task waits on that set's
own descriptor (to Trio, one readable descriptor); for every socket that
wakes (input, a FIN, an error: epoll always reports the last two) it hands
the client back to `wake`, which serves a short read at once and parks it
again, or starts a task that serves it while it is busy. One shot: a woken
socket stays in the set, silent, until it is parked again (one `modify`),
so nothing is woken twice. `rouse` wakes a parked
client on our side (it must close: its output is out, or its socket broke).

A socket joins the set at its first park (`Client.watched`) and is re-armed
at every later one; closed, it leaves the set by itself (the kernel drops it
with its last descriptor).
"""

from __future__ import annotations

import select
from collections.abc import Callable
from typing import TYPE_CHECKING

import trio

if TYPE_CHECKING:
    from gateway.client import Client

ARMED = select.EPOLLIN | select.EPOLLRDHUP | select.EPOLLONESHOT
MAX_EVENTS = 1024  # sockets handed back per look at the set; more wait for the next
WAKES_PER_TURN = 64  # woken clients served (`wake` may serve one's read at once) before others may run


class IdleWatcher:
    """The parked clients of one gateway, by descriptor, and the epoll set that watches them."""

    __slots__ = ("_epoll", "_parked", "_wake")

    def __init__(self, wake: Callable[[Client], None]) -> None:
        self._epoll = select.epoll()
        self._parked: dict[int, Client] = {}
        self._wake = wake

    def __len__(self) -> int:
        return len(self._parked)

    def park(self, client: Client) -> bool:
        """Watch the client's socket; `wake` gets the client when it wakes. False: the set
        refused it (out of kernel memory): the client keeps its task."""
        fd = client.sock.fileno()
        try:
            self._arm(fd, client.watched)
        except (FileExistsError, FileNotFoundError):  # the set knew better (a descriptor reused)
            try:
                self._arm(fd, not client.watched)
            except OSError:
                return False
        except OSError:
            return False
        client.watched = True
        self._parked[fd] = client
        return True

    def _arm(self, fd: int, watched: bool) -> None:
        if watched:
            self._epoll.modify(fd, ARMED)  # in the set since its first park, disarmed
        else:
            self._epoll.register(fd, ARMED)

    def rouse(self, client: Client) -> None:
        """Hand a parked client back now (to close it); no-op if it is not parked."""
        fd = client.sock.fileno()
        if self._parked.get(fd) is client:
            del self._parked[fd]  # left armed: it is closing, and a wake of a client not parked is ignored
            self._wake(client)

    async def run(self) -> None:
        """Hand back every client whose socket wakes, until cancelled."""
        epoll = self._epoll
        while True:
            await trio.lowlevel.wait_readable(epoll.fileno())
            for n, (fd, _) in enumerate(epoll.poll(0, MAX_EVENTS), 1):
                client = self._parked.pop(fd, None)  # None: roused meanwhile, or woken already
                if client is not None:
                    self._wake(client)
                if n % WAKES_PER_TURN == 0:
                    await trio.lowlevel.checkpoint()

    def close(self) -> list[Client]:
        """Stop watching -> the clients still parked (theirs to close)."""
        parked = list(self._parked.values())
        self._parked.clear()
        self._epoll.close()
        return parked
