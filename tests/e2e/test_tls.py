"""Clients over TLS: a real cluster, a gateway with a plain and a TLS listener.

The certificate is self-signed, made by the `openssl` CLI in the test. Python
`ssl` clients chat with plain clients across gateways; `openssl s_client`
chats like `nc`; a handshake never finished is cut after the timeout; garbage
instead of a ClientHello is closed; TLS 1.0/1.1 are refused; a TLS client that
stops reading is cut like a plain one; the PROXY header works before a
handshake; `chat-probe --tls` passes. Refusals show in the gateway's metrics.
"""

from __future__ import annotations

import os
import re
import select
import shutil
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import redis

from stack.children import Child, python_module, start
from tests.e2e.chatclient import DEFAULT_TIMEOUT, ChatClient
from tests.e2e.cluster import FAST, GATEWAY_ARGS, Cluster, start_cluster
from tests.e2e.load import wait_until
from tests.e2e.test_gateway_metrics import Scrape

pytestmark = pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl CLI")
HANDSHAKE_TIMEOUT = 1.0


@dataclass
class TlsGateway:
    cluster: Cluster
    cert: str
    plain: int  # the other gateway's plain port
    own_plain: int  # this gateway's plain port
    tls: int
    scrape: Scrape


def make_cert(directory: Path) -> tuple[str, str]:
    cert, key = directory / "cert.pem", directory / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
                    "-nodes", "-keyout", str(key), "-out", str(cert), "-days", "2", "-subj", "/CN=localhost",
                    "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"],
                   check=True, capture_output=True, timeout=30)
    return str(cert), str(key)


def start_tls_gateway(cluster: Cluster, name: str, cert: str, key: str, *args: str) -> tuple[Child, re.Match[str]]:
    eps = cluster.endpoints
    child = start(name, python_module(
        "gateway.cli", "--listen", "127.0.0.1:0", "--tls-listen", "127.0.0.1:0", "--tls-cert", cert,
        "--tls-key", key, "--tls-handshake-timeout", str(HANDSHAKE_TIMEOUT), "--frontend", eps["frontend"],
        "--pub-out", eps["pub-out"], "--id", name, "--metrics-listen", "127.0.0.1:0", *args),
        f"chat-gateway {name}.")
    cluster.children[name] = child
    match = re.fullmatch(r"chat-gateway \S+ listening on 127\.0\.0\.1:(\d+) tls=127\.0\.0\.1:(\d+) metrics=(\S+)",
                         child.ready_line)
    assert match, child.ready_line
    return child, match


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TlsGateway]:
    tmp = tmp_path_factory.mktemp("tls")
    cert, key = make_cert(tmp)
    cluster = start_cluster(tmp / "v", workers=2, gateways=1, broker_args=FAST, worker_args=FAST,
                            gateway_args=(*GATEWAY_ARGS, *FAST))
    try:
        _, match = start_tls_gateway(cluster, "gwt", cert, key, *GATEWAY_ARGS, *FAST,
                                     "--max-queue-bytes", "262144")
        yield TlsGateway(cluster, cert, cluster.ports[0], int(match[1]), int(match[2]), Scrape(match[3]))
    finally:
        cluster.stop()


class TlsClient(ChatClient):
    """ChatClient over TLS (Python's ssl), on a socket connected already."""

    def __init__(self, raw: socket.socket, ca: str, greet: bool = True) -> None:
        raw.settimeout(DEFAULT_TIMEOUT)
        raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.sock = ssl.create_default_context(cafile=ca).wrap_socket(raw, server_hostname="localhost")
        self._buf = b""
        self.seen: list[str] = []
        self.closed = False
        self.greeting = self.expect(lambda line: line.startswith("* ")) if greet else ""


def tls_client(port: int, ca: str) -> TlsClient:
    return TlsClient(socket.create_connection(("127.0.0.1", port), timeout=DEFAULT_TIMEOUT), ca)


def refused(gw: TlsGateway, reason: str) -> float:
    return gw.scrape.value(f'chat_gateway_connections_refused_total{{reason="{reason}"}}')


def test_tls_and_plain_clients_chat_across_gateways(gw: TlsGateway) -> None:
    with tls_client(gw.tls, gw.cert) as secure, ChatClient(gw.plain) as other, ChatClient(gw.own_plain) as local:
        for client, nick in ((secure, "sec"), (other, "oth"), (local, "loc")):
            client.send(f"/nick {nick}")
            client.expect(f"* you are now {nick}")
            client.join("#mix")
        secure.send("hello over tls")
        other.expect("#mix <sec> hello over tls")
        local.expect("#mix <sec> hello over tls")
        other.send("hello over tcp")
        secure.expect("#mix <oth> hello over tcp")
        big = "y" * 3000  # more than one TLS record's worth of replies in flight
        secure.send(*(f"{n} {big}" for n in range(40)))
        other.expect(lambda line: line.startswith("#mix <sec> 39 "))
        secure.sync()


def test_openssl_s_client_chats_like_nc(gw: TlsGateway) -> None:
    with ChatClient(gw.plain) as friend:
        friend.send("/nick friend")
        friend.join("#ssl")
        proc = subprocess.Popen(["openssl", "s_client", "-quiet", "-connect", f"127.0.0.1:{gw.tls}",
                                 "-CAfile", gw.cert, "-servername", "localhost", "-verify_return_error"],
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        try:
            assert proc.stdin is not None and proc.stdout is not None
            proc.stdin.write(b"/nick alice\n/join #ssl\nhello from openssl\n")
            proc.stdin.flush()
            friend.expect("#ssl <alice> hello from openssl")
            friend.send("hi alice")
            out = read_until(proc.stdout.fileno(), b"#ssl <friend> hi alice", 10)
            assert b"* you are now alice" in out
        finally:
            proc.kill()
            proc.wait(10)


def read_until(fd: int, text: bytes, timeout: float) -> bytes:
    out = b""
    deadline = time.monotonic() + timeout
    while text not in out:
        remaining = deadline - time.monotonic()
        assert remaining > 0, f"no {text!r} in {out!r}"
        if select.select([fd], [], [], remaining)[0]:
            chunk = os.read(fd, 65536)
            assert chunk, f"EOF before {text!r}; got {out!r}"
            out += chunk
    return out


def test_a_handshake_never_finished_is_cut_after_the_timeout(gw: TlsGateway) -> None:
    before = refused(gw, "tls_timeout")
    with socket.create_connection(("127.0.0.1", gw.tls), timeout=10) as idle:
        started = time.monotonic()
        assert idle.recv(100) == b""  # closed by the gateway
        took = time.monotonic() - started
    assert HANDSHAKE_TIMEOUT * 0.8 < took < HANDSHAKE_TIMEOUT + 8
    wait_until(lambda: refused(gw, "tls_timeout") == before + 1, 10, "the timeout counted")


def test_garbage_instead_of_a_client_hello_is_closed(gw: TlsGateway) -> None:
    before = refused(gw, "tls_handshake")
    with socket.create_connection(("127.0.0.1", gw.tls), timeout=10) as bad:
        bad.sendall(b"/nick mallory\nhello in clear\n" * 10)
        data = b""
        while chunk := _recv(bad):
            data += chunk
        assert b"mallory" not in data and b"* " not in data  # an alert at most, never a chat line
    wait_until(lambda: refused(gw, "tls_handshake") == before + 1, 10, "the failure counted")
    with tls_client(gw.tls, gw.cert) as fine:  # the listener still serves
        fine.sync()


def _recv(sock: socket.socket) -> bytes:
    try:
        return sock.recv(65536)
    except ConnectionResetError:
        return b""


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # naming the old versions is the point
@pytest.mark.parametrize("version", [ssl.TLSVersion.TLSv1, ssl.TLSVersion.TLSv1_1])
def test_old_tls_versions_are_refused(gw: TlsGateway, version: ssl.TLSVersion) -> None:
    before = refused(gw, "tls_handshake")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.load_verify_locations(gw.cert)
    context.set_ciphers("DEFAULT:@SECLEVEL=0")  # let this client offer the old versions at all
    context.minimum_version = context.maximum_version = version
    with socket.create_connection(("127.0.0.1", gw.tls), timeout=10) as raw, pytest.raises(ssl.SSLError):
        context.wrap_socket(raw, server_hostname="localhost")
    wait_until(lambda: refused(gw, "tls_handshake") == before + 1, 10, "the gateway refused it")


def test_a_tls_client_that_stops_reading_is_cut_like_on_plain(gw: TlsGateway) -> None:
    with ChatClient(gw.own_plain) as talker:
        talker.send("/nick talker")
        talker.join("#slow")
        raw = socket.socket()
        raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # before connect: a small window
        raw.connect(("127.0.0.1", gw.tls))
        with ssl.create_default_context(cafile=gw.cert).wrap_socket(raw, server_hostname="localhost") as sloth:
            sloth.sendall(b"/nick sloth\n/join #slow\n")
            talker.expect("* sloth joined #slow")
            payload = "x" * 2000
            for n in range(300):  # 600 kB for the sloth, who never reads
                talker.send(f"{n} {payload}")
                if n % 50 == 49:
                    talker.sync()
            talker.expect("* sloth quit (output queue full: you are not reading)", timeout=20)
    assert gw.scrape.value('chat_gateway_drops_total{cause="slow_consumer_cut"}') >= 1


def test_chat_probe_passes_over_tls(gw: TlsGateway) -> None:
    done = subprocess.run([sys.executable, "-m", "stack.probe", "--port", str(gw.tls), "--tls", "--tls-ca", gw.cert,
                           "--tls-server-name", "localhost"], capture_output=True, text=True, timeout=30, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.startswith("ok: round trip"), done.stdout
    done = subprocess.run([sys.executable, "-m", "stack.probe", "--port", str(gw.tls), "--tls",
                           "--timeout", "3"], capture_output=True, text=True, timeout=30, check=False)
    assert done.returncode == 1, done.stdout  # the self-signed certificate is not trusted without --tls-ca


def test_a_proxy_header_comes_before_the_handshake(gw: TlsGateway, tmp_path: Path) -> None:
    cert, key = make_cert(tmp_path)
    _, match = start_tls_gateway(gw.cluster, "gwp", cert, key, *GATEWAY_ARGS, *FAST,
                                 "--proxy-protocol", "--trusted-proxies", "127.0.0.1/32")
    raw = socket.create_connection(("127.0.0.1", int(match[2])), timeout=DEFAULT_TIMEOUT)
    # corked: the header and the ClientHello leave in one segment, so the gateway must
    # take the header's bytes and leave the handshake's to OpenSSL
    raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_CORK, 1)
    raw.sendall(b"PROXY TCP4 203.0.113.7 127.0.0.1 40000 7000\r\n")
    with TlsClient(raw, cert) as client:
        client.send("/nick proxied")
        client.expect("* you are now proxied")
        with redis.Redis.from_url(gw.cluster.redis_url, decode_responses=True) as r:
            cid = r.get("chat:nick:proxied")
            assert cid and str(r.hget(f"chat:conn:{cid}", "addr")).startswith("203.0.113.7")


def test_a_tls_client_that_half_closes_still_gets_its_replies(gw: TlsGateway) -> None:
    with tls_client(gw.tls, gw.cert) as client:
        client.send("/nick halfway", "/join #half", "last words")
        with socket.fromfd(client.sock.fileno(), socket.AF_INET, socket.SOCK_STREAM) as same:
            same.shutdown(socket.SHUT_WR)  # a FIN under TLS (no close_notify): the end of input
        lines = client.wait_closed()
        assert "* you are now halfway" in lines and any(line.startswith("* you joined #half") for line in lines)


def test_tls_only_and_bad_tls_options(gw: TlsGateway) -> None:
    eps = gw.cluster.endpoints
    child = start("gwonly", python_module(
        "gateway.cli", "--listen", "", "--tls-listen", "127.0.0.1:0", "--tls-cert", gw.cert,
        "--tls-key", gw.cert.replace("cert.pem", "key.pem"), "--frontend", eps["frontend"],
        "--pub-out", eps["pub-out"], "--id", "gwonly", *FAST), "chat-gateway gwonly.")
    gw.cluster.children["gwonly"] = child
    match = re.fullmatch(r"chat-gateway \S+ listening on tls=127\.0\.0\.1:(\d+)", child.ready_line)
    assert match, child.ready_line
    with tls_client(int(match[1]), gw.cert) as client:
        client.sync()
    for args, error in (((), "needs --tls-cert FILE and --tls-key FILE"),
                        (("--tls-cert", gw.cert, "--tls-key", gw.cert), "cannot load"),
                        (("--listen", "", "--tls-listen", ""), "no listener")):
        argv = ["--tls-listen", "127.0.0.1:0", *args] if args[:1] != ("--listen",) else list(args)
        done = subprocess.run(python_module("gateway.cli", *argv), capture_output=True, text=True, timeout=30,
                              check=False)
        assert done.returncode != 0 and error in done.stderr, done.stderr
