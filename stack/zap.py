"""The broker's ZAP handler: which client key may use which socket.

ZeroMQ asks the handler bound on inproc://zeromq.zap.01 of a context about
every CURVE handshake on a socket that has a ZAP domain (RFC 27: request
[version, id, domain, address, identity, mechanism, credentials...], reply
[version, id, status, text, user id, metadata]). Each broker socket has its
own domain, and a domain admits only some roles:

    domain     socket   admits
    frontend   ROUTER   gateway
    pub-out    XPUB     gateway
    backend    ROUTER   worker
    pub-in     XSUB     publisher

`decide` is the pure decision. `Authenticator` is the shell: one per process
(started after any fork, in the process's one context), a thread that
creates, uses and closes its REP socket and stops when `close()` writes to
its inproc PAIR. An admitted client's key name and role reach the broker as
the User-Id and "Role" properties of its messages. A refused client retries
every 100 ms or so: `RefusalLog` keeps the log to one line per peer and
interval, and the counts by cause are in `counts()`.
"""

from __future__ import annotations

import logging
import struct
import threading
import time
from collections import Counter, OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass

import zmq
from zmq.utils import z85

from stack.certs import PublicKey

log = logging.getLogger("chat.curve")

ZAP_ENDPOINT = "inproc://zeromq.zap.01"
DOMAIN_ROLES: Mapping[str, frozenset[str]] = {
    "frontend": frozenset({"gateway"}),
    "pub-out": frozenset({"gateway"}),
    "backend": frozenset({"worker"}),
    "pub-in": frozenset({"publisher"}),
}
LOG_INTERVAL = 60.0  # seconds between two log lines about one refused peer
MAX_REMEMBERED_PEERS = 1024  # refused peers whose last log line we remember
START_TIMEOUT = 5.0

Socket = zmq.Socket[bytes]
Context = zmq.Context[Socket]

@dataclass(frozen=True, slots=True)
class Verdict:
    status: bytes  # b"200" admitted, b"400" refused, b"500" a request we cannot read
    text: str
    user_id: str = ""
    role: str = ""


def decide(domain: str, mechanism: bytes, credentials: list[bytes], clients: Mapping[bytes, PublicKey]) -> Verdict:
    """The ZAP decision: may this client key use this domain?"""
    roles = DOMAIN_ROLES.get(domain)  # the texts are a fixed set: they name the refusal counters
    if roles is None:
        return Verdict(b"400", "unknown domain")
    if mechanism != b"CURVE":
        return Verdict(b"400", "not CURVE")
    if len(credentials) != 1 or len(credentials[0]) != 32:
        return Verdict(b"400", "malformed CURVE credentials")
    key = clients.get(z85.encode(credentials[0]))
    if key is None:
        return Verdict(b"400", "unknown key")
    if key.role not in roles:
        return Verdict(b"400", f"a {key.role} key may not use {domain}")
    return Verdict(b"200", "OK", key.name, key.role)


def zmtp_properties(props: Mapping[str, str]) -> bytes:
    """ZAP reply metadata: name length (1 byte), name, value length (4 bytes), value."""
    out = b""
    for name, value in props.items():
        raw = value.encode()
        out += bytes([len(name)]) + name.encode() + struct.pack(">I", len(raw)) + raw
    return out


class RefusalLog:
    """Decides which refusals to log: one line per peer and interval, with the count left unsaid."""

    def __init__(self, interval: float = LOG_INTERVAL, capacity: int = MAX_REMEMBERED_PEERS) -> None:
        self.interval = interval
        self.capacity = capacity
        self._peers: OrderedDict[tuple[str, ...], tuple[float, int]] = OrderedDict()

    def note(self, peer: tuple[str, ...], now: float) -> int | None:
        """-> None to stay quiet, else how many refusals of this peer went unsaid since its last line."""
        said_at, unsaid = self._peers.get(peer, (-self.interval, 0))
        if now - said_at < self.interval:
            self._peers[peer] = (said_at, unsaid + 1)
            return None
        self._peers[peer] = (now, 0)
        self._peers.move_to_end(peer)
        while len(self._peers) > self.capacity:
            self._peers.popitem(last=False)
        return unsaid


class Authenticator:
    """The process's ZAP handler thread. Use as a context manager, or start() ... close()."""

    def __init__(self, ctx: Context, clients: Mapping[bytes, PublicKey], log_interval: float = LOG_INTERVAL) -> None:
        self.context = ctx
        self.clients = dict(clients)
        self._refusals = RefusalLog(log_interval)
        self._counts: Counter[str] = Counter()
        self._lock = threading.Lock()
        self._control: Socket | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._failed: BaseException | None = None

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def counts(self) -> dict[str, int]:
        """Handshakes by outcome: "admitted <role>", "refused: <reason>"."""
        with self._lock:
            return dict(self._counts)

    def start(self) -> Authenticator:
        if self._thread is not None:
            raise RuntimeError("the authenticator was started already")
        control_endpoint = f"inproc://chat-zap-control-{id(self):x}"
        self._control = self.context.socket(zmq.PAIR)
        self._control.setsockopt(zmq.LINGER, 0)
        self._control.bind(control_endpoint)
        self._thread = threading.Thread(target=self._run, args=(control_endpoint,), name="chat-zap", daemon=True)
        self._thread.start()
        if not self._ready.wait(START_TIMEOUT) or self._failed is not None:
            self.close()
            raise RuntimeError(f"the ZAP handler did not start: {self._failed or 'timeout'}")
        return self

    def close(self, timeout: float = START_TIMEOUT) -> None:
        """Stop the thread and close the sockets. Idempotent."""
        if self._control is not None:
            if self.running:
                self._control.send(b"stop")
            if self._thread is not None:
                self._thread.join(timeout)
            self._control.close()
            self._control = None

    def __enter__(self) -> Authenticator:
        return self.start() if self._thread is None else self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- the thread ------------------------------------------------------------

    def _run(self, control_endpoint: str) -> None:
        zap = self.context.socket(zmq.REP)
        stop = self.context.socket(zmq.PAIR)
        try:
            zap.setsockopt(zmq.LINGER, 0)
            stop.setsockopt(zmq.LINGER, 0)
            zap.bind(ZAP_ENDPOINT)
            stop.connect(control_endpoint)
        except zmq.ZMQError as exc:
            self._failed = exc
            zap.close()
            stop.close()
            self._ready.set()
            return
        self._ready.set()
        try:
            self._serve(zap, stop)
        finally:
            zap.close()
            stop.close()

    def _serve(self, zap: Socket, stop: Socket) -> None:
        poller = zmq.Poller()
        poller.register(zap, zmq.POLLIN)
        poller.register(stop, zmq.POLLIN)
        while True:
            ready = dict(poller.poll())
            if stop in ready:
                return
            if zap in ready:
                request = zap.recv_multipart()
                zap.send_multipart(self._guarded_answer(request))

    def _guarded_answer(self, request: list[bytes]) -> list[bytes]:
        """Every request gets one reply (a REP socket must answer), whatever goes wrong."""
        try:
            if len(request) < 6 or request[0] != b"1.0":
                self._count("refused: malformed ZAP request")
                return _error_reply(request, b"malformed request")
            return self._answer(request)
        except Exception:
            log.exception("ZAP request %r: refused on an internal error", request[:6])
            self._count("refused: internal error")
            return _error_reply(request, b"internal error")

    def _answer(self, request: list[bytes]) -> list[bytes]:
        _, request_id, domain_raw, address_raw, _, mechanism, *credentials = request
        domain, address = domain_raw.decode(errors="replace"), address_raw.decode(errors="replace")
        verdict = decide(domain, mechanism, credentials, self.clients)
        if verdict.status == b"200":
            self._count(f"admitted {verdict.role}")
            metadata = zmtp_properties({"Role": verdict.role})
        else:
            key = _key_text(mechanism, credentials)
            self._refused(domain, address, key, verdict.text)
            metadata = b""
        return [b"1.0", request_id, verdict.status, verdict.text.encode(), verdict.user_id.encode(), metadata]

    def _refused(self, domain: str, address: str, key: str, reason: str) -> None:
        self._count(f"refused: {reason}")
        unsaid = self._refusals.note((domain, address, key), time.monotonic())
        if unsaid is not None:
            more = f" ({unsaid} more refusals since the last line)" if unsaid else ""
            log.warning("refused %s on %s: %s, key %s%s", address, domain, reason, key, more)

    def _count(self, outcome: str) -> None:
        with self._lock:
            self._counts[outcome] += 1


def _error_reply(request: list[bytes], text: bytes) -> list[bytes]:
    return [b"1.0", request[1] if len(request) > 1 else b"", b"500", text, b"", b""]


def _key_text(mechanism: bytes, credentials: list[bytes]) -> str:
    """The client's public key as the key files show it (Z85), for the log."""
    if mechanism == b"CURVE" and len(credentials) == 1 and len(credentials[0]) == 32:
        return z85.encode(credentials[0]).decode()
    return "-"
