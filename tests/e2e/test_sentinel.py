"""Workers on a Redis reached across machines: an ACL user with a password, and
Sentinel with a failover (kill -9 of the master under load).

Real processes on 127.0.0.1: Valkey servers and Sentinels (tests.redis_servers),
a broker, `chat-worker -n 2`, two gateways. The failover test checks what the
README promises: lines in the failover are answered `! service temporarily
unavailable`, the chat goes on by itself, and in the new master every live
connection holds exactly the nick it was last told it has, and no nick is held
twice.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import psutil
import pytest
import redis

from stack.children import Child, python_module, start, stop
from stack.valkey import valkey_binary
from tests.e2e.chaos import nick_violations
from tests.e2e.chatclient import ChatClient
from tests.e2e.cluster import FAST, FAST_GATEWAY, Cluster, start_cluster
from tests.e2e.load import wait_until
from tests.redis_servers import SentinelSet, Servers, free_port, server_args, start_sentinel_set
from tests.redis_servers import wait_until as wait_for_redis

PASSWORD = "chat pass/word"  # percent-encoded in URLs
QUOTED = "chat%20pass%2Fword"
MASTER = "chatmaster"
UNAVAILABLE = "! service temporarily unavailable"
WORKER_ARGS = (*FAST, "--redis-timeout", "0.25")


@pytest.fixture
def servers(tmp_path: Path) -> Iterator[Servers]:
    s = Servers(tmp_path)
    yield s
    s.stop()


def _acl_valkey(servers: Servers, tmp: Path) -> int:
    """A Valkey on TCP whose only usable user is `chat`, with PASSWORD."""
    port = free_port()
    servers.start("valkey", [valkey_binary(), *server_args(tmp, "valkey", port)])
    admin = redis.Redis(host="127.0.0.1", port=port, decode_responses=True, socket_timeout=2.0)
    wait_for_redis(admin.ping, 15, "valkey answers")
    admin.acl_setuser("chat", enabled=True, passwords=[f"+{PASSWORD}"], keys=["~*"], channels=["&*"],
                      commands=["+@all"])
    admin.config_set("requirepass", "admin-only")  # no anonymous use from now on
    admin.close()
    return port


def test_workers_log_in_as_an_acl_user(servers: Servers, tmp_path: Path) -> None:
    port = _acl_valkey(servers, tmp_path)
    cluster = start_cluster(tmp_path, redis_url=f"redis://chat:{QUOTED}@127.0.0.1:{port}/0")
    try:
        with ChatClient(cluster.ports[0]) as a, ChatClient(cluster.ports[1]) as b:
            a.send("/nick acl_a")
            a.expect("* you are now acl_a")
            a.join("#acl")
            b.join("#acl")
            a.send("hello through an ACL user")
            b.expect("#acl <acl_a> hello through an ACL user")
            with redis.Redis(host="127.0.0.1", port=port, username="chat", password=PASSWORD,
                             decode_responses=True) as r:
                assert r.get("chat:nick:acl_a")  # the state is in that Valkey
    finally:
        cluster.stop()


def test_a_wrong_password_is_unavailable_and_logged_not_a_crash_loop(servers: Servers, tmp_path: Path) -> None:
    """A deploy with a wrong password: the connected client's lines are refused, the workers
    say why and live on; the right password again and the client chats again."""
    port = _acl_valkey(servers, tmp_path)
    right, wrong = f"redis://chat:{QUOTED}@127.0.0.1:{port}/0", f"redis://chat:wrong@127.0.0.1:{port}/0"
    cluster = start_cluster(tmp_path, workers=1, gateways=1, redis_url=right, gateway_args=FAST_GATEWAY,
                            broker_args=FAST, worker_args=WORKER_ARGS)
    log_path = tmp_path / "workers.log"
    try:
        with ChatClient(cluster.ports[0]) as client:
            client.join("#pw")
            stop(cluster.children.pop("workers"))
            cluster.children["workers"] = _workers_logging_to(log_path, cluster.endpoints["backend"], wrong)
            client.send("hello")
            client.expect(UNAVAILABLE, timeout=15)
            client.send("/nick again")
            client.expect(UNAVAILABLE, timeout=15)
            wait_until(lambda: "invalid username-password pair" in log_path.read_text(), 10, "the worker says why")
            pool = psutil.Process(cluster.children["workers"].pid)
            first = [p.pid for p in pool.children()]
            for _ in range(3):
                client.send("still there?")
                client.expect(UNAVAILABLE, timeout=15)
            assert [p.pid for p in pool.children()] == first  # the same worker process: no crash loop
            assert "Traceback" not in log_path.read_text()

            stop(cluster.children.pop("workers"))
            cluster.children["workers"] = _workers_logging_to(log_path, cluster.endpoints["backend"], right)
            client.send("/who")
            client.expect(lambda line: line.startswith("* #pw (1): "), timeout=15)
    finally:
        cluster.stop()


def _workers_logging_to(log_path: Path, backend: str, redis_url: str) -> Child:
    with open(log_path, "ab") as log:
        return start("workers", python_module("workers.cli", "-n", "1", "--backend", backend, "--redis-url",
                                              redis_url, *WORKER_ARGS), "chat-worker started", stderr=log.fileno())


# --- Sentinel ---------------------------------------------------------------------------------


def start_sentinel_cluster(servers: Servers, tmp: Path, workers: int = 2) -> tuple[SentinelSet, Cluster]:
    """1 master, 2 replicas, 3 Sentinels (down after 1s) and a fast cluster on them."""
    sentinels = start_sentinel_set(servers, tmp, MASTER, PASSWORD, down_after_ms=1000, failover_timeout_ms=3000)
    return sentinels, start_cluster(tmp, workers=workers, gateways=2, redis_url=sentinels.url(),
                                    gateway_args=FAST_GATEWAY, broker_args=FAST, worker_args=WORKER_ARGS)


@dataclass
class Renamer:
    """One client renaming itself again and again, each time waiting for the answer."""

    client: ChatClient
    base: str
    told: str = ""  # the nick it was last told it has
    served: int = 0
    refused: int = 0
    served_after: int = 0  # served after `after` was set
    after: threading.Event = field(default_factory=threading.Event)
    errors: list[str] = field(default_factory=list)

    def run(self, stop_at: float, enough: int) -> None:
        n = 0
        while time.monotonic() < stop_at and self.served_after < enough:
            nick = f"{self.base}{n}"
            n += 1
            self.client.send(f"/nick {nick}")
            try:
                line = self.client.expect(lambda line, nick=nick: line in (f"* you are now {nick}", UNAVAILABLE), 10)
            except AssertionError as exc:
                self.errors.append(str(exc))
                return
            if line == UNAVAILABLE:
                self.refused += 1
                continue
            self.told = nick
            self.served += 1
            self.served_after += self.after.is_set()


def test_kill_9_of_the_master_under_nick_changes(servers: Servers, tmp_path: Path) -> None:
    sentinels, cluster = start_sentinel_cluster(servers, tmp_path)
    try:
        renamers = [Renamer(ChatClient(cluster.ports[i % 2]), f"fo{i}_") for i in range(6)]
        for r in renamers:
            r.client.join("#fo")
        stop_at = time.monotonic() + 60
        threads = [threading.Thread(target=r.run, args=(stop_at, 10), daemon=True) for r in renamers]
        for t in threads:
            t.start()
        wait_until(lambda: all(r.served >= 5 for r in renamers), 20, "the renames to flow")
        new = sentinels.wait_new_master(sentinels.kill_master(servers))
        for r in renamers:
            r.after.set()
        for t in threads:
            t.join(65)
        for r in renamers:
            assert not r.errors, r.errors
            assert r.served_after >= 10, (r.base, r.served_after, r.refused)  # the chat went on by itself
        assert sum(r.refused for r in renamers) > 0  # the failover was seen, and told

        with sentinels.client(new) as db:
            told = {r.told for r in renamers}
            assert nick_violations(db, "chat:") == []
            held = {db.hget(key, "nick") for key in db.scan_iter("chat:conn:*") if db.type(key) == "hash"}
            assert held == told  # every live connection has the nick it was told, and only those exist
        for r in renamers:
            r.client.close()
    finally:
        cluster.stop()
