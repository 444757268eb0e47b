"""Idle connections: no task each, one watcher for them all.

A client with nothing to do (gateway.client: ready, no input for a while,
nothing owed to the rate limit, no decrypted TLS input waiting) is parked:
its task ends, and its socket joins one epoll set, armed for
EPOLLIN | EPOLLRDHUP, level-triggered. The watcher task waits on that set's
own descriptor (to Trio, one readable descriptor); for every socket that
wakes (input, a FIN, an error: epoll always reports the last two) it hands
the client back to `wake`, which serves a short read at once and parks it
again, or starts a task that serves it while it is busy. A client served
at once stays armed: parking it again costs no system call. One that is not
parked again when `wake` returns (it has a task now, its input is the
task's) is disarmed (one `modify`, to one shot of nothing: at most one
error or hang-up can still be reported, and is ignored), so it is never
reported while it is not parked, and re-armed when it parks again.
`rouse` wakes a parked client on our side (it must close: its output is
out, or its socket broke).

A socket joins the set at its first park (`Client.watched`); closed, it
leaves the set by itself (the kernel drops it with its last descriptor).
"""

from __future__ import annotations

import contextlib
import select
from collections.abc import Callable
from typing import TYPE_CHECKING

import trio

if TYPE_CHECKING:
    from gateway.client import Client

ARMED = select.EPOLLIN | select.EPOLLRDHUP
DISARMED = select.EPOLLONESHOT  # no event asked for; an error or hang-up, which epoll always reports, once
OUT, IN, ON = 0, 1, 2  # `Client.watched`: not in the set, in it disarmed, in it armed
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
        if client.watched != ON:
            try:
                self._arm(fd, client.watched != OUT)
            except (FileExistsError, FileNotFoundError):  # the set knew better (a descriptor reused)
                try:
                    self._arm(fd, client.watched == OUT)
                except OSError:
                    return False
            except OSError:
                return False
            client.watched = ON
        self._parked[fd] = client
        return True

    def _arm(self, fd: int, in_set: bool) -> None:
        if in_set:
            self._epoll.modify(fd, ARMED)  # in the set since its first park, disarmed
        else:
            self._epoll.register(fd, ARMED)

    def rouse(self, client: Client) -> None:
        """Hand a parked client back now (to close it); no-op if it is not parked."""
        fd = client.sock.fileno()
        if self._parked.get(fd) is client:
            del self._parked[fd]
            self._hand_back(fd, client)

    def _hand_back(self, fd: int, client: Client) -> None:
        """`wake` the client; disarm its socket unless it is parked again (or closed) by then."""
        self._wake(client)
        if client.watched == ON and self._parked.get(fd) is not client and client.sock.fileno() == fd:
            client.watched = IN
            with contextlib.suppress(OSError):  # gone already: it is not watched either way
                self._epoll.modify(fd, DISARMED)

    async def run(self) -> None:
        """Hand back every client whose socket wakes, until cancelled."""
        epoll = self._epoll
        while True:
            await trio.lowlevel.wait_readable(epoll.fileno())
            for n, (fd, _) in enumerate(epoll.poll(0, MAX_EVENTS), 1):
                client = self._parked.pop(fd, None)  # None: roused meanwhile, or a disarmed one's last word
                if client is not None:
                    self._hand_back(fd, client)
                if n % WAKES_PER_TURN == 0:
                    await trio.lowlevel.checkpoint()

    def close(self) -> list[Client]:
        """Stop watching -> the clients still parked (theirs to close)."""
        parked = list(self._parked.values())
        self._parked.clear()
        self._epoll.close()
        return parked
