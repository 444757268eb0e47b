"""Taking clients in: the listening socket, and the client's address.

`listen` makes the listening socket, with SO_REUSEPORT when several
gateway processes share one port (the kernel spreads connections over
them). `client_address` learns who a new connection is: the peer address,
or with the PROXY protocol (HAProxy `send-proxy` / `send-proxy-v2`), from a
trusted balancer only, the address in the header it sends first; bytes after
the header are the client's own.

`Acceptor` accepts until told to pause; out of file descriptors, it says
so once in a while and backs off instead of spinning. `connection_limit`
raises the soft RLIMIT_NOFILE to the hard one and caps the clients at what
the descriptors allow.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import resource
import socket
import sys
from collections.abc import Callable

import trio

from gateway.metrics import Refusal
from protocol import proxy

log = logging.getLogger("chat.gateway")

PROXY_TIMEOUT = 5.0  # seconds a balancer has to send the PROXY header
FD_HEADROOM = 64  # descriptors kept for ZeroMQ, Trio, the listener, logs and refusing one more client
GONE = frozenset({errno.EBADF, errno.ENOTSOCK, errno.EINVAL})
BACKOFF_FIRST, BACKOFF_MAX = 0.01, 1.0  # seconds between accept tries while out of descriptors
ACCEPTS_PER_WAKE = 64  # connections taken from the backlog per wake-up before the others may run
LOG_EVERY = 10.0  # seconds between two log lines about running out of descriptors


class Refused(Exception):
    """A connection that does not start as it must: `cause` says why (a fixed enum, to
    count by), `detail` how, `peer` who."""

    def __init__(self, cause: Refusal, detail: str, peer: str = "") -> None:
        super().__init__(f"{detail} from {peer}" if peer else detail)
        self.cause = cause
        self.detail = detail
        self.peer = peer


class NoClient(Refused):
    """No client behind this connection (a balancer's health check, a peer gone before
    it was read): counted, not logged."""


class HealthCheck(NoClient):
    """A balancer's health check (a PROXY v2 LOCAL header)."""


def listen(host: str, port: int, reuse_port: bool) -> socket.socket:
    """A non-blocking listening socket on host:port."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((host, port))
        if INHERITED:
            client_options(sock)  # the accepted sockets inherit them: no system calls per client
        sock.listen(4096)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


def connection_limit(wanted: int) -> int:
    """Raise the soft RLIMIT_NOFILE to the hard one -> the clients we can hold (`wanted`, 0: any)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (ValueError, OSError) as exc:
            log.warning("could not raise the open-file limit from %d to %d: %s", soft, hard, exc)
    if soft == resource.RLIM_INFINITY:
        return wanted
    room = max(1, soft - FD_HEADROOM)
    if wanted and wanted <= room:
        return wanted
    log.warning("open-file limit %d: taking at most %d clients (asked for %s)", soft, room, wanted or "no limit")
    return room


class Acceptor:
    """Accept connections from a listening socket and hand each one on.

    `pause` stops accepting but keeps the port (clients wait in the listen
    backlog); `close` also closes the port, so connects are refused and a
    balancer's health check sees this gateway down; `open` binds it again
    (with `reopen`) and accepts once more.
    """

    def __init__(self, listener: socket.socket, on_accept: Callable[[socket.socket, str], None],
                 reopen: Callable[[], socket.socket] | None = None) -> None:
        self.listener: socket.socket | None = listener
        self.on_accept = on_accept
        self.failures = 0  # accepts that failed (out of descriptors, mostly)
        self._reopen = reopen
        self._open = trio.Event()
        self._open.set()
        self._logged = -LOG_EVERY
        self._reopen_logged = -LOG_EVERY

    @property
    def accepting(self) -> bool:
        return self._open.is_set() and self.listener is not None

    def pause(self) -> None:
        """Stop accepting: new clients wait in the listen backlog (or are refused by the kernel)."""
        if self._open.is_set():
            self._open = trio.Event()

    def resume(self) -> None:
        if self.listener is not None:
            self._open.set()

    def close(self) -> None:
        """Stop accepting and close the port: connects are refused until `open`."""
        self.pause()
        if self.listener is not None:
            trio.lowlevel.notify_closing(self.listener)
            self.listener.close()
            self.listener = None

    def open(self) -> bool:
        """Bind the port again if it was closed, and accept -> whether we accept now."""
        if self.listener is None and self._reopen is not None:
            try:
                self.listener = self._reopen()
            except OSError as exc:
                now = trio.current_time()
                if now - self._reopen_logged >= LOG_EVERY:
                    self._reopen_logged = now
                    log.error("cannot listen again: %s; trying again", exc)
                return False
        self.resume()
        return self.accepting

    async def run(self) -> None:
        backoff = BACKOFF_FIRST
        while True:
            if not self._open.is_set():  # (a set Event's wait is still a checkpoint: a turn of the loop per wake-up)
                await self._open.wait()
            listener = self.listener
            if listener is None:
                await trio.lowlevel.checkpoint()
                continue
            try:
                await trio.lowlevel.wait_readable(listener)
            except trio.ClosedResourceError:
                continue  # closed while we waited: wait to be opened again
            try:
                self._accept_some(listener)
            except OSError as exc:
                if exc.errno in GONE:
                    raise  # the listener itself is closed: nothing to wait for
                self._failed(exc)
                await trio.sleep(backoff)
                backoff = min(BACKOFF_MAX, backoff * 2)
                continue
            backoff = BACKOFF_FIRST

    def _accept_some(self, listener: socket.socket) -> None:
        """Accept what waits in the backlog, ACCEPTS_PER_WAKE at most, and hand each one on:
        one wake-up of this task (and one look at the listener by Trio) serves a burst of
        connects, not one each. Raises what `accept` raises but would-block."""
        kind = (int(listener.family), int(listener.type), listener.proto)
        for _ in range(ACCEPTS_PER_WAKE):
            if not self.accepting or listener is not self.listener:
                return  # paused or closed meanwhile (a client just let in filled the gateway, say)
            try:
                fd, address = listener._accept()  # type: ignore[attr-defined]  # socket.accept without its lookups
            except (BlockingIOError, InterruptedError, ConnectionAbortedError):
                return
            self.on_accept(_client_socket(kind, fd), _address(address))

    def _failed(self, exc: OSError) -> None:
        """Out of descriptors (EMFILE, ENFILE) or memory: one log line per LOG_EVERY, not per try."""
        self.failures += 1
        now = trio.current_time()
        if now - self._logged >= LOG_EVERY:
            self._logged = now
            log.error("cannot accept clients: %s (%d failed accepts so far); backing off", exc, self.failures)


NOTSENT_LOWAT = 1 << 14  # unsent bytes the kernel holds for a client: our queue limits count the rest


# Linux clones an accepted socket's options from its listener's: set once there, not per client
INHERITED = sys.platform.startswith("linux")


def _client_socket(kind: tuple[int, int, int], fd: int) -> socket.socket:
    """The accepted descriptor (of the listener's family, type and protocol: `kind`) as a
    non-blocking socket, with the client options (`client_options`)."""
    sock = socket.socket(*kind, fd)
    sock.setblocking(False)
    if not INHERITED:
        client_options(sock)
    return sock


def _address(address: tuple[str, int] | tuple[str, int, int, int]) -> str:
    """The peer's "host:port" as `accept` gave it (as `peer_of` says it, without asking the kernel again)."""
    return f"{address[0]}:{address[1]}"


def client_options(sock: socket.socket) -> None:
    """Small writes go out at once; the kernel buffers little unsent output (as Trio's
    SocketStream does), so a client that does not read fills our bounded queue; keepalive."""
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    if hasattr(socket, "TCP_NOTSENT_LOWAT"):
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NOTSENT_LOWAT, NOTSENT_LOWAT)
    keep_alive(sock)


KEEPALIVE = ((socket.SO_KEEPALIVE, 1),)
TCP_KEEPALIVE = (("TCP_KEEPIDLE", 60), ("TCP_KEEPINTVL", 10), ("TCP_KEEPCNT", 6))


def keep_alive(sock: socket.socket) -> None:
    """TCP keepalive: a peer that vanished without a FIN (a dropped NAT entry, a dead
    host) is found within about two minutes of silence instead of never."""
    for option, value in KEEPALIVE:
        sock.setsockopt(socket.SOL_SOCKET, option, value)
    for name, value in TCP_KEEPALIVE:
        if hasattr(socket, name):  # Linux names; other systems keep their defaults
            sock.setsockopt(socket.IPPROTO_TCP, getattr(socket, name), value)


def _take(sock: socket.socket, n: int, peer: str) -> None:
    """Consume `n` bytes already peeked."""
    try:
        got = len(sock.recv(n)) if n else 0
    except OSError as exc:
        raise Refused(Refusal.BAD_PROXY_HEADER, str(exc), peer) from None
    if got != n:
        raise Refused(Refusal.BAD_PROXY_HEADER, "the PROXY header went away", peer)


def peer_of(sock: socket.socket) -> str:
    try:
        host, port = sock.getpeername()[:2]
    except OSError:
        return "?"
    return f"{host}:{port}"


async def client_address(sock: socket.socket, proxy_protocol: bool,
                         trusted: tuple[proxy.Network, ...] = (), exact: bool = False) -> tuple[str, bytes]:
    """-> (the client's "host:port", bytes already read from it); raises Refused.

    With the PROXY protocol only a peer inside `trusted` (the balancers) may speak
    at all: any other is refused before a byte is read, so no host can claim an
    address that is not its own. A v2 LOCAL header is the balancer's health check:
    raises NoClient, and the connection is closed without a word. `exact`: take
    the header's bytes and not one more (a TLS handshake follows, read by OpenSSL).
    """
    peer = peer_of(sock)
    if not proxy_protocol:
        return peer, b""
    if peer == "?":  # reset before we got to it: HAProxy's checks often are
        raise NoClient(Refusal.PEER_GONE, "gone before it was read")
    if not proxy.is_trusted(peer.rpartition(":")[0], trusted):
        raise Refused(Refusal.UNTRUSTED_PROXY, "not a trusted proxy", peer)
    with trio.move_on_after(PROXY_TIMEOUT):
        header, rest = await _read_proxy_header(sock, peer, exact)
        if header.local:
            raise HealthCheck(Refusal.PEER_GONE, "health check", peer)
        return header.source or peer, rest
    raise Refused(Refusal.PROXY_TIMEOUT, f"no PROXY header within {PROXY_TIMEOUT:.0f}s", peer)


async def _read_proxy_header(sock: socket.socket, peer: str, exact: bool) -> tuple[proxy.Header, bytes]:
    """Read until a whole header. `exact`: peek first, then take only the header's
    bytes (while the header is incomplete, every byte peeked is the header's)."""
    data = b""
    flags = socket.MSG_PEEK if exact else 0
    while True:
        await trio.lowlevel.wait_readable(sock)
        try:
            chunk = sock.recv(proxy.MAX_HEADER - len(data), flags)
        except (BlockingIOError, InterruptedError):
            continue
        except OSError as exc:
            raise Refused(Refusal.BAD_PROXY_HEADER, str(exc), peer) from None
        if not chunk:
            raise Refused(Refusal.BAD_PROXY_HEADER, "closed before a PROXY header", peer)
        try:
            split = proxy.split_header(data + chunk)
        except proxy.ProxyError as exc:
            raise Refused(Refusal.BAD_PROXY_HEADER, str(exc), peer) from None
        taken = len(chunk) - len(split[1]) if split is not None else len(chunk)
        if exact:
            _take(sock, taken, peer)  # peeked, so in the kernel's buffer now: one recv takes it
        data += chunk[:taken]
        if split is not None:
            return split if not exact else (split[0], b"")
