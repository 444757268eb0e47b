"""The load generator's core: many non-blocking client sockets on one selector.

Everything runs in one thread of one process, so the generator's own cost
is one figure (its CPU time) and it can be told when it is the bottleneck.
A `Conn` is one client: a socket with TCP_NODELAY, an input buffer cut
into lines at LF, and an output buffer that is flushed when the socket is
writable again. On a loop made with `ws=True` every connection speaks
WebSocket (`bench.wsframe`): it writes the upgrade request first, each
`send` becomes one masked text frame, and what it reads is cut into
frames, each rendered as one line, so the handlers read both alike.
Each connection has a `handler(conn, lines, now_ns)` that gets every
complete line one read produced, and an `on_close(conn)`.

`Loop.run` turns the selector until a condition holds or a deadline
passes, calling a `tick(now_ns)` after each round of I/O (where senders
write) and a progress callback about once a second.
"""

from __future__ import annotations

import contextlib
import errno
import resource
import selectors
import socket
import ssl
import time
from collections.abc import Callable

from bench.wsframe import WsClient

Addr = tuple[str, int]
Handler = Callable[["Conn", list[bytes], int], None]

RECV_SIZE = 256 * 1024
IP_BIND_ADDRESS_NO_PORT = getattr(socket, "IP_BIND_ADDRESS_NO_PORT", 24)  # Linux: pick the port at connect
_READ = selectors.EVENT_READ
_WRITE = selectors.EVENT_WRITE


def raise_file_limit(wanted: int) -> int:
    """Raise the soft RLIMIT_NOFILE towards `wanted` (at most the hard limit) -> the new soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if target > soft:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        return target
    return soft


def ignore_lines(conn: Conn, lines: list[bytes], now: int) -> None:
    conn.lines_in += len(lines)


def ignore_close(conn: Conn) -> None:
    pass


class Conn:
    """One client socket. `closed` holds the reason once it is closed."""

    __slots__ = ("addr", "closed", "connected", "handler", "heard", "inbuf", "lines_in", "loop", "on_close", "out",
                 "quickack", "sock", "tag", "tls", "ws")

    def __init__(self, loop: Loop, addr: Addr, tag: object = None, source: str | None = None) -> None:
        self.loop = loop
        self.addr = addr
        self.tag = tag
        self.inbuf = b""
        self.out = b""
        self.handler: Handler = ignore_lines
        self.on_close: Callable[[Conn], None] = ignore_close
        self.closed: str | None = None
        self.connected = False
        self.heard = False  # the server has sent something: it has accept()ed us, we are out of its listen queue
        self.lines_in = 0
        self.quickack = False  # re-arm TCP_QUICKACK after every read: no delayed ACK towards the server
        self.tls = loop.tls is not None  # True until the TLS handshake is done, then False
        self.ws: WsClient | None = None
        if loop.ws:
            self.ws = WsClient(f"{addr[0]}:{addr[1]}")
            self.out = self.ws.request()  # written once connected, before any frame
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            self.sock.setblocking(False)
            self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if source is not None:  # a source address of its own: another ephemeral port range
                self.sock.setsockopt(socket.IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, 1)
                self.sock.bind((source, 0))
            code = self.sock.connect_ex(addr)
            if code not in (0, errno.EINPROGRESS):
                raise OSError(code, f"connect to {addr[0]}:{addr[1]}: {errno.errorcode.get(code, code)}")
            if loop.tls is not None:
                self.sock = loop.tls.wrap_socket(self.sock, do_handshake_on_connect=False)
            loop.sel.register(self.sock, _READ | _WRITE, self)
        except BaseException:
            self.sock.close()
            raise
        loop.conns.add(self)

    def send(self, data: bytes) -> None:
        if self.closed is not None:
            return
        if self.ws is not None:
            data = self.ws.frame(data)
        self._write(data)

    def _write(self, data: bytes) -> None:
        if self.out or not self.connected:
            self.out += data
            return
        try:
            sent = self.sock.send(data)
        except (BlockingIOError, ssl.SSLWantWriteError, ssl.SSLWantReadError):
            sent = 0
        except OSError as exc:
            self.close(f"send: {exc}")
            return
        if sent < len(data):
            self.out = data[sent:]
            self.loop.sel.modify(self.sock, _READ | _WRITE, self)

    def _handshake(self) -> None:
        """Drive the TLS handshake one step; `connected` once it is done."""
        try:
            self.sock.do_handshake()  # type: ignore[attr-defined]
        except (ssl.SSLWantReadError, ssl.SSLWantWriteError):
            return
        except (OSError, ssl.SSLError) as exc:
            self.close(f"TLS handshake: {exc}")
            return
        self.tls = False
        self.connected = True
        self.on_writable()

    def on_writable(self) -> None:
        if self.tls:
            self._handshake()
            return
        if not self.connected:
            code = self.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            if code:
                self.close(f"connect: {errno.errorcode.get(code, code)}")
                return
            self.connected = True
        if self.out:
            try:
                sent = self.sock.send(self.out)
            except (BlockingIOError, ssl.SSLWantWriteError, ssl.SSLWantReadError):
                return
            except OSError as exc:
                self.close(f"send: {exc}")
                return
            self.out = self.out[sent:]
        if not self.out:
            self.loop.sel.modify(self.sock, _READ, self)

    def on_readable(self, now: int) -> None:
        if self.tls:
            self._handshake()
            return
        try:
            data = self.sock.recv(RECV_SIZE)
            if self.loop.tls is not None:  # one TLS record a recv: take what is decrypted already too
                while data and self.sock.pending():  # type: ignore[attr-defined]
                    data += self.sock.recv(RECV_SIZE)
        except (BlockingIOError, ssl.SSLWantReadError, ssl.SSLWantWriteError):
            return
        except OSError as exc:
            self.close(f"recv: {exc}")
            return
        if not data:
            self.close("closed by the server")
            return
        self.heard = True
        if self.quickack:  # the kernel clears it again after a while: set it after each read
            self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_QUICKACK, 1)
        if self.ws is not None:
            self._on_frames(data, now)
            return
        if self.inbuf:
            data = self.inbuf + data
        lines = data.split(b"\n")
        self.inbuf = lines.pop()
        if lines:
            self.handler(self, lines, now)

    def _on_frames(self, data: bytes, now: int) -> None:
        assert self.ws is not None
        reading = self.ws.feed(data)
        if reading.reply:
            self._write(reading.reply)
        if reading.lines:
            self.handler(self, reading.lines, now)
        if reading.close is not None:
            self.close(reading.close)

    def close(self, reason: str = "closed by the client") -> None:
        if self.closed is not None:
            return
        self.closed = reason
        with contextlib.suppress(KeyError, ValueError):  # not registered (any more)
            self.loop.sel.unregister(self.sock)
        self.sock.close()
        self.loop.conns.discard(self)
        self.on_close(self)


class Loop:
    """A selector and the connections registered on it."""

    def __init__(self, tls: ssl.SSLContext | None = None, ws: bool = False) -> None:
        """`tls`: every connection of this loop speaks TLS with this client context; `ws`: WebSocket."""
        self.sel = selectors.DefaultSelector()
        self.conns: set[Conn] = set()
        self.tls = tls
        self.ws = ws

    def run(self, done: Callable[[], bool], deadline: float,
            tick: Callable[[int], float | None] | None = None,
            progress: Callable[[], None] | None = None) -> bool:
        """Turn until `done()` or `deadline` (time.monotonic) -> done().

        `tick(now_ns)` runs after each round and returns the longest wait
        before it wants to run again (None: no wish).
        """
        wait: float | None = 0.0
        next_progress = time.monotonic() + 1.0
        while not done():
            now = time.monotonic()
            if now >= deadline:
                return done()
            if progress is not None and now >= next_progress:
                progress()
                next_progress = now + 1.0
            timeout = min(deadline - now, 0.1 if wait is None else wait)
            self._select(max(timeout, 0.0))
            wait = tick(time.perf_counter_ns()) if tick is not None else None
        return True

    def _select(self, timeout: float) -> None:
        events = self.sel.select(timeout) if self.sel.get_map() else _sleep(timeout)
        now = time.perf_counter_ns()
        for key, mask in events:
            conn: Conn = key.data
            if mask & _WRITE:
                conn.on_writable()
            if mask & _READ and conn.closed is None:
                conn.on_readable(now)

    def close_all(self) -> None:
        for conn in list(self.conns):
            conn.on_close = ignore_close
            conn.close()

    def close(self) -> None:
        self.close_all()
        self.sel.close()


def client_tls() -> ssl.SSLContext:
    """TLS towards our own self-signed test certificate: encryption measured, identity not checked."""
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


def _sleep(timeout: float) -> list[tuple[selectors.SelectorKey, int]]:
    time.sleep(timeout)
    return []
