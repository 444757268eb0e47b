"""TLS for clients: the server context, and the handshake on a raw non-blocking socket.

The TLS listener hands its accepted sockets, after the PROXY header if any
(read to its last byte and not one more), to `handshake`: the socket is
wrapped by OpenSSL (`SSLContext.wrap_socket`, no handshake on connect) and
the handshake is driven here with `wait_readable`/`wait_writable` under a
deadline, so a client that never finishes it (slowloris) costs a timeout,
not a task forever. The wrapped socket then goes to the same `Client` as a
plain one: it reads and writes it like a socket, treating OpenSSL's "want
read/write" like a would-block, and drains what OpenSSL has decrypted
already (`pending`) before it waits on the descriptor again.

TLS 1.2 and later only, with the library's default ciphers; no renegotiation.
A half-close (close_notify, or a bare FIN) ends the input, as on plain TCP.
"""

from __future__ import annotations

import contextlib
import socket
import ssl
from dataclasses import dataclass

import trio

from gateway.accept import Refused
from gateway.metrics import Refusal


@dataclass(frozen=True, slots=True)
class TlsConfig:
    host: str
    port: int
    cert: str  # PEM: the certificate chain
    key: str  # PEM: its private key
    handshake_timeout: float = 10.0  # seconds a client has to finish the handshake


def server_context(cert: str, key: str) -> ssl.SSLContext:
    """A server context: TLS 1.2+, default ciphers, no renegotiation. Raises OSError or
    ssl.SSLError if the files do not load."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.options |= getattr(ssl, "OP_NO_RENEGOTIATION", 0)
    # a FIN without close_notify is the client's end of input, as on plain TCP: its replies
    # still go out (OpenSSL 3 would otherwise take it as a fatal error and refuse to write)
    context.options |= getattr(ssl, "OP_IGNORE_UNEXPECTED_EOF", 0)
    context.load_cert_chain(cert, key)
    return context


async def handshake(context: ssl.SSLContext, sock: socket.socket, timeout: float, peer: str) -> ssl.SSLSocket:
    """Wrap `sock` (it is detached: use what this returns) and do the server handshake,
    `timeout` seconds at most -> the TLS socket; raises Refused (and closes it)."""
    try:
        tls = context.wrap_socket(sock, server_side=True, do_handshake_on_connect=False)
    except OSError as exc:
        raise Refused(Refusal.PEER_GONE, f"TLS: {exc}", peer) from None
    try:
        with trio.move_on_after(timeout):
            await _drive(tls, peer)
            return tls
        raise Refused(Refusal.TLS_TIMEOUT, f"no TLS handshake within {timeout:g}s", peer)
    except BaseException:
        tls.close()
        raise


async def _drive(tls: ssl.SSLSocket, peer: str) -> None:
    while True:
        try:
            tls.do_handshake()
            return
        except ssl.SSLWantReadError:
            await trio.lowlevel.wait_readable(tls)
        except ssl.SSLWantWriteError:
            await trio.lowlevel.wait_writable(tls)
        except (ssl.SSLError, OSError) as exc:  # garbage, an old protocol, no shared cipher, a reset
            raise Refused(Refusal.TLS_HANDSHAKE, f"TLS handshake failed: {exc}", peer) from None


def say_goodbye(sock: socket.socket) -> None:
    """Best effort: a TLS close_notify before the descriptor closes (never waits)."""
    if isinstance(sock, ssl.SSLSocket):
        with contextlib.suppress(OSError, ValueError):
            sock.unwrap()
