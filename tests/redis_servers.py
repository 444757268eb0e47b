"""Real Valkey servers and Sentinels for tests, stopped by PID in teardown.

Valkey takes no port 0 on TCP, so the ports are free ports the OS chose a
moment before. Everything listens on 127.0.0.1 and is started through
`Servers`, whose `stop` the test's fixture calls also when the test fails.
"""

from __future__ import annotations

import socket
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

import redis

from stack.children import Child, stop
from stack.valkey import valkey_binary


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_until(check: Callable[[], bool], timeout: float, what: str) -> None:
    """Poll `check` (a Redis not answering yet counts as false) until it holds or `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            if check():
                return
        except (redis.ConnectionError, redis.TimeoutError, redis.ResponseError):
            pass  # still starting
        assert time.monotonic() < deadline, f"not within {timeout}s: {what}"
        time.sleep(0.05)  # polling a condition, bounded by the deadline


class Servers:
    """Processes started by a test, stopped by PID at its end (also when it fails)."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.children: list[Child] = []

    def start(self, name: str, argv: list[str]) -> Child:
        log = open(self.tmp / f"{name}.log", "wb")  # noqa: SIM115 - closed with the process
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True, cwd=self.tmp)
        log.close()
        child = Child(name, proc)
        self.children.append(child)
        return child

    def stop(self) -> None:
        for child in reversed(self.children):
            stop(child)


def server_args(tmp: Path, name: str, port: int, *extra: str) -> list[str]:
    data = tmp / name
    data.mkdir()
    return ["--port", str(port), "--bind", "127.0.0.1", "--dir", str(data), "--save", "", "--appendonly", "no",
            "--daemonize", "no", *extra]


def sentinel_conf(tmp: Path, index: int, port: int, master: str, master_port: int, password: str,
                  down_after_ms: int = 1000, failover_timeout_ms: int = 10_000) -> Path:
    conf = tmp / f"sentinel-{index}.conf"
    conf.write_text("\n".join([
        f"port {port}", "bind 127.0.0.1", f"dir {tmp}", f'requirepass "{password}"',
        f"sentinel monitor {master} 127.0.0.1 {master_port} 2",
        f"sentinel down-after-milliseconds {master} {down_after_ms}",
        f"sentinel failover-timeout {master} {failover_timeout_ms}",
        f'sentinel auth-pass {master} "{password}"',
        f'sentinel sentinel-pass "{password}"',
        "",
    ]))
    return conf


def _client(port: int, password: str) -> redis.Redis:
    return redis.Redis(host="127.0.0.1", port=port, password=password, decode_responses=True, socket_timeout=1.0)


def master_of(sentinel_port: int, master: str, password: str) -> int:
    """The port of the master that a Sentinel names."""
    with _client(sentinel_port, password) as s:
        return int(s.sentinel_get_master_addr_by_name(master)[1])


def role(port: int, password: str) -> str:
    with _client(port, password) as r:
        return str(r.info("replication")["role"])


@dataclass
class SentinelSet:
    """A master, its replicas and the Sentinels watching them, all on 127.0.0.1."""

    master: str
    password: str
    master_port: int
    replica_ports: list[int]
    sentinel_ports: list[int]

    def url(self, db: int = 0) -> str:
        hosts = ",".join(f"127.0.0.1:{p}" for p in self.sentinel_ports)
        return f"redis+sentinel://:{quote(self.password, safe='')}@{hosts}/{self.master}/{db}"

    def client(self, port: int) -> redis.Redis:
        return _client(port, self.password)

    def current_master(self) -> int:
        return master_of(self.sentinel_ports[0], self.master, self.password)

    def kill_master(self, servers: Servers) -> int:
        """kill -9 whichever server the Sentinels name master now -> its port."""
        port = self.current_master()
        name = "master" if port == self.master_port else f"replica-{self.replica_ports.index(port)}"
        child = next(c for c in servers.children if c.name == name)
        child.proc.kill()
        child.proc.wait(5)
        return port

    def wait_new_master(self, old: int, timeout: float = 30) -> int:
        """Wait until the Sentinels name a master other than `old` -> its port."""
        wait_until(lambda: self.current_master() != old, timeout, "the Sentinels to name a new master")
        return self.current_master()

    def knows_all(self, sentinel_port: int) -> bool:
        with _client(sentinel_port, self.password) as s:
            return (len(s.sentinel_slaves(self.master)) == len(self.replica_ports)
                    and len(s.sentinel_sentinels(self.master)) == len(self.sentinel_ports) - 1)


def start_sentinel_set(servers: Servers, tmp: Path, master: str, password: str, replicas: int = 2,
                       sentinels: int = 3, down_after_ms: int = 1000,
                       failover_timeout_ms: int = 10_000) -> SentinelSet:
    """Start a master, `replicas` replicas and `sentinels` Sentinels; return once every
    Sentinel knows every replica and the other Sentinels."""
    auth = ("--requirepass", password, "--masterauth", password)
    master_port = free_port()
    servers.start("master", [valkey_binary(), *server_args(tmp, "master", master_port, *auth)])
    replica_ports = [free_port() for _ in range(replicas)]
    for i, port in enumerate(replica_ports):
        servers.start(f"replica-{i}", [valkey_binary(), *server_args(
            tmp, f"replica-{i}", port, *auth, "--replicaof", f"127.0.0.1 {master_port}")])
    for port in replica_ports:
        wait_until(lambda port=port: role(port, password) == "slave", 15, f"the replica on {port} runs")
    sentinel_ports = [free_port() for _ in range(sentinels)]
    for i, port in enumerate(sentinel_ports):
        conf = sentinel_conf(tmp, i, port, master, master_port, password, down_after_ms, failover_timeout_ms)
        servers.start(f"sentinel-{i}", [valkey_binary(), str(conf), "--sentinel"])
    found = SentinelSet(master, password, master_port, replica_ports, sentinel_ports)
    for port in sentinel_ports:
        wait_until(lambda port=port: found.knows_all(port), 30, f"sentinel {port} knows the replicas and the others")
    return found
