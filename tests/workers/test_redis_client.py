"""`workers.redis_client`: the URL parser (pure), and links to real servers:
an ACL user, a Unix socket, TLS with a CA made here, and Sentinel with a failover.

The servers are real processes on 127.0.0.1: the embedded valkey-server for
ACL, Unix and Sentinel; for TLS a `redis-server` built with TLS (Debian's
`redis-server` package: the embedded one has no TLS), and the `openssl`
command to make the CA. Valkey takes no port 0 on TCP, so the ports are
free ports the OS chose a moment before. Every process is stopped in teardown.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from stack.valkey import valkey_binary
from tests.redis_servers import (
    Servers,
    free_port,
    master_of,
    role,
    sentinel_conf,
    server_args,
    start_sentinel_set,
    wait_until,
)
from workers.redis_client import RedisAddress, RedisUrlError, open_redis, parse_redis_url

PASSWORD = "s3cret pass/word"  # a space and a slash: percent-encoded in URLs
QUOTED = "s3cret%20pass%2Fword"

# --- the parser ----------------------------------------------------------------------------


@pytest.mark.parametrize("url, address", [
    ("redis://127.0.0.1:6380/2", RedisAddress("tcp", (("127.0.0.1", 6380),), db=2)),
    ("redis://localhost", RedisAddress("tcp", (("localhost", 6379),))),
    ("redis://redis.example.org:6379/", RedisAddress("tcp", (("redis.example.org", 6379),))),
    (f"redis://chat:{QUOTED}@10.0.0.5:7000/1",
     RedisAddress("tcp", (("10.0.0.5", 7000),), db=1, username="chat", password=PASSWORD)),
    ("redis://:pw@h", RedisAddress("tcp", (("h", 6379),), password="pw")),
    ("rediss://chat:pw@[::1]:6390/0", RedisAddress("tls", (("::1", 6390),), username="chat", password="pw")),
    ("REDISS://[fe80::1]", RedisAddress("tls", (("fe80::1", 6379),))),
    ("unix:///run/redis/redis.sock", RedisAddress("unix", path="/run/redis/redis.sock")),
    ("unix://:pw@/tmp/v.sock?db=3", RedisAddress("unix", path="/tmp/v.sock", db=3, password="pw")),
    ("redis+sentinel://s1:26380,s2,[::1]:26400/mymaster",
     RedisAddress("sentinel", (("s1", 26380), ("s2", 26379), ("::1", 26400)), master="mymaster")),
    ("redis+sentinel://u:pw@s1/chat-main/4",
     RedisAddress("sentinel", (("s1", 26379),), master="chat-main", db=4, username="u", password="pw")),
])
def test_parse(url: str, address: RedisAddress) -> None:
    assert parse_redis_url(url) == address


@pytest.mark.parametrize("url, message", [
    ("127.0.0.1:6379", "no scheme://"),
    ("http://h", "unsupported Redis URL scheme 'http'"),
    ("redis://", "no host"),
    ("redis://:6379", "no host"),
    ("redis://h:0", "invalid port '0'"),
    ("redis://h:65536", "invalid port '65536'"),
    ("redis://h:port", "invalid port 'port'"),
    ("redis://h/x", "invalid database 'x'"),
    ("redis://h/-1", "invalid database '-1'"),
    ("redis://h/1/2", "invalid database '1/2'"),
    ("redis://h?ssl=true", "query parameters are not supported"),
    ("redis://h#x", "no #fragment"),
    ("redis://a,b", "only redis+sentinel:// takes several"),
    ("redis://user@h", "a user name without a password"),
    ("redis://user:@h", "an empty password"),
    ("redis://ho st", "invalid host"),
    ("redis://[::1", "invalid host"),
    ("redis://[::1]x", "invalid host"),
    ("redis://-h", "invalid host"),
    ("unix://relative.sock", "absolute socket path"),
    ("unix:///", "absolute socket path"),
    ("unix:///s.sock?timeout=1", "only ?db=N"),
    ("unix:///s.sock?db=1&db=2", "only ?db=N"),
    ("redis+sentinel://s1,s2", "names its master"),
    ("redis+sentinel://s1/", "names its master"),
    ("redis+sentinel://s1/bad name", "names its master"),
    ("redis+sentinel://s1,,s2/m", "no host"),
    ("redis+sentinel://" + ",".join(["s"] * 17) + "/m", "more than 16 Sentinels"),
    ("redis://" + "h" * 5000, "longer than 4096"),
])
def test_malformed_urls_get_clear_errors(url: str, message: str) -> None:
    with pytest.raises(RedisUrlError, match=re.escape(message)):
        parse_redis_url(url)


def test_errors_and_repr_never_show_the_password() -> None:
    for url in ("redis://u:topsecret@h:99999", "redis://u:topsecret@h/x", "redis+sentinel://u:topsecret@h/",
                "redis://u:topsecret@h?x=1", "redis://u:topsecret@bad host"):
        with pytest.raises(RedisUrlError) as caught:
            parse_redis_url(url)
        assert "topsecret" not in str(caught.value)
    assert "topsecret" not in repr(parse_redis_url("redis://u:topsecret@h"))


# --- real servers ---------------------------------------------------------------------------


@pytest.fixture
def servers(tmp_path: Path) -> Iterator[Servers]:
    s = Servers(tmp_path)
    yield s
    s.stop()


def test_acl_user_over_tcp_and_a_wrong_password(servers: Servers, tmp_path: Path) -> None:
    port = free_port()
    servers.start("valkey", [valkey_binary(), *server_args(tmp_path, "valkey", port)])
    admin = redis.Redis(host="127.0.0.1", port=port, decode_responses=True)
    wait_until(admin.ping, 15, "valkey answers")
    admin.acl_setuser("chat", enabled=True, passwords=[f"+{PASSWORD}"], keys=["~*"], channels=["&*"],
                      commands=["+@all"])
    admin.config_set("requirepass", "admin-only")  # the default user needs a password from now on

    client = open_redis(f"redis://chat:{QUOTED}@127.0.0.1:{port}/1", timeout=1.0)
    try:
        assert client.acl_whoami() == "chat"
        client.set("k", "v")
        assert client.get("k") == "v"  # decoded: str, not bytes
        assert client.connection_pool.connection_kwargs["db"] == 1
    finally:
        client.close()

    wrong = open_redis(f"redis://chat:wrong@127.0.0.1:{port}/0", timeout=1.0)
    with pytest.raises(redis.AuthenticationError, match="invalid username-password pair"):
        wrong.ping()
    wrong.close()
    anonymous = open_redis(f"redis://127.0.0.1:{port}/0", timeout=1.0)
    with pytest.raises(redis.AuthenticationError):
        anonymous.ping()
    anonymous.close()
    admin.close()


def test_unix_socket_with_password_and_db(servers: Servers, tmp_path: Path) -> None:
    sock = tmp_path / "v.sock"
    servers.start("valkey", [valkey_binary(), *server_args(tmp_path, "valkey", 0, "--unixsocket", str(sock),
                                                            "--requirepass", "pw")])
    client = open_redis(f"unix://:pw@{sock}?db=2", timeout=1.0)
    try:
        wait_until(client.ping, 15, "valkey answers on its socket")
        client.set("k", "v")
        assert client.connection_pool.connection_kwargs["db"] == 2
    finally:
        client.close()


def test_a_ca_file_without_tls_is_a_mistake() -> None:
    with pytest.raises(RedisUrlError, match="only for rediss://"):
        open_redis("redis://127.0.0.1:6379/0", timeout=1.0, ca_file="/etc/ssl/certs/ca-certificates.crt")


def test_unreachable_server_fails_within_the_timeout(tmp_path: Path) -> None:
    client = open_redis(f"unix://{tmp_path}/nobody.sock", timeout=0.5)
    started = time.monotonic()
    with pytest.raises(redis.ConnectionError):
        client.ping()
    assert time.monotonic() - started < 3  # no retries with backoff
    client.close()


# --- TLS --------------------------------------------------------------------------------------


def _tls_redis_server() -> str:
    """A redis-server built with TLS: the embedded Valkey is not (Debian's redis-server is)."""
    for name in ("redis-server", "valkey-server"):
        path = shutil.which(name)
        if path and "tls" in subprocess.run([path, "--help"], capture_output=True, text=True,
                                            check=False).stderr + _links_ssl(path):
            return path
    pytest.skip("no redis-server with TLS: apt-get install redis-server (Debian's is built with TLS)")


def _links_ssl(path: str) -> str:
    out = subprocess.run(["ldd", path], capture_output=True, text=True, check=False).stdout
    return "tls" if "libssl" in out else ""


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=60)


def make_ca_and_server_cert(tmp: Path, name: str) -> Path:
    """A CA (`name`-ca.crt) and a server certificate for 127.0.0.1 and localhost signed by it."""
    ec = ("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes")
    _openssl("req", "-x509", *ec, "-keyout", f"{name}-ca.key", "-out", f"{name}-ca.crt", "-days", "2",
             "-subj", f"/CN={name} test CA", cwd=tmp)
    _openssl("req", *ec, "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", "/CN=localhost", cwd=tmp)
    (tmp / f"{name}.ext").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    _openssl("x509", "-req", "-in", f"{name}.csr", "-CA", f"{name}-ca.crt", "-CAkey", f"{name}-ca.key",
             "-CAcreateserial", "-out", f"{name}.crt", "-days", "2", "-extfile", f"{name}.ext", cwd=tmp)
    return tmp / f"{name}-ca.crt"


def test_tls_with_a_ca_verifies_the_server(servers: Servers, tmp_path: Path) -> None:
    binary = _tls_redis_server()
    ca = make_ca_and_server_cert(tmp_path, "server")
    other_ca = make_ca_and_server_cert(tmp_path, "other")
    port = free_port()
    servers.start("redis-tls", [binary, *server_args(
        tmp_path, "redis", 0, "--tls-port", str(port), "--tls-cert-file", str(tmp_path / "server.crt"),
        "--tls-key-file", str(tmp_path / "server.key"), "--tls-ca-cert-file", str(ca),
        "--tls-auth-clients", "no", "--requirepass", "pw", "--bind", "127.0.0.1 127.0.0.2")])

    client = open_redis(f"rediss://:pw@127.0.0.1:{port}/0", timeout=2.0, ca_file=str(ca))
    try:
        wait_until(client.ping, 15, "redis answers over TLS")
        assert client.set("k", "v") and client.get("k") == "v"
    finally:
        client.close()
    for url, ca_file in ((f"rediss://:pw@127.0.0.1:{port}/0", str(other_ca)),  # signed by another CA
                         (f"rediss://:pw@127.0.0.1:{port}/0", None),  # the system's CAs do not know it
                         (f"rediss://:pw@127.0.0.2:{port}/0", str(ca))):  # not the name in the certificate
        refused = open_redis(url, timeout=2.0, ca_file=ca_file)
        with pytest.raises(redis.ConnectionError, match=r"certificate verify failed"):
            refused.ping()
        refused.close()
    plain = open_redis(f"redis://:pw@127.0.0.1:{port}/0", timeout=1.0)  # TLS port, plain client
    with pytest.raises(redis.ConnectionError):
        plain.ping()
    plain.close()


# --- Sentinel ---------------------------------------------------------------------------------

MASTER = "chatmaster"


def test_sentinel_follows_the_master_across_a_failover(servers: Servers, tmp_path: Path) -> None:
    found = start_sentinel_set(servers, tmp_path, MASTER, PASSWORD, replicas=1)
    master, replica, sentinels = found.master_port, found.replica_ports[0], found.sentinel_ports
    hosts = ",".join(f"127.0.0.1:{p}" for p in sentinels)
    client = open_redis(f"redis+sentinel://:{QUOTED}@{hosts}/{MASTER}/0", timeout=1.0)
    try:
        client.set("before", "1")
        wait_until(lambda: client.wait(1, 500) == 1, 15, "replicated before the failover (it is asynchronous)")
        assert client.connection_pool.get_master_address() == ("127.0.0.1", master)

        admin = redis.Redis(host="127.0.0.1", port=sentinels[0], password=PASSWORD, socket_timeout=2.0)
        wait_until(lambda: admin.sentinel_failover(MASTER), 30, "SENTINEL FAILOVER accepted")
        admin.close()
        for port in sentinels:
            wait_until(lambda port=port: master_of(port, MASTER, PASSWORD) == replica, 30,
                       f"sentinel {port} names the new master")
        wait_until(lambda: role(master, PASSWORD) == "slave", 30, "the old master was made a replica")

        failures = 0
        for _ in range(5):  # the connection to the old master fails once, then the client asks the Sentinels
            try:
                client.set("after", "2")
                break
            except redis.ConnectionError:
                failures += 1
        assert failures <= 1
        assert client.connection_pool.get_master_address() == ("127.0.0.1", replica)
        assert client.get("before") == "1" and client.get("after") == "2"
        new_master = redis.Redis(host="127.0.0.1", port=replica, password=PASSWORD, decode_responses=True)
        assert new_master.get("after") == "2"
        new_master.close()
    finally:
        client.close()


def test_sentinel_with_a_wrong_password_is_refused(servers: Servers, tmp_path: Path) -> None:
    master, sentinel = free_port(), free_port()
    servers.start("master", [valkey_binary(), *server_args(tmp_path, "master", master, "--requirepass", PASSWORD)])
    conf = sentinel_conf(tmp_path, 0, sentinel, MASTER, master, PASSWORD)
    servers.start("sentinel", [valkey_binary(), str(conf), "--sentinel"])
    wait_until(lambda: master_of(sentinel, MASTER, PASSWORD) == master, 15, "the sentinel runs")
    client = open_redis(f"redis+sentinel://:wrong@127.0.0.1:{sentinel}/{MASTER}", timeout=1.0)
    with pytest.raises(redis.ConnectionError, match="No master found"):  # every Sentinel refused us
        client.ping()
    client.close()
