"""pyzmq sockets on Trio: one task owns a socket and pumps it both ways.

A ZeroMQ socket's FD is a notification, not data: it becomes readable when
the socket's state *may* have changed, and `ZMQ_EVENTS` says what is true
now. So the pump always asks `EVENTS` before it sleeps on the FD, and
sleeps only when there is nothing to read and nothing it may send. Other
tasks never touch the socket: they `put_nowait` frames into the pump's
outbox, and the pump hands what it receives to a callback, calls
`after_messages` at the end of every pass of receiving (the messages of a
pass are handed over back to back, no other task runs between them: the
gateway's runs of deliveries span them, and end there), and calls
`after_burst` once what it received is handed over: when nothing more is
there to read after it let the other tasks run once, or after BURST
messages, or once the oldest message not handed over has waited long
enough: `flush_within` seconds, or FLUSH_COST_RATIO times what the last
`after_burst` took if that is longer (so writing never takes more than
about a fifth of the loop, however many clients a write reaches). So bursts
that follow each other closely share one `after_burst` (the gateway's one
write per client), a lone message waits for nothing but one pass of the
run queue (adaptive batching, no timer), and under a steady stream, where
every pass of the run queue or every message handled brings one more,
none waits for BURST messages.

The outbox is bounded (`capacity` entries): while the peer is gone or
slow, a frame that finds it full is dropped and counted, never waited
for. That loses nothing the gateway needs: events are resent until
answered (`--resend-after`), and a heartbeat stuck behind a queue says
nothing anyway.

Joining (`join_at_most` > 1): entries of two frames (an event's [key, body])
that wait in the outbox one after another go out as one ZeroMQ message,
[key, body, key, body, ...], up to `join_at_most` of them while their frames
stay under `join_bytes` (an entry larger than that goes alone). One message
wakes the peer's I/O thread and its loop once for all of them. Any other entry
(a heartbeat's one frame) always goes alone, and one waiting alone is sent as
it is: a lone event looks on the wire as it always did.

Chosen over a thread bridge and over zmq-anyio: no thread hand-off per
message and no extra dependency, and on the Trio run loop itself.
"""

from __future__ import annotations

import contextlib
import logging
import os
import select
from collections import deque
from collections.abc import Callable, Iterator
from itertools import islice

import trio
import zmq

from stack.frames import recv_frames, send_frames

log = logging.getLogger("chat.gateway")

BURST = 256  # messages moved one way before looking the other way
FLUSH_WITHIN = 0.002  # seconds a received message may wait for an after_burst while more keep coming
FLUSH_COST_RATIO = 4  # ... or this many times what the last after_burst took
DROP_LOG_EVERY = 1000  # log the first drop, then one line per this many
# plain ints: an int & an IntFlag member runs the enum's Python-level __rand__, once per look at the socket
_EVENTS, _POLLIN, _POLLOUT = int(zmq.EVENTS), int(zmq.POLLIN), int(zmq.POLLOUT)


class ZmqPump:
    def __init__(
        self,
        sock: zmq.Socket[bytes],
        on_message: Callable[[list[bytes]], None],
        capacity: int = 10_000,
        after_burst: Callable[[], None] | None = None,
        flush_within: float = FLUSH_WITHIN,
        join_at_most: int = 1,
        join_bytes: int = 0,
        after_messages: Callable[[], None] | None = None,
    ) -> None:
        self.sock = sock
        self.on_message = on_message
        self.after_messages = after_messages  # after each pass that handed messages over, before a checkpoint
        self.after_burst = after_burst
        self.capacity = capacity
        self.dropped = 0  # frames refused by a full outbox
        self.join_at_most = join_at_most  # two-frame entries sent as one message, at most
        self.join_bytes = join_bytes  # ... while their frames stay under this many bytes
        self._outbox: deque[list[bytes]] = deque()
        self._poke: int | None = None  # an eventfd that wakes the pump, while it sleeps on its socket
        self._asleep = False  # waiting for the socket or a poke: put_nowait pokes it
        self._poked = False
        self._unflushed = 0  # messages handed over since the last after_burst
        self.flush_within = flush_within
        self._unflushed_since = 0.0  # when the first of them came
        self._wait_at_most = flush_within  # how long the first may wait: adapts to what an after_burst costs

    def __len__(self) -> int:
        return len(self._outbox)

    def clear(self) -> None:
        """Forget what is queued (for an identity this socket has given up)."""
        self._outbox.clear()

    def put_nowait(self, frames: list[bytes]) -> bool:
        """Queue frames to send -> False (and dropped, counted) if the outbox is full."""
        if len(self._outbox) >= self.capacity:
            self.dropped += 1
            if self.dropped == 1 or self.dropped % DROP_LOG_EVERY == 0:
                log.warning("outbox full (%d messages): dropped %d so far", self.capacity, self.dropped)
            return False
        self._outbox.append(frames)
        if self._asleep and self._poke is not None:  # one poke a sleep: no cancel scope to unwind
            self._asleep, self._poked = False, True
            os.eventfd_write(self._poke, 1)
        return True

    async def run(self) -> None:
        fd = int(self.sock.getsockopt(zmq.FD))
        with _socket_or_poke(fd) as (either, poke):
            self._poke = poke
            try:
                await self._pump(fd, either, poke)
            finally:
                self._poke, self._asleep = None, False

    async def _pump(self, fd: int, either: int, poke: int) -> None:
        while True:
            events = int(self.sock.getsockopt(_EVENTS))
            moved = False
            if events & _POLLIN:
                moved = self._receive_burst()
            if self._outbox and events & _POLLOUT:
                moved = self._send_burst() or moved
            if moved:
                if self._unflushed >= BURST or self._overdue():
                    self._after_burst()
                await trio.lowlevel.checkpoint()
                continue
            self._after_burst()  # nothing more came in meanwhile: hand it on now
            if self._outbox:  # at the high-water mark: wait for POLLOUT
                await trio.lowlevel.wait_readable(fd)
                continue
            self._asleep = True
            await trio.lowlevel.wait_readable(either)  # the socket's FD, or a put_nowait's poke
            self._asleep = False
            if self._poked:
                self._poked = False
                os.eventfd_read(poke)

    def _receive_burst(self) -> bool:
        for _ in range(BURST - self._unflushed):  # at most BURST between two after_bursts, as ever
            frames = recv_frames(self.sock)
            if frames is None:
                break
            if not self._unflushed:
                self._unflushed_since = trio.current_time()
            self._unflushed += 1
            self.on_message(frames)
            if self._overdue():
                break
        if self.after_messages is not None:
            self.after_messages()
        return True

    def _overdue(self) -> bool:
        """Messages handed over, and the first of them waited long enough already."""
        return self._unflushed > 0 and trio.current_time() - self._unflushed_since >= self._wait_at_most

    def _after_burst(self) -> None:
        if self._unflushed and self.after_burst is not None:
            started = trio.current_time()
            self.after_burst()
            cost = trio.current_time() - started
            self._wait_at_most = max(self.flush_within, FLUSH_COST_RATIO * cost)
        self._unflushed = 0

    def _send_burst(self) -> bool:
        sent = 0  # entries, as many messages or fewer
        outbox = self._outbox
        while outbox and sent < BURST:
            frames, entries = self._next_message() if len(outbox) > 1 else (outbox[0], 1)
            try:
                send_frames(self.sock, frames)
            except zmq.Again:  # nothing of it went: all of it stays queued, in order
                break
            for _ in range(entries):
                outbox.popleft()
            sent += entries
        return sent > 0

    def _next_message(self) -> tuple[list[bytes], int]:
        """The frames of the next message and the outbox entries they carry: the first entry,
        joined by the two-frame entries behind it if it is one (within the bounds)."""
        first = self._outbox[0]
        if self.join_at_most <= 1 or len(first) != 2:
            return first, 1
        frames = list(first)
        size, entries = len(first[0]) + len(first[1]), 1
        for entry in islice(self._outbox, 1, self.join_at_most):
            if len(entry) != 2:
                break
            size += len(entry[0]) + len(entry[1])
            if size > self.join_bytes:
                break
            frames += entry
            entries += 1
        return frames, entries


@contextlib.contextmanager
def _socket_or_poke(fd: int) -> Iterator[tuple[int, int]]:
    """-> (a descriptor readable when `fd` is or when the eventfd is written, the eventfd):
    a task waits on both at once, and is woken by a write instead of a cancellation."""
    poke = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
    try:
        with select.epoll() as either:
            either.register(fd, select.EPOLLIN)
            either.register(poke, select.EPOLLIN)
            yield either.fileno(), poke
    finally:
        os.close(poke)
