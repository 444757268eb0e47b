"""One client connection: a reader task, a writer task, a bounded output queue.

The reader turns bytes into lines (`protocol.lines`) and hands every batch
of lines that one read completed to the gateway as one event. Bad lines
are answered here, at once, and never leave the gateway. The writer sends
everything queued in one `send_all`. The queue is bounded in lines and in
bytes: a client that does not read is told why and disconnected, instead
of growing the gateway's memory.
"""

from __future__ import annotations

from collections import deque
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
        "_queue",
        "_queued_bytes",
        "_reader",
        "_sending",
        "_wake",
        "cid",
        "closing",
        "json",
        "limits",
        "stream",
    )

    def __init__(self, cid: str, stream: trio.abc.Stream, limits: ClientLimits) -> None:
        self.cid = cid
        self.stream = stream
        self.limits = limits
        self.json = False
        self._queue: deque[bytes] = deque()
        self._queued_bytes = 0
        self._wake = trio.lowlevel.ParkingLot()
        self._reader = trio.lowlevel.ParkingLot()
        self._sending: trio.CancelScope | None = None
        self.closing: str | None = None

    # --- output -------------------------------------------------------------

    def push(self, data: bytes) -> bool:
        """Queue bytes for the client; False if its queue is full."""
        if self.closing is not None:
            return True  # what comes after a close is not for this client
        limits = self.limits
        if len(self._queue) >= limits.max_queue_lines or self._queued_bytes + len(data) > limits.max_queue_bytes:
            return False
        self._queue.append(data)
        self._queued_bytes += len(data)
        self._wake.unpark_all()
        return True

    def close_after(self, last: bytes, reason: str) -> None:
        """Send `last` after what is queued, then close; later output is dropped."""
        if self.closing is not None:
            return
        if last:
            self._queue.append(last)
            self._queued_bytes += len(last)
        self.closing = reason
        if self._sending is not None:  # a send under way gets the grace period, no more
            self._sending.deadline = min(
                self._sending.deadline, trio.current_time() + self.limits.close_grace
            )
        self._wake.unpark_all()

    async def write_loop(self) -> None:
        """Send queued output until the client is closed.

        Once closing, a send has `close_grace` seconds at most: a client that
        does not read cannot hold its connection open.
        """
        while True:
            while not self._queue and self.closing is None:
                await self._wake.park()
            if not self._queue:
                return
            data = b"".join(self._queue)
            self._queue.clear()
            self._queued_bytes = 0
            with trio.CancelScope() as self._sending:
                if self.closing is not None:
                    self._sending.deadline = trio.current_time() + self.limits.close_grace
                await self.stream.send_all(data)
            if self._sending.cancelled_caught:
                return  # it did not take its last lines in time
            self._sending = None

    def wake_reader(self) -> None:
        self._reader.unpark_all()

    async def wait_for_reader_wakeup(self, timeout: float) -> None:
        """Park the reader until `wake_reader` (or `timeout`, to look around again)."""
        with trio.move_on_after(timeout):
            await self._reader.park()

    # --- input ------------------------------------------------------------------

    async def read_loop(self, on_lines) -> None:  # type: ignore[no-untyped-def]
        """Read until EOF; `on_lines(client, lines)` gets each read's lines.

        Lines over the rate limit wait here, and while they wait nothing more
        is read: the client's own TCP window then holds it back.
        """
        buffer = LineBuffer(self.limits.max_line)
        bucket = TokenBucket(self.limits.rate, self.limits.burst, trio.current_time())
        while self.closing is None:
            data = await self.stream.receive_some(65536)
            if not data:
                return
            lines: list[str] = []
            for item in buffer.feed(bytes(data)):
                if isinstance(item, LineError):
                    self.push(f"! {item.message()}\n".encode())
                else:
                    lines.append(item)
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
