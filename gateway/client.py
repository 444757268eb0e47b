"""One client connection: a raw non-blocking socket, a reader task, and
output written straight to the kernel whenever it takes it.

Input: the reader waits for the socket to be readable, turns bytes into
lines (`protocol.lines`) and hands every batch of lines that one read
completed to the gateway as one event. Bad lines are answered here, at
once, and never leave the gateway. Lines over the rate limit wait in the
reader, which meanwhile reads nothing more: the client's own TCP window
holds it back.

Output: the gateway `push`es rendered lines, then `flush`es each client it
pushed to once per burst of replies: one `send` system call per client per
burst, made by the task that delivers, with no task switch. Only what the
kernel does not take waits in a queue for the writer task, which sleeps on
writability. Pushed and waiting output is bounded in lines and bytes: a
client that does not read is told why and disconnected, instead of growing
the gateway's memory.
"""

from __future__ import annotations

import socket
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import trio

from gateway.ratelimit import TokenBucket
from protocol.lines import LineBuffer, LineError


@dataclass(frozen=True, slots=True)
class ClientLimits:
    max_line: int = 4096
    max_queue_lines: int = 1000
    max_queue_bytes: int = 1 << 20
    close_grace: float = 2.0  # how long a closing client gets to take its last lines
    rate: float = 20.0  # lines a second; 0: no limit
    burst: int = 100
    max_waiting_lines: int = 1000  # read but held back by the rate limit: past this, disconnect


class Client:
    __slots__ = (
        "_backlog",
        "_lines",
        "_bytes",
        "_pending",
        "_reader",
        "_sending",
        "_wake",
        "broken",
        "cid",
        "closing",
        "json",
        "limits",
        "sock",
    )

    def __init__(self, cid: str, sock: socket.socket, limits: ClientLimits) -> None:
        self.cid = cid
        self.sock = sock
        self.limits = limits
        self.json = False
        self._pending: list[bytes] = []  # pushed since the last flush
        self._backlog: deque[bytes] = deque()  # flushed, but the kernel did not take it yet
        self._lines = 0  # lines pushed and not yet taken by the kernel
        self._bytes = 0
        self._wake = trio.lowlevel.ParkingLot()  # the writer waits here for a backlog
        self._reader = trio.lowlevel.ParkingLot()
        self._sending: trio.CancelScope | None = None
        self.closing: str | None = None
        self.broken = False

    # --- output -------------------------------------------------------------

    def push(self, data: bytes) -> bool:
        """Queue bytes for the client; False if its queue is full. `flush` sends them."""
        if self.closing is not None:
            return True  # what comes after a close is not for this client
        limits = self.limits
        if self._lines >= limits.max_queue_lines or self._bytes + len(data) > limits.max_queue_bytes:
            return False
        self._pending.append(data)
        self._lines += 1
        self._bytes += len(data)
        return True

    def flush(self) -> None:
        """Hand what was pushed to the kernel; what it does not take waits for the writer."""
        if not self._pending:
            return
        data = self._pending[0] if len(self._pending) == 1 else b"".join(self._pending)
        self._pending.clear()
        if self._backlog or self.broken:  # keep the order: the writer sends it after the rest
            self._backlog.append(data)
            return
        self._send_now(data)

    def _send_now(self, data: bytes) -> None:
        try:
            sent = self.sock.send(data)
        except BlockingIOError:
            sent = 0
        except OSError:
            self.broken = True
            self._wake.unpark_all()
            return
        if sent == len(data):
            self._lines = self._bytes = 0
            return
        rest = data[sent:]
        self._backlog.append(rest)
        self._bytes = len(rest)
        self._lines = rest.count(b"\n")
        self._wake.unpark_all()

    def close_after(self, last: bytes, reason: str) -> None:
        """Send `last` after what is queued, then close; later output is dropped."""
        if self.closing is not None:
            return
        if last:
            self._pending.append(last)
        self.closing = reason
        self.flush()
        if self._sending is not None:  # a send under way gets the grace period, no more
            self._sending.deadline = min(self._sending.deadline, trio.current_time() + self.limits.close_grace)
        self._wake.unpark_all()

    async def write_loop(self) -> None:
        """Send the backlog whenever there is one, until the client is closed.

        Once closing, the backlog has `close_grace` seconds at most: a client
        that does not read cannot hold its connection open.
        """
        while True:
            while not self._backlog and self.closing is None and not self.broken:
                await self._wake.park()
            if self.broken:
                raise trio.BrokenResourceError("send failed")
            if not self._backlog:
                return  # closing, and everything is out
            with trio.CancelScope() as self._sending:
                if self.closing is not None:
                    self._sending.deadline = trio.current_time() + self.limits.close_grace
                await self._drain_backlog()
            if self._sending.cancelled_caught:
                return  # it did not take its last lines in time
            self._sending = None

    async def _drain_backlog(self) -> None:
        while self._backlog:
            await trio.lowlevel.wait_writable(self.sock)
            data = b"".join(self._backlog)
            self._backlog.clear()
            try:
                sent = self.sock.send(data)
            except BlockingIOError:
                sent = 0
            rest = data[sent:]
            if rest:
                self._backlog.append(rest)
            self._bytes = len(rest) + sum(map(len, self._pending))
            self._lines = rest.count(b"\n") + len(self._pending)

    # --- input ------------------------------------------------------------------

    def wake_reader(self) -> None:
        self._reader.unpark_all()

    async def wait_for_reader_wakeup(self, timeout: float) -> None:
        """Park the reader until `wake_reader` (or `timeout`, to look around again)."""
        with trio.move_on_after(timeout):
            await self._reader.park()

    async def _receive(self) -> bytes:
        while True:
            await trio.lowlevel.wait_readable(self.sock)
            try:
                return self.sock.recv(65536)
            except BlockingIOError:
                continue  # woken without data: wait again

    async def read_loop(self, on_lines: Callable[[Client, list[str]], Awaitable[None]]) -> None:
        """Read until EOF; `on_lines(client, lines)` gets each read's lines.

        Lines over the rate limit wait here, and while they wait nothing more
        is read: the client's own TCP window then holds it back.
        """
        buffer = LineBuffer(self.limits.max_line)
        bucket = TokenBucket(self.limits.rate, self.limits.burst, trio.current_time())
        while self.closing is None:
            data = await self._receive()
            if not data:
                return
            lines: list[str] = []
            for item in buffer.feed(data):
                if isinstance(item, LineError):
                    self.push(f"! {item.message()}\n".encode())
                else:
                    lines.append(item)
            self.flush()
            if len(lines) > self.limits.max_waiting_lines and self.limits.rate > 0:
                self.close_after(b"! flooding: too many lines at once; disconnecting\n", "flooding")
                return
            while lines and self.closing is None:
                granted = bucket.take(len(lines), trio.current_time())
                if granted:
                    await on_lines(self, lines[:granted])
                    del lines[:granted]
                if lines:
                    await trio.sleep(bucket.delay(trio.current_time()))
