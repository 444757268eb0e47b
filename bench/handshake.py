"""The handshake of the protocol (README) or of IRC for many clients at once, a bounded number in progress.

Chat: each client connects, reads the greeting (a line starting `* `), sends
`/nick` and `/join` in one write, and is registered when it reads
`* you joined #room` (or, without a room, `* you are now NICK`). Any
`! ` line or a close before that fails it.
IRC: NICK and USER at once, then on `001` (welcome) OPER and MODE +F when the
spec asks for it (ngIRCd's throttle), JOIN, and a PING: registered on its
PONG, which the server sends once it has worked through (and paid any
penalty for) everything before it.
An ERROR or a 4xx/5xx reply fails it; a PING is answered.
The first failure stops new connections, and `open_clients` raises once
those in progress are done.

Against a server with a small listen backlog (ngIRCd: 10) `connect_cap`
bounds the connections the server has not answered yet. Our connect
completes as soon as the kernel has queued it, long before the server
accept()s it; a cap on connects alone let the queue overflow, and every
SYN dropped there costs its client a retransmission 1, 3, 7 s later.
Only the server's first bytes show it has taken the connection out of
the queue.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass

from bench import dialect
from bench.loadgen import Addr, Conn, Loop, ignore_close, ignore_lines


@dataclass(frozen=True, slots=True)
class ClientSpec:
    nick: str
    room: str | None  # lower case, with '#'; None: only /nick
    addr: Addr
    oper: bool = False  # IRC: become an operator with relaxed flood protection (a sender on ngIRCd)
    source: str | None = None  # the local address to connect from (None: the kernel's choice)


class HandshakeFailed(RuntimeError):
    pass


class _Handshake:
    """One client's way from connect to registered."""

    __slots__ = ("greeted", "hello", "index", "opener", "spec", "waiting_for")

    def __init__(self, opener: _Opener, index: int, spec: ClientSpec) -> None:
        self.opener = opener
        self.index = index
        self.spec = spec
        self.greeted = False
        room = spec.room
        self.hello = (f"/nick {spec.nick}\n" + (f"/join {room}\n" if room else "")).encode()
        self.waiting_for = f"* you joined {room}" if room else f"* you are now {spec.nick}"

    def on_lines(self, conn: Conn, lines: list[bytes], now: int) -> None:
        for line in lines:
            if line.startswith(b"! "):
                self.opener.fail(conn, f"{self.spec.nick}: server said {line.decode(errors='replace')!r}")
                return
            if not self.greeted and line.startswith(b"* "):
                self.greeted = True
                conn.send(self.hello)
            elif self.greeted and line.decode(errors="replace").startswith(self.waiting_for):
                self.opener.ready(conn, self.index)
                return

    def on_close(self, conn: Conn) -> None:
        self.opener.fail(conn, f"{self.spec.nick}: {conn.closed} during the handshake")


class _IrcHandshake:
    """One IRC client's way from connect to registered (and joined)."""

    __slots__ = ("index", "opener", "spec", "welcomed")

    def __init__(self, opener: _Opener, index: int, spec: ClientSpec, conn: Conn) -> None:
        self.opener = opener
        self.index = index
        self.spec = spec
        self.welcomed = False
        conn.send(dialect.register(spec.nick))

    def on_lines(self, conn: Conn, lines: list[bytes], now: int) -> None:
        for line in lines:
            answer = dialect.pong(line)
            if answer is not None:
                conn.send(answer)
                continue
            if dialect.is_error(line):
                self.opener.fail(conn, f"{self.spec.nick}: server said {line.decode(errors='replace')!r}")
                return
            command = dialect.command_of(line)
            if command == b"001" and not self.welcomed:
                self.welcomed = True
                spec = self.spec
                oper = dialect.oper(spec.nick) if spec.oper else b""
                conn.send(oper + (dialect.join(spec.room) if spec.room else b"") + dialect.PING_READY)
            if self.welcomed and command == b"PONG":
                self.opener.ready(conn, self.index)
                return

    def on_close(self, conn: Conn) -> None:
        self.opener.fail(conn, f"{self.spec.nick}: {conn.closed} during the handshake")


class _Opener:
    """Runs the handshakes of `specs` with at most `window` in progress."""

    def __init__(self, loop: Loop, specs: Sequence[ClientSpec], window: int, speech: str,
                 connect_cap: int | None = None) -> None:
        self.loop = loop
        self.connect_cap = connect_cap  # at most this many connections the server has not answered yet
        self.connecting: list[Conn] = []
        self.irc = speech == dialect.IRC
        self.specs = specs
        self.window = window
        self.started = 0
        self.in_progress = 0
        self.conns: list[Conn | None] = [None] * len(specs)
        self.n_ready = 0
        self.errors: list[str] = []

    def tick(self, now: int) -> float | None:
        if self.connect_cap is not None:
            self.connecting = [conn for conn in self.connecting if not conn.heard and conn.closed is None]
        while not self.errors and self.in_progress < self.window and self.started < len(self.specs):
            if self.connect_cap is not None and len(self.connecting) >= self.connect_cap:
                return 0.001  # a small listen backlog: let the server accept these first
            self._start(self.started)
            self.started += 1
        return None

    def done(self) -> bool:
        return self.n_ready == len(self.specs) or (bool(self.errors) and self.in_progress == 0)

    def _start(self, i: int) -> None:
        spec = self.specs[i]
        try:
            conn = Conn(self.loop, spec.addr, tag=i, source=spec.source)
        except OSError as exc:
            self.errors.append(f"client {i}: {exc}")
            return
        self.in_progress += 1
        if self.connect_cap is not None:
            self.connecting.append(conn)
        shake = _IrcHandshake(self, i, spec, conn) if self.irc else _Handshake(self, i, spec)
        conn.handler = shake.on_lines
        conn.on_close = shake.on_close

    def ready(self, conn: Conn, i: int) -> None:
        conn.handler = ignore_lines
        conn.on_close = ignore_close
        self.conns[i] = conn
        self.n_ready += 1
        self.in_progress -= 1

    def fail(self, conn: Conn, why: str) -> None:
        conn.on_close = ignore_close
        self.errors.append(why)
        self.in_progress -= 1
        conn.close()


def open_clients(loop: Loop, specs: Sequence[ClientSpec], timeout: float, window: int = 256,
                 label: str = "", speech: str = dialect.CHAT, connect_cap: int | None = None) -> list[Conn]:
    """Connect and register every client of `specs` in `speech`; raise HandshakeFailed on the first failure.

    At most `window` handshakes are in progress, and of them at most
    `connect_cap` (None: no cap) connections the server has not answered yet.
    """
    opener = _Opener(loop, specs, window, speech, connect_cap)

    def progress() -> None:
        print(f"  {label}: {opener.n_ready}/{len(specs)} clients registered", file=sys.stderr, flush=True)

    finished = loop.run(opener.done, time.monotonic() + timeout, opener.tick, progress)
    if opener.errors:
        raise HandshakeFailed(f"{len(opener.errors)} handshake(s) failed; first: {opener.errors[0]}")
    if not finished:
        raise HandshakeFailed(f"only {opener.n_ready} of {len(specs)} clients registered within {timeout:.0f}s")
    return [conn for conn in opener.conns if conn is not None]


def settle(loop: Loop, conns: Sequence[Conn], timeout: float, speech: str = dialect.CHAT) -> int:
    """Let every connection read what registration left on its way to it -> the lines read (pongs left out);
    raise HandshakeFailed if a pong does not come.

    A client is registered on its own `you joined`, but the notices of
    members who joined after it may still be on their way when the last
    one registers, and a measurement would count them as stray lines. Each
    connection sends a ping and reads (ignoring) everything up to its pong:
    the server wrote those notices before it, on the same connection.
    """
    irc = speech == dialect.IRC
    ping = dialect.PING_READY if irc else b"/ping" if speech == dialect.WS else b"/ping\n"
    waiting: set[int] = set()
    read = 0

    def until_pong(conn: Conn, lines: list[bytes], now: int) -> None:
        nonlocal read
        for i, line in enumerate(lines):
            if irc and (answer := dialect.pong(line)) is not None:
                conn.send(answer)
            elif (dialect.command_of(line) == b"PONG") if irc else line == b"* pong":
                waiting.discard(id(conn))
                conn.handler = ignore_lines
                ignore_lines(conn, lines[i + 1:], now)
                return
            read += 1

    for conn in conns:
        waiting.add(id(conn))
        conn.handler = until_pong
        conn.send(ping)
    if not loop.run(lambda: not waiting, time.monotonic() + timeout):
        raise HandshakeFailed(f"{len(waiting)} of {len(conns)} clients had no answer to a ping within {timeout:.0f}s")
    return read
