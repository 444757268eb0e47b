"""CURVE between real sockets on 127.0.0.1: each broker socket kind, each kind of peer.

A server socket is served as the broker serves it (`serve_curve` + the
authenticator); a peer's handshake result is read from the server's monitor
socket (a condition, not a sleep), then a short window shows that nothing
passes either way.
"""

from __future__ import annotations

import logging
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import zmq
from zmq.utils.monitor import recv_monitor_message

from stack.certs import KeyFileError
from stack.curve import (
    client_curve,
    connect_curve,
    endpoint_is_local,
    load_client_keys,
    load_server_keys,
    make_stack_keys,
    open_authenticator,
    plaintext_warning,
    serve_curve,
    server_curve,
)
from stack.zap import ZAP_ENDPOINT, Authenticator
from tests.stack.conftest import Keys

DEADLINE = 10.0  # seconds to wait for a handshake's outcome
QUIET = 0.3  # seconds in which nothing may pass after a refused handshake
HANDSHAKE_END = (zmq.EVENT_HANDSHAKE_SUCCEEDED | zmq.EVENT_HANDSHAKE_FAILED_AUTH
                 | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL)


@dataclass(frozen=True)
class Kind:
    """One broker socket: its domain, server type, the client type that talks to it, its rightful key."""

    domain: str
    server: int
    client: int
    owner: str
    intruders: tuple[str, ...]


KINDS = [
    Kind("frontend", zmq.ROUTER, zmq.DEALER, "gw", ("w", "pub")),
    Kind("backend", zmq.ROUTER, zmq.DEALER, "w", ("gw", "pub")),
    Kind("pub-out", zmq.XPUB, zmq.SUB, "gw", ("w", "pub")),
    Kind("pub-in", zmq.XSUB, zmq.PUB, "pub", ("gw", "w")),
]


class Served:
    """A context, its authenticator and one served socket with a monitor; closes all of it."""

    def __init__(self, keys: Keys, kind: Kind) -> None:
        self.kind = kind
        self.keys = keys
        self.ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
        self.sockets: list[zmq.Socket[bytes]] = []
        self.auth = open_authenticator(self.ctx, keys.clients)
        self.server = self.socket(kind.server)
        serve_curve(self.server, keys.secret("broker"), kind.domain, self.auth)
        if kind.server == zmq.XSUB:
            self.server.send(b"\x01")  # as the broker does: subscribe to everything
        self.port = self.server.bind_to_random_port("tcp://127.0.0.1")
        self.monitor = self.server.get_monitor_socket()
        self.sockets.append(self.monitor)

    def socket(self, kind: int) -> zmq.Socket[bytes]:
        sock = self.ctx.socket(kind)
        sock.setsockopt(zmq.LINGER, 0)
        self.sockets.append(sock)
        return sock

    def client(self, secret: str | None, server: str = "broker") -> zmq.Socket[bytes]:
        sock = self.socket(self.kind.client)
        if secret is not None:
            connect_curve(sock, self.keys.secret(secret), self.keys.public(server))
        if self.kind.client == zmq.SUB:
            sock.setsockopt(zmq.SUBSCRIBE, b"t")
        sock.connect(f"tcp://127.0.0.1:{self.port}")
        return sock

    def handshake(self) -> int:
        """The server's next handshake outcome (a monitor event)."""
        deadline = time.monotonic() + DEADLINE
        while time.monotonic() < deadline:
            if self.monitor.poll(100):
                event = recv_monitor_message(self.monitor)["event"]
                if event & HANDSHAKE_END:
                    return event
        raise AssertionError("no handshake outcome within the deadline")

    def close(self) -> None:
        self.server.disable_monitor()
        for sock in self.sockets:
            sock.close()
        self.auth.close()
        self.ctx.term()


@pytest.fixture(params=KINDS, ids=[k.domain for k in KINDS])
def served(request: pytest.FixtureRequest, keys: Keys) -> Iterator[Served]:
    s = Served(keys, request.param)
    try:
        yield s
    finally:
        s.close()


def recv(sock: zmq.Socket[bytes], timeout: float) -> list[bytes] | None:
    return sock.recv_multipart() if sock.poll(int(timeout * 1000)) else None


def exchange(s: Served, client: zmq.Socket[bytes], timeout: float) -> tuple[list[bytes] | None, list[bytes] | None]:
    """One message each way, as the kind allows: -> (what the server got, what the client got)."""
    server, kind = s.server, s.kind.server
    if kind == zmq.ROUTER:
        try:
            client.send(b"ping", zmq.NOBLOCK)  # a DEALER with no peer would wait for one forever
        except zmq.Again:
            return None, None  # refused: no connection to send on
        up = recv(server, timeout)
        if up is None:
            return None, None
        server.send_multipart([up[0], b"pong"])
        return up, recv(client, timeout)
    if kind == zmq.XPUB:  # the SUB's subscription goes up, a publication comes down
        up = recv(server, timeout)
        server.send_multipart([b"t", b"news"])
        return up, recv(client, timeout)
    # XSUB: a PUB sends only once the XSUB's subscription came down, so a publication that
    # arrives went both ways. The PUB drops what it sends before that: send until one arrives.
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        client.send_multipart([b"t", b"news"])
        up = recv(server, 0.05)
        if up is not None:
            return up, [b"subscribed"]
    return None, None


def test_the_right_key_passes_both_ways(served: Served) -> None:
    client = served.client(served.kind.owner)
    assert served.handshake() == zmq.EVENT_HANDSHAKE_SUCCEEDED
    up, down = exchange(served, client, DEADLINE)
    expected: tuple[list[bytes], list[bytes]] = {
        int(zmq.ROUTER): ([b"ping"], [b"pong"]),
        int(zmq.XPUB): ([b"\x01t"], [b"t", b"news"]),
        int(zmq.XSUB): ([b"t", b"news"], [b"subscribed"]),
    }[served.kind.server]
    assert up is not None and up[-1:] == expected[0][-1:] and down == expected[1]
    role = {"gw": "gateway", "w": "worker", "pub": "publisher"}[served.kind.owner]
    assert served.auth.counts() == {f"admitted {role}": 1}


def assert_nothing_passes(s: Served, client: zmq.Socket[bytes]) -> None:
    up, down = exchange(s, client, QUIET)
    assert up is None and down is None


def test_a_peer_without_a_key_gets_no_connection(served: Served) -> None:
    client = served.client(None)
    assert served.handshake() == zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL
    assert_nothing_passes(served, client)


def test_an_unknown_key_gets_no_connection(served: Served) -> None:
    client = served.client("stranger")
    assert served.handshake() == zmq.EVENT_HANDSHAKE_FAILED_AUTH
    assert_nothing_passes(served, client)
    assert served.auth.counts().get("refused: unknown key", 0) >= 1


def test_a_key_of_the_wrong_role_gets_no_connection(served: Served) -> None:
    for intruder in served.kind.intruders:
        client = served.client(intruder)
        assert served.handshake() == zmq.EVENT_HANDSHAKE_FAILED_AUTH, intruder
        assert_nothing_passes(served, client)
        client.close()
    refused = {k for k in served.auth.counts() if k.startswith("refused: a ")}
    assert len(refused) == len(served.kind.intruders)


def test_a_client_that_expects_another_broker_gets_no_connection(served: Served) -> None:
    client = served.client(served.kind.owner, server="other-broker")
    assert served.handshake() != zmq.EVENT_HANDSHAKE_SUCCEEDED
    assert_nothing_passes(served, client)


def test_the_broker_learns_the_client_name_and_role(keys: Keys) -> None:
    s = Served(keys, KINDS[0])
    try:
        client = s.client("gw")
        client.send(b"hello")
        assert s.server.poll(int(DEADLINE * 1000))
        frames = s.server.recv_multipart(copy=False)
        assert frames[-1].get("User-Id") == "gw"
        assert frames[-1].get("Role") == "gateway"
    finally:
        s.close()


def test_without_its_authenticator_a_served_socket_admits_nobody(keys: Keys) -> None:
    s = Served(keys, KINDS[0])
    try:
        s.auth.close()
        client = s.client("gw")
        assert s.handshake() != zmq.EVENT_HANDSHAKE_SUCCEEDED
        assert_nothing_passes(s, client)
    finally:
        s.close()


def test_refusals_are_logged_once_per_peer_and_interval(keys: Keys, caplog: pytest.LogCaptureFixture) -> None:
    s = Served(keys, KINDS[1])  # backend
    try:
        with caplog.at_level(logging.WARNING, logger="chat.curve"):
            for _ in range(5):  # one peer trying again and again
                s.client("gw")
                assert s.handshake() == zmq.EVENT_HANDSHAKE_FAILED_AUTH
        lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("refused")]
        assert len(lines) == 1 and "a gateway key may not use backend" in lines[0] and "127.0.0.1" in lines[0]
        assert s.auth.counts()["refused: a gateway key may not use backend"] >= 5
    finally:
        s.close()


def test_garbage_on_the_port_hurts_nobody(served: Served) -> None:
    for junk in (b"\xff" * 10, b"\xff\x00\x00\x00\x00\x00\x00\x00\x01\x7f" + b"\x03\x00NULL" + b"\x00" * 64,
                 b"GET / HTTP/1.0\r\n\r\n" * 100, bytes(range(256)) * 64):
        with socket.create_connection(("127.0.0.1", served.port), timeout=DEADLINE) as raw:
            raw.sendall(junk)
    client = served.client(served.kind.owner)
    up, down = exchange(served, client, DEADLINE)
    assert up is not None and down is not None


def test_a_malformed_zap_request_gets_an_answer_and_the_handler_lives_on(keys: Keys) -> None:
    s = Served(keys, KINDS[0])
    try:
        req = s.socket(zmq.REQ)
        req.connect(ZAP_ENDPOINT)
        req.send_multipart([b"garbage"])
        assert req.poll(int(DEADLINE * 1000))
        assert req.recv_multipart()[2] == b"500"
        req.send_multipart([b"1.0", b"7", b"frontend", b"1.2.3.4", b"", b"CURVE", b"short"])
        assert req.poll(int(DEADLINE * 1000))
        assert req.recv_multipart()[:3] == [b"1.0", b"7", b"400"]
        assert s.auth.running
        client = s.client("gw")
        assert s.handshake() == zmq.EVENT_HANDSHAKE_SUCCEEDED
        assert exchange(s, client, DEADLINE)[1] == [b"pong"]
    finally:
        s.close()


def test_serve_curve_refuses_what_would_admit_anyone(keys: Keys) -> None:
    ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    sock = ctx.socket(zmq.ROUTER)
    auth = Authenticator(ctx, {})
    other_ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    try:
        with pytest.raises(RuntimeError, match="running authenticator"):
            serve_curve(sock, keys.secret("broker"), "frontend", auth)  # not started
        with Authenticator(other_ctx, {}) as foreign, pytest.raises(RuntimeError, match="running authenticator"):
            serve_curve(sock, keys.secret("broker"), "frontend", foreign)
        with auth:
            with pytest.raises(ValueError, match="unknown ZAP domain"):
                serve_curve(sock, keys.secret("broker"), "elsewhere", auth)
            with pytest.raises(KeyFileError, match="is a gateway key; the broker needs a broker key"):
                serve_curve(sock, keys.secret("gw"), "frontend", auth)
            with pytest.raises(KeyFileError, match="public key file"):
                serve_curve(sock, keys.public("broker"), "frontend", auth)
        assert not auth.running
    finally:
        sock.close()
        ctx.term()
        other_ctx.term()


def test_one_authenticator_per_context(keys: Keys) -> None:
    ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    try:
        with Authenticator(ctx, {}), pytest.raises(RuntimeError, match="did not start"):
            Authenticator(ctx, {}).start()
    finally:
        ctx.term()


def test_client_keys_are_checked_at_start_up(keys: Keys) -> None:
    assert load_client_keys(keys.secret("gw"), keys.public("broker"), role="gateway").own.name == "gw"
    with pytest.raises(KeyFileError, match="is a worker key; this part needs a gateway key"):
        load_client_keys(keys.secret("w"), keys.public("broker"), role="gateway")
    with pytest.raises(KeyFileError, match="holds a secret key"):
        load_client_keys(keys.secret("gw"), keys.secret("broker"))
    with pytest.raises(KeyFileError, match="is a worker key, not the broker's"):
        load_client_keys(keys.secret("gw"), keys.public("w"))
    with pytest.raises(KeyFileError, match="public key file"):
        load_client_keys(keys.public("gw"), keys.public("broker"))


@pytest.mark.parametrize(("endpoint", "local"), [
    ("ipc:///tmp/chat/frontend", True),
    ("inproc://x", True),
    ("tcp://127.0.0.1:5555", True),
    ("tcp://127.1.2.3:5555", True),
    ("tcp://localhost:5555", True),
    ("tcp://[::1]:5555", True),
    ("tcp://[::ffff:127.0.0.1]:5555", True),
    ("tcp://127.0.0.1:*", True),
    ("tcp://10.0.0.10:5555", False),
    ("tcp://0.0.0.0:5555", False),
    ("tcp://*:5555", False),
    ("tcp://eth0:5555", False),
    ("tcp://broker.example:5555", False),
    ("tcp://127.0.0.1:0;10.0.0.10:5555", False),  # the source is local, the target is not
    ("tcp://[::]:5555", False),
    ("ws://127.0.0.1:5555", False),
    ("pgm://eth0;239.192.1.1:5555", False),
    ("127.0.0.1:5555", False),
    ("", False),
])
def test_endpoint_is_local(endpoint: str, local: bool) -> None:
    assert endpoint_is_local(endpoint) is local


def test_plaintext_warning_names_the_endpoints_that_leave_the_host() -> None:
    assert plaintext_warning("chat-gateway", ["tcp://127.0.0.1:5555", "ipc:///x"]) is None
    line = plaintext_warning("chat-gateway", ["tcp://127.0.0.1:5555", "tcp://10.0.0.10:5558"])
    assert line is not None and "\n" not in line
    assert line.startswith("chat-gateway: no CURVE keys") and "tcp://10.0.0.10:5558" in line
    assert "127.0.0.1" not in line


def test_command_line_keys_both_or_neither(keys: Keys, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    gw, broker = str(keys.secret("gw")), str(keys.public("broker"))
    loaded = client_curve("chat-gateway", "gateway", gw, broker, ["tcp://10.0.0.1:5555"])
    assert loaded is not None and loaded.own.role == "gateway"
    with pytest.raises(KeyFileError, match="both --curve-secret and --curve-server"):
        client_curve("chat-gateway", "gateway", gw, None, [])
    with pytest.raises(KeyFileError, match="both --curve-secret and --curve-clients"):
        server_curve("chat-broker", None, str(keys.clients), [])
    server = server_curve("chat-broker", str(keys.secret("broker")), str(keys.clients), [])
    assert server is not None and {k.role for k in server.clients.values()} == {"gateway", "worker", "publisher"}
    caplog.clear()  # what loading the keys above said (at INFO, if an earlier test let INFO through)
    with caplog.at_level(logging.WARNING, logger="chat.curve"):
        assert client_curve("chat-worker", "worker", None, None, ["ipc:///x", "tcp://127.0.0.1:1"]) is None
        assert not caplog.records
        assert server_curve("chat-broker", None, None, ["tcp://0.0.0.0:5555", "tcp://127.0.0.1:5556"]) is None
    assert [r.getMessage().split(":")[0] for r in caplog.records] == ["chat-broker"]


def test_stack_keys_work_together(tmp_path: Path) -> None:
    made = make_stack_keys(tmp_path)
    server = load_server_keys(made.broker_secret, made.clients)
    assert sorted(k.role for k in server.clients.values()) == ["gateway", "worker"]
    assert load_client_keys(made.gateway_secret, made.broker_public, role="gateway").server_public == server.own.public
    assert load_client_keys(made.worker_secret, made.broker_public, role="worker").own.role == "worker"
    ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    router = ctx.socket(zmq.ROUTER)
    dealer = ctx.socket(zmq.DEALER)
    try:
        with server.open_authenticator(ctx) as auth:
            server.apply(router, "backend", auth)
            port = router.bind_to_random_port("tcp://127.0.0.1")
            load_client_keys(made.worker_secret, made.broker_public).apply(dealer)
            dealer.connect(f"tcp://127.0.0.1:{port}")
            dealer.send(b"ready")
            assert recv(router, DEADLINE) is not None
    finally:
        router.close(linger=0)
        dealer.close(linger=0)
        ctx.term()
