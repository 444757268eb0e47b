"""A client's input: reading its socket, and what one read means.

The connection's door (`protocol.doors`: the line protocol, IRC or WebSocket)
says what the bytes mean; what it answers itself (bad lines, IRC's local
replies, the WebSocket handshake) is written at once and never leaves the
gateway. Every read costs the client rate-limit tokens, for its bytes and
for every line (or frame) it ends, empty and bad ones too
(`gateway.ratelimit.read_cost`). Too many lines in one read, or bad lines
(and telnet commands) past the client's allowance, and it is a flooder.

TLS: the socket may be one wrapped by OpenSSL (`gateway.tls`). It is read
the same way; OpenSSL's "want read/write" counts as a would-block, and input
OpenSSL has decrypted already (`pending`) is read before waiting on the
socket again.

`Reader` adds this to a connection's write path (gateway.output); gateway.client
builds on it: who reads, when, and where the lines go.
"""

from __future__ import annotations

import math
import socket
import ssl
from typing import Protocol

import trio

from gateway.output import WOULD_BLOCK, Output, Shared
from gateway.ratelimit import TokenBucket, read_cost
from protocol.doors import Door, Input

READ_SIZE = 65536
TLS_RECORD = 16384  # the most one TLS read returns (a record's plaintext)


class ReadShared(Shared, Protocol):
    """What the read path needs of what all clients of a gateway share (gateway.client.ClientHooks)."""

    @property
    def unlimited(self) -> TokenBucket: ...  # rate 0: one bucket for all


class Reader(Output):
    """A connection's socket reads, its door and its token buckets."""

    __slots__ = ("_bad", "_bucket", "_reader_lot", "_tls", "door")

    _hooks: ReadShared

    def __init__(self, sock: socket.socket, door: Door, hooks: ReadShared) -> None:
        super().__init__(sock, hooks)
        self.door = door  # what the bytes mean, how deliveries are shown (protocol.doors)
        self._tls = isinstance(sock, ssl.SSLSocket)  # OpenSSL may hold decrypted input: read it first
        self._reader_lot: trio.lowlevel.ParkingLot | None = None
        self._bucket: TokenBucket | None = None  # the rate limit, from the first read on
        self._bad: TokenBucket | None = None  # the bad lines' allowance, likewise

    def wake_reader(self) -> None:
        if self._reader_lot is not None:
            self._reader_lot.unpark_all()

    async def wait_for_reader_wakeup(self, timeout: float) -> None:
        """Park the reader until `wake_reader` (or `timeout`, to look around again)."""
        if self._reader_lot is None:
            self._reader_lot = trio.lowlevel.ParkingLot()
        with trio.move_on_after(timeout):
            await self._reader_lot.park()

    async def _receive(self) -> bytes:
        while True:
            if not (self._tls and self.sock.pending()):  # type: ignore[attr-defined]
                await trio.lowlevel.wait_readable(self.sock)
            try:
                return self.sock.recv(READ_SIZE)
            except WOULD_BLOCK:
                continue  # woken without data (or half a TLS record): wait again

    def _receive_nowait(self) -> bytes | None:
        """A read if there is input now (b'': end of input); None: nothing to read."""
        try:
            return self.sock.recv(READ_SIZE)
        except WOULD_BLOCK:
            return None

    async def _receive_by(self, deadline: float) -> bytes | None:
        """The next read, or None when `deadline` passed first."""
        if deadline == math.inf:
            return await self._receive()
        with trio.move_on_at(deadline):
            return await self._receive()
        return None

    def _buckets(self, now: float) -> tuple[TokenBucket, TokenBucket]:
        """The rate limit and the bad lines' allowance, made at the first read."""
        if self._bucket is None or self._bad is None:
            limits = self.limits
            if limits.rate <= 0:  # no limit: a bucket of rate 0 keeps no state, so all share one
                self._bucket = self._bad = self._hooks.unlimited
            else:
                self._bucket = TokenBucket(limits.rate, limits.burst, now)
                self._bad = TokenBucket(limits.bad_line_rate, limits.max_bad_lines, now)
        return self._bucket, self._bad

    def _parse(self, data: bytes) -> Input | None:
        """One read -> what it means (answers to bad input pushed here); None: a flooder."""
        now = trio.current_time()
        bucket, bad = self._buckets(now)
        limits = self.limits
        items = self.door.count_items(data)  # counted before parsing: a flood costs its sender, not the gateway
        if limits.rate > 0 and items > limits.max_waiting_lines:
            return None
        got = self.door.feed(data)
        items = max(items, got.items)
        if limits.rate > 0 and items > limits.max_waiting_lines:
            return None
        bad.charge(got.noise, now)
        if bad.debt_delay(now) > 0:
            return None
        answered = bad.take(len(got.bad), now)
        bucket.charge(read_cost(items, len(data)) - len(got.lines), now)
        if got.replies:
            self.push(got.written(answered))
        self.flush()
        return None if answered < len(got.bad) else got
