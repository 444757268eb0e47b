"""Taking clients in: the listening socket, and the client's address.

`listen` makes the listening socket, with SO_REUSEPORT when several
gateway processes share one port (the kernel spreads connections over
them). `client_address` learns who a new connection is: the peer address,
or with the PROXY protocol (HAProxy `send-proxy` / `send-proxy-v2`), from a
trusted balancer only, the address in the header it sends first; bytes after
the header are the client's own.
"""

from __future__ import annotations

import socket

import trio

from protocol import proxy

PROXY_TIMEOUT = 5.0  # seconds a balancer has to send the PROXY header


class Refused(Exception):
    """A connection that does not start as it must: `cause` says why (a fixed text, to
    count by), `peer` who."""

    def __init__(self, cause: str, peer: str = "") -> None:
        super().__init__(f"{cause} from {peer}" if peer else cause)
        self.cause = cause
        self.peer = peer


class NoClient(Refused):
    """No client behind this connection (a balancer's health check, a peer gone before
    it was read): counted, not logged."""


async def listen(host: str, port: int, reuse_port: bool) -> trio.SocketListener:
    family = trio.socket.AF_INET6 if ":" in host else trio.socket.AF_INET
    sock = trio.socket.socket(family, trio.socket.SOCK_STREAM)
    sock.setsockopt(trio.socket.SOL_SOCKET, trio.socket.SO_REUSEADDR, 1)
    if reuse_port:
        sock.setsockopt(trio.socket.SOL_SOCKET, trio.socket.SO_REUSEPORT, 1)
    try:
        await sock.bind((host, port))
        sock.listen(4096)
    except BaseException:
        sock.close()
        raise
    return trio.SocketListener(sock)


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


def peer_of(sock: socket.socket) -> str:
    try:
        host, port = sock.getpeername()[:2]
    except OSError:
        return "?"
    return f"{host}:{port}"


async def client_address(sock: socket.socket, proxy_protocol: bool,
                         trusted: tuple[proxy.Network, ...] = ()) -> tuple[str, bytes]:
    """-> (the client's "host:port", bytes already read from it); raises Refused.

    With the PROXY protocol only a peer inside `trusted` (the balancers) may speak
    at all: any other is refused before a byte is read, so no host can claim an
    address that is not its own. A v2 LOCAL header is the balancer's health check:
    raises NoClient, and the connection is closed without a word.
    """
    peer = peer_of(sock)
    if not proxy_protocol:
        return peer, b""
    if peer == "?":  # reset before we got to it: HAProxy's checks often are
        raise NoClient("gone before it was read")
    if not proxy.is_trusted(peer.rpartition(":")[0], trusted):
        raise Refused("not a trusted proxy", peer)
    with trio.move_on_after(PROXY_TIMEOUT):
        header, rest = await _read_proxy_header(sock, peer)
        if header.local:
            raise NoClient("health check", peer)
        return header.source or peer, rest
    raise Refused(f"no PROXY header within {PROXY_TIMEOUT:.0f}s", peer)


async def _read_proxy_header(sock: socket.socket, peer: str) -> tuple[proxy.Header, bytes]:
    data = b""
    while True:
        await trio.lowlevel.wait_readable(sock)
        try:
            chunk = sock.recv(proxy.MAX_HEADER - len(data))
        except (BlockingIOError, InterruptedError):
            continue
        except OSError as exc:
            raise Refused(str(exc), peer) from None
        if not chunk:
            raise Refused("closed before a PROXY header", peer)
        data += chunk
        try:
            header = proxy.split_header(data)
        except proxy.ProxyError as exc:
            raise Refused(str(exc), peer) from None
        if header is not None:
            return header
