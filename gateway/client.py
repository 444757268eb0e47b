"""One client connection: a raw non-blocking socket served by a task while
it is busy, with output written straight to the kernel whenever it takes it.

Input: the connection's task (`serve`) waits for the socket to be
readable, has its door say what the bytes mean (gateway.reader), and hands
every batch of chat lines that one read completed to the gateway as one
event. Lines over the rate limit, and a debt, wait in the reader, which
meanwhile reads nothing more: the client's own TCP window holds it back. A
flooder is told it floods and cut off. A client that is not `ready` (an IRC
client registered, a browser upgraded to WebSocket) by its deadline is cut
too. When the client half-closes (a FIN: it may still read), its task lets
out what its lines caused before it ends.

Idle: a ready client (registered, upgraded) whose socket has nothing more
to read and that owes the rate limit nothing is parked (`gateway.idle`): its
task ends, and the one watcher of the gateway starts a new one when the
socket wakes (input, a FIN, an error) or when the connection must end. A
short read that needs no waiting (no rate-limit debt, room in its session,
not TLS, not the end) is served there and then, with no task
(`serve_nowait`): the lines of a chat client's typical wake-up go on without
one, and so does the end of an idle client that closes (nothing its lines
caused is still on its way to it: it is closed at once). A ready client's
task never waits on its socket: it reads while there is input (letting
other tasks run between reads) and parks once a read comes back short
(the watcher's epoll is level-triggered: what came meanwhile wakes it at
once).
What a task kept between reads (the token buckets, the registration
deadline) lives on the client. A client that is not ready keeps its task,
which waits on the socket until its deadline.

Output: pushed lines go to the kernel once per burst, a writer exists only
while there is a backlog (gateway.output). TLS: the socket may be one
wrapped by OpenSSL (`gateway.tls`), read and written the same way.
"""

from __future__ import annotations

import math
import socket
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Protocol

import trio

from gateway.output import ClientLimits, Spawn
from gateway.ratelimit import TokenBucket
from gateway.reader import READ_SIZE, TLS_RECORD, Reader
from protocol.doors import Door

OnLines = Callable[["Client", list[str]], Awaitable[None]]
OnLinesNowait = Callable[["Client", list[str]], bool]
OnEof = Callable[["Client"], Awaitable[None]]
OnEofNowait = Callable[["Client"], bool]
OnOpen = Callable[["Client"], None]
FLOODING_TEXT = "flooding: too many lines at once; disconnecting"
FLOODING_REASON = "flooding"  # `closing` of a client cut for flooding
REGISTRATION_TIMEOUT = "registration timeout"  # `closing` (and what it is told) of a client that never got ready
INLINE_READ = 4096  # a woken client's read parsed without a task at most (a longer one gets its task)


class Parking(Protocol):
    """Where idle clients wait without a task of their own (gateway.idle)."""

    def park(self, client: Client) -> bool: ...

    def rouse(self, client: Client) -> None: ...


@dataclass(frozen=True, slots=True)
class ClientHooks:
    """What all clients of a gateway share: one object, not a closure (or a field) per connection.

    `on_lines(client, lines)` takes each read's lines; `on_open` runs when a door that was
    not a chat connection becomes one (a WebSocket upgrade), before its first lines go on;
    `on_eof` runs at the client's end of input (a FIN: it may still read) before the
    connection closes: it lets the replies out. `parking` holds idle clients.
    `on_lines_nowait(client, lines)` takes lines only if it need not wait (-> False: it took
    nothing); a parked client that wakes is served without a task while it says yes.
    `on_eof_nowait(client)`, at the end of input of a parked client, says goodbye for it if
    nothing its lines caused is still on its way to it (-> True: it may close now, no task).
    """

    limits: ClientLimits
    spawn: Spawn  # starts a task in the gateway's nursery: the writer for a backlog
    on_lines: OnLines
    on_eof: OnEof | None
    on_open: OnOpen | None
    parking: Parking | None  # None: every connection keeps its task
    unlimited: TokenBucket = field(default_factory=lambda: TokenBucket(0.0, 1, 0.0))  # rate 0: one for all
    on_lines_nowait: OnLinesNowait | None = None  # None: a woken client always gets its task
    on_eof_nowait: OnEofNowait | None = None  # None: a client at its end of input always gets its task


class Client(Reader):
    """One client's connection: its task, its hand-off to the idle watcher and back, its read loop."""

    __slots__ = (
        "_deadline",
        "_scope",
        "cid",
        "peer",
        "watched",
    )

    _hooks: ClientHooks

    def __init__(self, cid: str, sock: socket.socket, door: Door, peer: str, hooks: ClientHooks,
                 deadline: float = math.inf) -> None:
        super().__init__(sock, door, hooks)
        self.cid = cid
        self.peer = peer  # the client's "host:port"
        self._deadline = deadline  # to be `ready` by (registered, upgraded), or be cut
        self._scope: trio.CancelScope | None = None  # the connection's task, while it has one
        self.watched = 0  # its socket in the idle watcher's epoll set: not (0), disarmed (1), armed (2) (gateway.idle)

    @property
    def awaited(self) -> bool:
        """Whether a task may be waiting on the socket in Trio: the connection's own, or its writer."""
        return self._scope is not None or self._writer is not None

    # --- the connection's task ------------------------------------------------

    async def serve(self, first: bytes = b"", readable: bool = False, held: list[str] | None = None) -> str | None:
        """Read (`first`, then the socket) while the connection is busy; `held`: lines read
        already, to hand on first (at the rate limit's pace).

        -> None: it went idle and is parked (gateway.idle), no task needed until
        it wakes (then `serve_nowait`, or `serve` it again, `readable`); '' or
        'connection reset': the connection ended.
        """
        hooks = self._hooks
        with trio.CancelScope() as scope:
            self._scope = scope
            try:
                if held:
                    await self._forward(held)
                if self.closing is None and not self.broken:
                    if await self._read_loop(first, readable):
                        self._scope = None  # parked: the watcher has it now
                        return None
                    if hooks.on_eof is not None and self.closing is None and not self.broken:
                        await hooks.on_eof(self)
                        self.close_after(b"", "end of input")
            except (OSError, trio.ClosedResourceError):
                self.broken = True
            if not self.broken and self.closing is not None and self._backlog is not None:
                await trio.sleep_forever()  # the writer ends the connection once the backlog is out
        self._scope = None
        return "connection reset" if self.broken else ""

    def ended(self) -> str | None:
        """A parked client that must close and has nothing left to write -> why it ended
        (its task would do nothing more); None: it is not over, or it has a backlog to let out."""
        if (self.closing is None and not self.broken) or self._backlog is not None or self._scope is not None:
            return None
        return self.closing or ("connection reset" if self.broken else "")

    def serve_nowait(self) -> tuple[bytes, list[str]] | None:
        """A parked client woke: serve one short read here, with no task, if nothing in it must
        wait (a rate-limit debt, a full session, TLS, the end of input while replies are on their
        way, a close), and park it again -> None (at an end of input with none on the way, it is
        closing instead: `ended`). Otherwise -> (what was read and not parsed, lines parsed and not handed on): its
        task (`serve`, readable) goes on from there. Lines the rate limit holds back go to the task."""
        on_lines = self._hooks.on_lines_nowait
        if (self.closing is not None or self.broken or self._tls or not self.door.ready or on_lines is None
                or (self._bucket is not None and self._bucket.debt_delay(trio.current_time()) > 0)
                or not on_lines(self, [])):
            return b"", []
        try:
            received = self._receive_nowait()
            if received is None:  # woken with nothing to read
                return None if self._park() else (b"", [])
            if not received and self._end_of_input_nowait():
                return b"", []  # closing, nothing left to let out: `ended` says so
            if not received or len(received) > INLINE_READ:  # the end of input, or more than a short read
                return received, []
            held = self._take_read(received, on_lines)
        except (OSError, trio.ClosedResourceError):
            self.broken = True
            return b"", []
        if held or self.closing is not None or self.broken or not self._park():
            return b"", held
        return None

    def _end_of_input_nowait(self) -> bool:
        """The client half-closed while idle: close it now, with no task, if nothing its lines
        caused is still on its way to it (`on_eof_nowait` says; it says goodbye for it) -> False:
        its task lets the replies out first (`on_eof`)."""
        on_eof = self._hooks.on_eof_nowait
        if on_eof is None or not on_eof(self):
            return False
        self.close_after(b"", "end of input")
        return True

    def _take_read(self, data: bytes, on_lines: OnLinesNowait) -> list[str]:
        """One read's meaning, answered and handed on now -> the lines the rate limit holds back."""
        chatting = self.door.chatting
        got = self._parse(data)
        if got is None:
            self.close_after(self.door.end(FLOODING_TEXT), FLOODING_REASON)
            return []
        if got.close is not None:
            self.close_after(b"", got.close)
            return []
        if not chatting and self.door.chatting and self._hooks.on_open is not None:
            self._hooks.on_open(self)
        lines = got.lines
        if not lines or self._bucket is None:
            return []
        granted = self._bucket.take(len(lines), trio.current_time())
        if granted:
            on_lines(self, lines[:granted])
        return lines[granted:]

    def park_new(self) -> bool:
        """Park a client nothing was read from yet -> False: it needs its task (`serve`)
        now (its door must be read by a deadline, or parking is off)."""
        return self.door.ready and self.closing is None and not self.broken and self._park()

    def _end(self) -> None:
        """The connection is over: cancel its task, or wake it from the parking to end."""
        if self._scope is not None:
            self._scope.cancel()
        elif self._hooks.parking is not None:
            self._hooks.parking.rouse(self)

    # --- the read loop ----------------------------------------------------------

    async def _read_loop(self, data: bytes, readable: bool) -> bool:
        """Read until EOF (-> False) or until idle (-> True: parked); each read's lines go on.

        The door (`protocol.doors`) says what the bytes mean. Every read costs
        the client tokens (`read_cost`): lines over the rate wait here, and
        while they (or a debt) wait, nothing more is read: the client's own
        TCP window then holds it back. A read of too many lines, or more bad
        lines than the client's allowance, cuts it off; so does not being
        `ready` (registered, upgraded) by its deadline. A ready client with
        nothing owed and nothing to read is parked.
        """
        hooks = self._hooks
        fresh = True  # no read yet in this task
        while self.closing is None:
            if not data:
                if self._bucket is not None and (debt := self._bucket.debt_delay(trio.current_time())) > 0:
                    await trio.sleep(debt)
                    readable = True
                if self.door.ready and hooks.parking is not None:
                    # a short read took all there was: park at once (the watcher's epoll is level-
                    # triggered: input that came meanwhile wakes it at once); else read on
                    received = None
                    if readable:
                        if not fresh:
                            await trio.lowlevel.checkpoint()  # a client that keeps sending lets the others run
                        received = self._receive_nowait()
                    if received is None:
                        if self.closing is not None:
                            return False
                        if self._park():
                            return True
                        received = await self._receive()  # decrypted TLS input waits, or no parking
                else:
                    received = await self._receive_by(self._deadline if not self.door.ready else math.inf)
                    if received is None:
                        self.close_after(self.door.end(REGISTRATION_TIMEOUT), REGISTRATION_TIMEOUT)
                        return False
                fresh = False
                if not received:
                    return False
                readable = len(received) >= (TLS_RECORD if self._tls else READ_SIZE)
                data = received
            chatting = self.door.chatting
            got = self._parse(data)
            data = b""
            if got is None:
                self.close_after(self.door.end(FLOODING_TEXT), FLOODING_REASON)
                return False
            if got.close is not None:
                self.close_after(b"", got.close)
                return False
            if not chatting and self.door.chatting and hooks.on_open is not None:
                hooks.on_open(self)
            await self._forward(got.lines)
        return False

    def _park(self) -> bool:
        """Idle: hand the connection to the watcher -> False if it must keep its task for now."""
        parking = self._hooks.parking
        if self._tls and self.sock.pending():  # type: ignore[attr-defined]
            return False
        return parking is not None and parking.park(self)

    async def _forward(self, lines: list[str]) -> None:
        """Hand the lines on at the rate the bucket allows."""
        bucket = self._bucket
        assert bucket is not None
        on_lines = self._hooks.on_lines
        while lines and self.closing is None:
            granted = bucket.take(len(lines), trio.current_time())
            if granted:
                await on_lines(self, lines[:granted])
                del lines[:granted]
            if lines:
                await trio.sleep(bucket.delay(trio.current_time()))
