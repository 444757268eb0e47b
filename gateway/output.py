"""A client's output: pushed lines, handed to the kernel once per burst, and a writer only
while there is a backlog.

The gateway `push`es rendered lines, then `flush`es each client it
pushed to once per burst of replies: one `send` system call per client per
burst, made by the task that delivers, with no task switch. Only what the
kernel does not take becomes a backlog, and only then does a writer task
exist, for as long as the backlog does. An idle connection is a few small
objects and no task. Pushed and backlogged output is bounded in lines and
bytes: a client that does not read is told why and disconnected.

TLS: OpenSSL's "want read/write" counts as a would-block, and a write that
blocked is retried with the same bytes first, as OpenSSL requires: they
head the backlog.

`Output` holds the state every connection has (its socket, whether it is closing or
broken, what the clients of its gateway share); gateway.client builds on it.
"""

from __future__ import annotations

import socket
import ssl
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Protocol

import trio

Spawn = Callable[[Callable[[], Awaitable[None]]], None]
WRITE_ERRORS = (OSError, trio.ClosedResourceError, trio.BusyResourceError)
# nothing moved now, try again when the socket is ready (OpenSSL says it its way on a TLS socket)
WOULD_BLOCK = (BlockingIOError, ssl.SSLWantReadError, ssl.SSLWantWriteError)


@dataclass(frozen=True, slots=True)
class ClientLimits:
    """A client's limits, all of them: its output's here, its input's in gateway.reader and gateway.client."""

    max_line: int = 4096
    max_queue_lines: int = 1000
    max_queue_bytes: int = 1 << 20
    close_grace: float = 2.0  # how long a closing client gets to take its last lines
    rate: float = 20.0  # lines a second; 0: no limit
    burst: int = 100
    max_waiting_lines: int = 1000  # read but held back by the rate limit: past this, disconnect
    max_bad_lines: int = 20  # bad lines (and telnet commands) at once before a flooder is disconnected
    bad_line_rate: float = 1.0  # bad lines a second that a client may keep sending; 0 with rate 0


class Shared(Protocol):
    """What the write path needs of what all clients of a gateway share (gateway.client.ClientHooks)."""

    @property
    def limits(self) -> ClientLimits: ...

    @property
    def spawn(self) -> Spawn: ...


class Output:
    """A connection's write path; `_end` (gateway.client) ends the connection."""

    __slots__ = (
        "_backlog",
        "_bytes",
        "_hooks",
        "_lines",
        "_pending",
        "_writer",
        "broken",
        "closing",
        "sock",
    )

    _hooks: Shared

    def __init__(self, sock: socket.socket, hooks: Shared) -> None:
        self.sock = sock
        self.closing: str | None = None
        self.broken = False
        self._hooks = hooks
        self._pending: list[bytes] | None = None  # pushed since the last flush
        self._backlog: list[bytes] | None = None  # what the kernel did not take; None: no writer
        self._writer: trio.CancelScope | None = None
        self._lines = 0  # lines pushed and not yet taken by the kernel
        self._bytes = 0

    @property
    def limits(self) -> ClientLimits:
        return self._hooks.limits

    def _end(self) -> None:
        """The connection is over: its task, or the parking, ends it (gateway.client)."""
        raise NotImplementedError

    def push(self, data: bytes, lines: int = 1) -> bool:
        """Queue bytes (`lines` deliveries) for the client; False if its queue is full. `flush` sends them."""
        if self.closing is not None:
            return True  # what comes after a close is not for this client
        limits = self._hooks.limits  # the hot path: no property
        queued, size = self._lines + lines, self._bytes + len(data)
        if queued > limits.max_queue_lines or size > limits.max_queue_bytes:
            return False
        pending = self._pending
        if pending is None:
            self._pending = [data]
        else:
            pending.append(data)
        self._lines, self._bytes = queued, size
        return True

    def flush(self) -> None:
        """Hand what was pushed to the kernel; a backlog goes to the writer."""
        pending = self._pending
        if pending:
            data = pending[0] if len(pending) == 1 else b"".join(pending)
            self._pending = None
            if self._backlog is not None:  # keep the order: the writer sends it after the rest
                self._backlog.append(data)
            else:
                try:
                    sent = self.sock.send(data)
                except WOULD_BLOCK:  # a TLS write that blocked is retried with the same bytes first: the backlog
                    sent = 0
                except OSError:
                    sent = -1
                if sent == len(data):  # the usual case: the kernel took it all
                    self._lines = self._bytes = 0
                elif sent < 0:
                    self.broken = True
                    self._end()
                else:
                    self._keep_rest(data, sent)
        if self.closing is not None and self._backlog is None:
            self._end()  # everything is out: the connection can go

    def _keep_rest(self, data: bytes, sent: int) -> None:
        """What the kernel did not take is the backlog; a writer sends it when the socket takes more."""
        rest = data[sent:]
        self._backlog = [rest]
        self._bytes = len(rest)
        self._lines = rest.count(b"\n")
        self._hooks.spawn(self._write_backlog)

    def close_after(self, last: bytes, reason: str) -> None:
        """Send `last` after what is queued, then close; later output is dropped."""
        if self.closing is not None:
            return
        if last:
            if self._pending is None:
                self._pending = [last]
            else:
                self._pending.append(last)
        self.closing = reason
        if self._writer is not None:  # a backlog under way gets the grace period, no more
            self._writer.deadline = min(self._writer.deadline, trio.current_time() + self.limits.close_grace)
        self.flush()

    async def _write_backlog(self) -> None:
        """The writer: alive while there is a backlog; once closing, `close_grace` at most."""
        try:
            with trio.CancelScope() as self._writer:
                if self.closing is not None:
                    self._writer.deadline = trio.current_time() + self.limits.close_grace
                while self._backlog:
                    await trio.lowlevel.wait_writable(self.sock)
                    self._send_backlog()
        except WRITE_ERRORS:
            self.broken = True
        finally:
            self._writer = None
            self._backlog = None
        if self.broken or self.closing is not None:
            self._end()

    def _send_backlog(self) -> None:
        assert self._backlog is not None
        data = b"".join(self._backlog)
        try:
            sent = self.sock.send(data)
        except WOULD_BLOCK:
            sent = 0
        rest = data[sent:]
        self._backlog = [rest] if rest else []
        pending = self._pending or ()
        self._bytes = len(rest) + sum(map(len, pending))
        self._lines = rest.count(b"\n") + len(pending)
