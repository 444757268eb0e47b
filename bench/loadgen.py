"""The load generator's core: many non-blocking client sockets on one selector.

Everything runs in one thread of one process, so the generator's own cost
is one figure (its CPU time) and it can be told when it is the bottleneck.
A `Conn` is one client: a socket with TCP_NODELAY, an input buffer cut
into lines at LF (a line that grows past MAX_HELD bytes without one closes
the connection, with that reason), and an output buffer that is flushed when the socket is
writable again. On a loop made with `ws=True` every connection speaks
WebSocket (`bench.wsframe`): it writes the upgrade request first, each
`send` becomes one masked text frame, and what it reads is cut into
frames, each rendered as one line, so the handlers read both alike.
Each connection has a `handler(conn, lines, now_ns)` that gets every
complete line one read produced, and an `on_close(conn)`.

`Loop.run` turns the selector until a condition holds or a deadline
passes, calling a `tick(now_ns)` after each round of I/O (where senders
write) and a progress callback about once a second.

What a read costs is paid per delivery, so the read path stays short: the
selector is an epoll object used directly (fd -> Conn, no `selectors`
layer), the clock is read once a round, and a read takes at most
RECV_SIZE bytes, below glibc's initial mmap threshold (128 KiB): until
malloc has raised its threshold, a larger buffer is mapped, remapped and
unmapped again on every read.
"""

from __future__ import annotations

import contextlib
import errno
import resource
import select
import socket
import ssl
import time
from collections.abc import Callable

from bench.wsframe import WsClient

Addr = tuple[str, int]
Handler = Callable[["Conn", list[bytes], int], None]

RECV_SIZE = 64 * 1024  # always a heap allocation (256 KiB can be an mmap, an mremap and a munmap a read)
IP_BIND_ADDRESS_NO_PORT = getattr(socket, "IP_BIND_ADDRESS_NO_PORT", 24)  # Linux: pick the port at connect
_READ = select.EPOLLIN
_WRITE = select.EPOLLOUT
_BROKEN = select.EPOLLERR | select.EPOLLHUP  # both handlers see it, as `selectors` reports it
MAX_EVENTS = 1024  # events taken from one epoll_wait
MAX_HELD = 1 << 20  # bytes of one line held back waiting for its LF: a server sending more is broken


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

    __slots__ = ("addr", "born", "closed", "connected", "fd", "handler", "heard", "inbuf", "lines_in", "loop",
                 "on_close", "out", "quickack", "sock", "tag", "tls", "wants", "ws")

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
        self.wants = _READ | _WRITE  # the events it is registered for
        self.born = loop.rounds  # the loop's round it was made in
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
            self.fd = self.sock.fileno()
            loop.watch(self)
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
            self._want(_READ | _WRITE)

    def _want(self, events: int) -> None:
        self.wants = events
        self.loop.poller.modify(self.fd, events)

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
            self._want(_READ)

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
        lines, self.inbuf = cut_lines(self.inbuf, data)
        if lines:
            self.handler(self, lines, now)
        if len(self.inbuf) > MAX_HELD:
            self.close(f"a line of more than {MAX_HELD} bytes from the server")

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
        self.loop.forget(self)
        self.sock.close()
        self.loop.conns.discard(self)
        self.on_close(self)


class Loop:
    """A selector and the connections registered on it."""

    def __init__(self, tls: ssl.SSLContext | None = None, ws: bool = False) -> None:
        """`tls`: every connection of this loop speaks TLS with this client context; `ws`: WebSocket."""
        self.poller = select.epoll()
        self.by_fd: dict[int, Conn] = {}  # what the poller watches
        self.rounds = 0  # epoll_waits so far
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

    def watch(self, conn: Conn) -> None:
        self.poller.register(conn.fd, conn.wants)
        self.by_fd[conn.fd] = conn

    def forget(self, conn: Conn) -> None:
        if self.by_fd.get(conn.fd) is conn:
            del self.by_fd[conn.fd]
            with contextlib.suppress(OSError):  # closed already: epoll dropped it
                self.poller.unregister(conn.fd)

    def _select(self, timeout: float) -> None:
        events = self.poller.poll(timeout, MAX_EVENTS) if self.by_fd else _sleep(timeout)
        now = time.perf_counter_ns()
        self.rounds = rounds = self.rounds + 1
        by_fd = self.by_fd
        for fd, mask in events:
            conn = by_fd.get(fd)
            # closed by an earlier handler of this round, or made by one (with a closed one's fd: not its event)
            if conn is None or conn.closed is not None or conn.born == rounds:
                continue
            if mask & (_WRITE | _BROKEN) and conn.wants & _WRITE:
                conn.on_writable()
            if mask & (_READ | _BROKEN) and conn.closed is None:
                conn.on_readable(now)

    def close_all(self) -> None:
        for conn in list(self.conns):
            conn.on_close = ignore_close
            conn.close()

    def close(self) -> None:
        self.close_all()
        self.poller.close()


def client_tls() -> ssl.SSLContext:
    """TLS towards our own self-signed test certificate: encryption measured, identity not checked."""
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


def cut_lines(held: bytes, data: bytes) -> tuple[list[bytes], bytes]:
    """What was held back and what one read brought -> (the complete lines, without LF; the rest to hold)."""
    lines = (held + data if held else data).split(b"\n")
    return lines, lines.pop()


def _sleep(timeout: float) -> list[tuple[int, int]]:
    time.sleep(timeout)
    return []
