"""A real HAProxy, run from deploy/haproxy.cfg as it is (PROXY v2, health checks with
the v2 LOCAL header, leastconn), in front of two real gateways started with
--proxy-protocol --trusted-proxies 127.0.0.0/8; and the gateway's PROXY door tried
directly: untrusted peers, v2 headers, v2 LOCAL, start-up errors.

HAProxy takes the addresses from the environment: its listening socket is made here
(port chosen by the OS) and handed over as `fd@N`; a second config file adds a stats
socket, through which the test reads the servers' states and forces health checks.
"""

from __future__ import annotations

import csv
import ipaddress
import os
import shutil
import socket
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
import redis

from protocol.proxy import V2_SIGNATURE
from stack.children import python_module, start
from tests.e2e.chatclient import ChatClient
from tests.e2e.cluster import GATEWAY_ARGS, Cluster, start_cluster
from tests.e2e.load import wait_until

DEPLOY = Path(__file__).resolve().parents[2] / "deploy" / "haproxy.cfg"
TRUSTED = ("--proxy-protocol", "--trusted-proxies", "127.0.0.0/8")
PREFIX = "chat:"
INSTALL_TIMEOUT = 600


# --- HAProxy -----------------------------------------------------------------------------


def _apt_get(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    return subprocess.run(["apt-get", *args], env=env, capture_output=True, text=True,
                          stdin=subprocess.DEVNULL, timeout=INSTALL_TIMEOUT, check=False)


def _find_haproxy() -> str | None:
    return shutil.which("haproxy") or next(
        (p for p in ("/usr/sbin/haproxy", "/usr/local/sbin/haproxy") if os.access(p, os.X_OK)), None)


@pytest.fixture(scope="session")
def haproxy_binary() -> str:
    """The haproxy program; installed with apt-get (Debian package `haproxy`) when
    missing and we are root, else the tests are skipped with the reason."""
    found = _find_haproxy()
    if found:
        return found
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        pytest.skip("haproxy is not installed; installing it needs root and apt-get (apt-get install haproxy)")
    result = _apt_get("install", "-y", "-q", "haproxy")
    if result.returncode != 0:  # the package lists may be missing or stale
        _apt_get("update", "-q")
        result = _apt_get("install", "-y", "-q", "haproxy")
    found = _find_haproxy()
    if not found:
        pytest.skip(f"could not install haproxy with apt-get: {(result.stderr or result.stdout)[-500:]}")
    return found


@dataclass
class HAProxy:
    proc: subprocess.Popen[bytes]
    port: int
    stats: Path
    log: Path

    def command(self, text: str) -> str:
        """One command on the stats socket -> its answer."""
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(5)
            sock.connect(str(self.stats))
            sock.sendall(text.encode() + b"\n")
            chunks = []
            while chunk := sock.recv(65536):
                chunks.append(chunk)
        return b"".join(chunks).decode()

    def _rows(self) -> list[dict[str, str]]:
        """The `gateways` backend's server rows of `show stat`."""
        lines = self.command("show stat").lstrip("# ").splitlines()
        return [row for row in csv.DictReader(lines)
                if row["pxname"] == "gateways" and row["svname"] not in ("FRONTEND", "BACKEND")]

    def servers(self) -> dict[str, str]:
        """Server name -> status (UP, DOWN, ...) in the `gateways` backend."""
        return {row["svname"]: row["status"].split()[0] for row in self._rows()}

    def sessions(self) -> dict[str, int]:
        """Server name -> the connections HAProxy counts on it now (what leastconn compares)."""
        return {row["svname"]: int(row["scur"] or 0) for row in self._rows()}

    def connect_failures(self) -> dict[str, dict[str, str]]:
        """Server name -> its failed connects, retries, redispatches and last check (what a
        failure message needs to tell a refused connect from leastconn's choice)."""
        return {row["svname"]: {k: row[k] for k in ("econ", "wretr", "wredis", "last_chk")}
                for row in self._rows()}

    def answers(self) -> bool:
        assert self.proc.poll() is None, f"haproxy exited: {self.log.read_text()[-2000:]}"
        try:
            return bool(self.servers())
        except OSError:
            return False


@contextmanager
def running_haproxy(binary: str, tmp_path: Path, gateway_ports: list[int]) -> Iterator[HAProxy]:
    """deploy/haproxy.cfg with these gateways, on a port the OS chose; stopped on exit."""
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))
    listener.listen(128)
    stats, log = tmp_path / "haproxy.sock", tmp_path / "haproxy.log"
    extra = tmp_path / "haproxy-test.cfg"
    extra.write_text(f"global\n    stats socket {stats} mode 600 level admin\n")
    env = {**os.environ, "CHAT_HAPROXY_BIND": f"fd@{listener.fileno()}"}
    env.update({f"CHAT_GATEWAY_{i}": f"127.0.0.1:{port}" for i, port in enumerate(gateway_ports, 1)})
    with open(log, "wb") as out:
        proc = subprocess.Popen([binary, "-db", "-f", str(DEPLOY), "-f", str(extra)], env=env,
                                pass_fds=(listener.fileno(),), stdin=subprocess.DEVNULL, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)
    try:
        haproxy = HAProxy(proc, listener.getsockname()[1], stats, log)
        wait_until(haproxy.answers, 15, "HAProxy's stats socket")
        yield haproxy
    finally:
        proc.terminate()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
        listener.close()


# --- the chat ----------------------------------------------------------------------------


@dataclass
class Gateways:
    cluster: Cluster
    ports: list[int]
    instances: list[str]
    logs: list[Path]

    def log(self, i: int) -> str:
        return self.logs[i].read_text(errors="replace")


@contextmanager
def chat_behind(tmp_path: Path, *gateway_args: tuple[str, ...]) -> Iterator[Gateways]:
    """Valkey, a broker, one worker, and one gateway per argument tuple (logs kept)."""
    c = start_cluster(tmp_path / "valkey", workers=1, gateways=0)
    try:
        gateways = Gateways(c, [], [], [])
        for i, args in enumerate(gateway_args, 1):
            name, log = f"gw{i}", tmp_path / f"gw{i}.log"
            with open(log, "wb") as err:
                child = start(name, python_module(
                    "gateway.cli", "--listen", "127.0.0.1:0", "--frontend", c.endpoints["frontend"],
                    "--pub-out", c.endpoints["pub-out"], "--id", name, *GATEWAY_ARGS, *args),
                    "chat-gateway", stderr=err.fileno())
            c.children[name] = child
            gateways.ports.append(int(child.ready_line.rsplit(":", 1)[1]))
            gateways.instances.append(child.ready_line.split()[1])
            gateways.logs.append(log)
        yield gateways
    finally:
        c.stop()


def connection_of(redis_url: str, nick: str) -> dict[str, str]:
    """The connection's hash in Valkey (nick, room, gw, addr)."""
    with redis.Redis.from_url(redis_url, decode_responses=True) as r:
        cid = r.get(f"{PREFIX}nick:{nick}")
        assert cid, f"no connection for {nick}"
        return r.hgetall(f"{PREFIX}conn:{cid}")  # type: ignore[return-value]


def guests_so_far(redis_url: str) -> int:
    with redis.Redis.from_url(redis_url, decode_responses=True) as r:
        return int(r.get(f"{PREFIX}guests") or 0)


def sources(n: int) -> list[str]:
    """Distinct loopback addresses for the clients, none of them HAProxy's 127.0.0.1."""
    return [str(ipaddress.ip_address("127.0.0.10") + i) for i in range(n)]


def test_clients_through_haproxy_chat_with_their_real_addresses(haproxy_binary: str, tmp_path: Path) -> None:
    with chat_behind(tmp_path, TRUSTED, TRUSTED) as gws, \
            running_haproxy(haproxy_binary, tmp_path, gws.ports) as haproxy:
        wait_until(lambda: set(haproxy.servers().values()) == {"UP"}, 15, "both gateways UP")
        clients = [ChatClient(haproxy.port, source=source) for source in sources(4)]
        try:
            where = {}
            for client in clients:
                conn = connection_of(gws.cluster.redis_url, client.guest_nick)
                host, port = client.sock.getsockname()[:2]
                assert conn["addr"] == f"{host}:{port}"  # the client's own, not HAProxy's
                where[client.guest_nick] = conn["gw"]
            assert set(where.values()) == set(gws.instances)  # leastconn used both
            a = clients[0]
            b = next(c for c in clients if where[c.guest_nick] != where[a.guest_nick])
            a.join("#lobby")
            b.join("#lobby")
            a.send("hello across gateways")
            b.expect(lambda line: "hello across gateways" in line and a.guest_nick in line)
        finally:
            for client in clients:
                client.close()


def test_health_checks_register_no_guest(haproxy_binary: str, tmp_path: Path) -> None:
    with chat_behind(tmp_path, TRUSTED, TRUSTED) as gws, \
            running_haproxy(haproxy_binary, tmp_path, gws.ports) as haproxy:
        guests = guests_so_far(gws.cluster.redis_url)
        for name in ("gw1", "gw2"):  # back UP only after `rise 2` checks have passed
            haproxy.command(f"set server gateways/{name} health down")
        assert set(haproxy.servers().values()) == {"DOWN"}
        wait_until(lambda: set(haproxy.servers().values()) == {"UP"}, 20, "health checks to pass")
        assert guests_so_far(gws.cluster.redis_url) == guests
        for i in range(2):
            assert "refused" not in gws.log(i)  # LOCAL is a health check, not a refusal


def test_a_stopped_gateway_is_taken_out_of_rotation(haproxy_binary: str, tmp_path: Path) -> None:
    with chat_behind(tmp_path, TRUSTED, TRUSTED) as gws, \
            running_haproxy(haproxy_binary, tmp_path, gws.ports) as haproxy:
        wait_until(lambda: set(haproxy.servers().values()) == {"UP"}, 15, "both gateways UP")
        gws.cluster.children["gw1"].proc.terminate()
        assert gws.cluster.children["gw1"].proc.wait(10) == 0
        wait_until(lambda: haproxy.servers()["gw1"] != "UP", 15, "gw1 out of rotation")
        clients = [ChatClient(haproxy.port, source=source) for source in sources(6)]
        try:
            for client in clients:
                assert connection_of(gws.cluster.redis_url, client.guest_nick)["gw"] == gws.instances[1]
            clients[0].sync()
        finally:
            for client in clients:
                client.close()


# --- the door itself, without HAProxy ------------------------------------------------------


def v2_header(command: int, body: bytes = b"", family: int = 0x11) -> bytes:
    return V2_SIGNATURE + bytes([0x20 | command, family]) + len(body).to_bytes(2, "big") + body


def v2_tcp4(source: str, sport: int) -> bytes:
    body = ipaddress.ip_address(source).packed + bytes([127, 0, 0, 1]) + sport.to_bytes(2, "big") + b"\x1b\x58"
    return v2_header(1, body)


def test_the_gateway_believes_only_trusted_proxies(tmp_path: Path) -> None:
    untrusted = ("--proxy-protocol", "--trusted-proxies", "192.0.2.0/24, 198.51.100.7")
    with chat_behind(tmp_path, TRUSTED, untrusted) as gws:
        url = gws.cluster.redis_url
        via_v2 = ChatClient(gws.ports[0], greet=False)
        via_v2.send_raw(v2_tcp4("203.0.113.7", 4444) + b"/ping\n")
        via_v2.greeting = via_v2.expect(lambda line: line.startswith("* welcome"))
        via_v2.expect("* pong")
        assert connection_of(url, via_v2.guest_nick)["addr"] == "203.0.113.7:4444"
        guests = guests_so_far(url)

        check = ChatClient(gws.ports[0], greet=False)  # HAProxy's health check, by hand
        check.send_raw(v2_header(0, family=0x00))
        assert check.wait_closed(5) == []
        for bad in (V2_SIGNATURE + b"\x21\x11\xff\xff" + b"x" * 2000,  # far too long: not waited for
                    V2_SIGNATURE + b"\x21\x12\x00\x0c" + b"\0" * 12,  # UDP
                    b"\r\n\r\n\x00\r\nQUIT\r\n/nick evil\n"):
            liar = ChatClient(gws.ports[0], greet=False)
            liar.send_raw(bad)
            assert liar.wait_closed(5) == []

        forger = ChatClient(gws.ports[1], greet=False)  # a loopback peer is not trusted there
        assert forger.wait_closed(2) == []  # refused before it sent anything: no 5 s wait
        forger = ChatClient(gws.ports[1], greet=False)
        forger.send_raw(v2_tcp4("198.51.100.7", 1) + b"/nick sneaky\n")
        assert forger.wait_closed(5) == []
        wait_until(lambda: gws.log(1).count("refused: not a trusted proxy from 127.0.0.1:") == 2, 5,
                   "the refusals in the log")
        via_v2.sync()
        assert guests_so_far(url) == guests
        assert gws.log(0).count("refused: ") == 3  # the three liars, and nothing else
        via_v2.close()


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (("--proxy-protocol",), "--proxy-protocol needs --trusted-proxies"),
        (("--proxy-protocol", "--trusted-proxies", "10.0.0.0/33"), "not an address or CIDR network"),
        (("--trusted-proxies", "10.0.0.0/8"), "--trusted-proxies is only for --proxy-protocol"),
    ],
)
def test_the_proxy_options_are_checked_at_start(args: tuple[str, ...], says: str) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CHAT_")}
    run = subprocess.run([sys.executable, "-m", "gateway.cli", "--listen", "127.0.0.1:0", *args],
                         capture_output=True, text=True, timeout=30, env=env, check=False)
    assert run.returncode == 2
    assert says in run.stderr
