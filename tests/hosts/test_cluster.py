"""The chat on several hosts, for real: network namespaces on one bridge (tests/hosts/netns.py)
as the machines of a deployment, each part run as its console script inside its host.

    lb       HAProxy from deploy/haproxy.cfg (send-proxy-v2, health checks)
    gw1 gw2  chat-gateway --proxy-protocol --trusted-proxies <lb>/32
    broker   chat-broker on its eth0 address, metrics on it too
    wk1 wk2  chat-worker -n 2 each
    redis    Valkey on its eth0 address, only an ACL user with a password
    client   where the test's clients connect from (sockets made there with `inside`)
    attacker a host on the same bridge with no key and no password

Every ZeroMQ link is CURVE (keys made with `chat-keys` into the run's directory, one key
pair per host); Redis is reached as `redis://chat:PASSWORD@...`. Heartbeats are fast (0.25 s,
liveness 4: a peer is lost after 1 s of silence) so each cut (2.5 s, longer than that
window) is short. The faults follow the README's failure table: a worker host cut off,
a gateway host cut off past the liveness window, the broker host cut off. After the run,
no process is left in any of the namespaces, and the namespaces are gone.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import redis
from prometheus_client.parser import text_string_to_metric_families

from protocol.messages import GATEWAY_GONE
from stack.children import Child
from tests.e2e.chatclient import ChatClient
from tests.e2e.load import wait_until
from tests.e2e.test_haproxy import DEPLOY, HAProxy, haproxy_binary  # noqa: F401 - a fixture
from tests.hosts import netns

pytestmark = pytest.mark.skipif(bool(netns.unavailable()), reason=netns.unavailable() or "")

HOSTS = ("lb", "gw1", "gw2", "broker", "wk1", "wk2", "redis", "client", "attacker")
BIN = Path(sys.executable).parent  # the venv's console scripts
FAST = ("--heartbeat", "0.25", "--liveness", "4")
WINDOW = 1.0  # heartbeat x liveness
CUT = 2.5  # how long a link stays down: past the liveness window
REDIS_PORT = 6379  # alone in the redis host's namespace: nothing else can hold it
REDIS_USER = "chat"
QUIET = 2.0  # seconds in which the attacker may get nothing
PLEASE_RECONNECT = f"! {GATEWAY_GONE}"


# --- the deployment ------------------------------------------------------------------------


@dataclass
class Deployment:
    net: netns.Hosts
    run: Path
    redis_url: str
    endpoints: dict[str, str]
    broker_metrics: str
    gateways: dict[str, Child] = field(default_factory=dict)  # host -> its chat-gateway
    gateway_metrics: dict[str, str] = field(default_factory=dict)
    haproxy: HAProxy | None = None
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def balancer(self) -> HAProxy:
        assert self.haproxy is not None
        return self.haproxy

    def connect(self) -> ChatClient:
        """A client on the client host, through HAProxy (a guest)."""
        with self.net.inside("client"):
            return ChatClient(self.balancer.port, host=self.net["lb"].address)

    def client(self, nick: str) -> ChatClient:
        client = self.connect()
        client.send(f"/nick {nick}")
        client.expect(f"* you are now {nick}")
        return client

    def scrape(self, address: str) -> dict[str, float]:
        """A part's metrics, read from the client host -> name -> value summed over labels."""
        with self.net.inside("client"), urllib.request.urlopen(f"http://{address}/metrics", timeout=5) as reply:
            text = reply.read().decode()
        values: dict[str, float] = {}
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                values[sample.name] = values.get(sample.name, 0.0) + sample.value
        return values

    def broker_counter(self, name: str) -> float:
        return self.scrape(self.broker_metrics).get(f"chat_broker_{name}", 0.0)

    def gateway_of(self, nick: str) -> str:
        """The instance name of the gateway that holds `nick`'s connection."""
        with self.net.inside("client"), redis.Redis.from_url(self.redis_url, decode_responses=True) as r:
            cid = r.get(f"chat:nick:{nick.lower()}")
            assert cid, f"no connection for {nick}"
            return str(r.hget(f"chat:conn:{cid}", "gw"))


def make_keys(run: Path) -> Path:
    """One key pair per host that talks ZeroMQ, made with chat-keys; the admitted public keys in clients/."""
    keys, clients = run / "keys", run / "keys" / "clients"
    clients.mkdir(parents=True)
    for name, role in (("broker", "broker"), ("gw1", "gateway"), ("gw2", "gateway"),
                       ("wk1", "worker"), ("wk2", "worker")):
        subprocess.run([str(BIN / "chat-keys"), "new", "--role", role, str(keys), name], check=True,
                       capture_output=True, timeout=30, stdin=subprocess.DEVNULL)
        if role != "broker":
            (clients / f"{name}.key").write_bytes((keys / f"{name}.key").read_bytes())
    assert oct((keys / "gw1.key_secret").stat().st_mode & 0o777) == "0o600"
    return keys


def start_valkey(net: netns.Hosts, run: Path, password: str) -> str:
    """Valkey on the redis host's address; the default user off, one ACL user -> its URL."""
    from stack.valkey import valkey_binary

    address, data = net["redis"].address, run / "valkey"
    data.mkdir()
    net.start("redis", [valkey_binary(), "--bind", address, "--port", str(REDIS_PORT), "--save", "",
                        "--appendonly", "no", "--dir", str(data), "--logfile", str(data / "valkey.log"),
                        "--user", "default", "off",
                        "--user", REDIS_USER, "on", f">{password}", "~*", "&*", "+@all"],
              stdout=subprocess.DEVNULL)
    url = f"redis://{REDIS_USER}:{password}@{address}:{REDIS_PORT}/0"

    def answers() -> bool:
        with net.inside("client"), redis.Redis.from_url(url, socket_timeout=1) as r:
            try:
                return bool(r.ping())
            except redis.ConnectionError:
                return False
    wait_until(answers, 15, "Valkey on the redis host")
    return url


def log_file(run: Path, name: str) -> int:
    return os.open(run / f"{name}.log", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)


def start_broker(net: netns.Hosts, run: Path, keys: Path) -> tuple[dict[str, str], str]:
    address = net["broker"].address
    err = log_file(run, "broker")
    try:
        child = net.start_ready("broker", [
            str(BIN / "chat-broker"), *(f"--{ep}=tcp://{address}:*" for ep in ("frontend", "backend", "pub-in", "pub-out")),
            "--curve-secret", str(keys / "broker.key_secret"), "--curve-clients", str(keys / "clients"),
            "--metrics-listen", f"{address}:0", *FAST], "chat-broker ready", stderr=err)
    finally:
        os.close(err)
    fields = dict(word.split("=", 1) for word in child.ready_line.split()[2:])
    return fields, fields["metrics"]


def start_workers(net: netns.Hosts, run: Path, keys: Path, host: str, backend: str, redis_url: str) -> None:
    err = log_file(run, host)
    try:
        net.start_ready(host, [
            str(BIN / "chat-worker"), "-n", "2", "--backend", backend, "--redis-url", redis_url,
            "--curve-secret", str(keys / f"{host}.key_secret"), "--curve-server", str(keys / "broker.key"),
            "--redis-timeout", "0.25", *FAST], "chat-worker started", stderr=err)
    finally:
        os.close(err)


def start_gateway(deployment: Deployment, keys: Path, host: str) -> None:
    net, address = deployment.net, deployment.net[host].address
    err = log_file(deployment.run, host)
    try:
        child = net.start_ready(host, [
            str(BIN / "chat-gateway"), "--id", host, "--listen", f"{address}:0",
            "--frontend", deployment.endpoints["frontend"], "--pub-out", deployment.endpoints["pub-out"],
            "--proxy-protocol", "--trusted-proxies", f"{net['lb'].address}/32",
            "--curve-secret", str(keys / f"{host}.key_secret"), "--curve-server", str(keys / "broker.key"),
            "--metrics-listen", f"{address}:0", "--rate-limit", "0", "--resend-after", "1", *FAST],
            f"chat-gateway {host}.", stderr=err)
    finally:
        os.close(err)
    deployment.gateways[host] = child
    deployment.gateway_metrics[host] = child.ready_line.rsplit("metrics=", 1)[1]


def start_haproxy(deployment: Deployment, binary: str) -> HAProxy:
    """deploy/haproxy.cfg as it is, listening on the lb host's address (a socket made there)."""
    net, run = deployment.net, deployment.run
    with net.inside("lb"):
        listener = socket.create_server((net["lb"].address, 0))
    stats, log = run / "haproxy.sock", run / "haproxy.log"
    extra = run / "haproxy-test.cfg"
    extra.write_text(f"global\n    stats socket {stats} mode 600 level admin\n")
    env = {**os.environ, "CHAT_HAPROXY_BIND": f"fd@{listener.fileno()}"}
    for i, child in enumerate(deployment.gateways.values(), 1):
        env[f"CHAT_GATEWAY_{i}"] = child.ready_line.split()[4]  # `listening on HOST:PORT`
    with open(log, "wb") as out:
        proc = net.start("lb", [binary, "-db", "-f", str(DEPLOY), "-f", str(extra)], env=env,
                         pass_fds=(listener.fileno(),), stdout=out, stderr=subprocess.STDOUT)
    haproxy = HAProxy(proc, listener.getsockname()[1], stats, log)
    listener.close()
    wait_until(haproxy.answers, 15, "HAProxy's stats socket")
    wait_until(lambda: set(haproxy.servers().values()) == {"UP"}, 20, "both gateways UP in HAProxy")
    return haproxy


@pytest.fixture(scope="module")
def deployment(haproxy_binary: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:  # noqa: F811
    run = tmp_path_factory.mktemp("hosts")
    links_before = subprocess.run(["ip", "-o", "link", "show"], capture_output=True, text=True, check=True).stdout
    with netns.hosts(*HOSTS) as net:
        inodes = net.inodes()
        names = [*(host.netns for host in net.hosts.values()), net.bridge]
        keys = make_keys(run)
        redis_url = start_valkey(net, run, secrets.token_urlsafe(24))
        endpoints, broker_metrics = start_broker(net, run, keys)
        chat = Deployment(net, run, redis_url, endpoints, broker_metrics)
        for host in ("wk1", "wk2"):
            start_workers(net, run, keys, host, endpoints["backend"], redis_url)
        for host in ("gw1", "gw2"):
            start_gateway(chat, keys, host)
        chat.haproxy = start_haproxy(chat, haproxy_binary)
        yield chat
    assert not set(names) & set(netns.namespaces()), "a namespace was left behind"
    assert netns.processes_in(inodes) == [], "a process was left in a host"
    after = subprocess.run(["ip", "-o", "link", "show"], capture_output=True, text=True, check=True).stdout
    assert after == links_before, "a link was left in the test's own namespace"


# --- what users see ------------------------------------------------------------------------


def saw(client: ChatClient, line: str, timeout: float = 10.0) -> None:
    """`line` was read already, or comes within `timeout`."""
    if line not in client.seen:
        client.expect(line, timeout)


def room_lines(client: ChatClient, sender: str, tag: str) -> list[str]:
    prefix = f"#hall <{sender}> {tag}-"
    return [line.removeprefix(prefix) for line in client.seen if line.startswith(prefix)]


def exactly_once_in_order(client: ChatClient, sender: str, tag: str, sent: int) -> None:
    client.sync()
    assert room_lines(client, sender, tag) == [str(i) for i in range(1, sent + 1)]


def talk_while(deployment: Deployment, sender: ChatClient, receiver: ChatClient, name: str,
               tag: str, seconds: float) -> tuple[int, float]:
    """`sender` sends numbered lines, each one once the last arrived, for `seconds` -> (sent, the longest wait)."""
    deadline, sent, longest = time.monotonic() + seconds, 0, 0.0
    while time.monotonic() < deadline:
        sent += 1
        began = time.monotonic()
        sender.send(f"{tag}-{sent}")
        receiver.expect(f"#hall <{name}> {tag}-{sent}", 15)
        longest = max(longest, time.monotonic() - began)
    return sent, longest


@pytest.fixture(scope="module")
def people(deployment: Deployment) -> Iterator[dict[str, ChatClient]]:
    """alice and carol on one gateway, bob and dave on the other, all in #hall."""
    clients = [deployment.connect() for _ in range(4)]
    named: dict[str, ChatClient] = {}
    try:
        by_gateway: dict[str, list[ChatClient]] = {}
        for client in clients:
            by_gateway.setdefault(deployment.gateway_of(client.guest_nick), []).append(client)
        assert sorted(map(len, by_gateway.values())) == [2, 2], f"leastconn should share: {by_gateway}"
        first, second = by_gateway.values()
        named.update(zip(("alice", "carol", "bob", "dave"), (*first, *second), strict=True))
        for nick, client in named.items():
            client.send(f"/nick {nick}")
            client.expect(f"* you are now {nick}")
            client.join("#hall")
        for client in named.values():
            client.sync()
        yield named  # the tests may add clients: closed here too
    finally:
        for client in {*clients, *named.values()}:
            client.close()


# --- the tests -----------------------------------------------------------------------------


ATTACKER = r"""
import json, sys, time, redis, zmq
from zmq.utils.monitor import recv_monitor_message
from protocol.codec import encode
from protocol.messages import Heartbeat, Ready
endpoints, redis_host, redis_port, quiet = json.loads(sys.argv[1]), sys.argv[2], int(sys.argv[3]), float(sys.argv[4])
ctx = zmq.Context()
kinds = {"pub-out": zmq.SUB, "frontend": zmq.DEALER, "backend": zmq.DEALER, "pub-in": zmq.PUB}
socks, monitors = {}, {}
for name, kind in kinds.items():
    s = ctx.socket(kind)
    s.linger = 0
    monitors[name] = s.get_monitor_socket()
    if kind == zmq.SUB:
        s.setsockopt(zmq.SUBSCRIBE, b"")
    s.connect(endpoints[name])
    socks[name] = s
for name, msg in (("frontend", Heartbeat("gw-evil")), ("backend", Ready(10000))):  # pose as a part
    try:
        socks[name].send(encode(msg), zmq.NOBLOCK)
    except zmq.Again:
        pass
report = {name: {"received": 0, "events": []} for name in kinds}
deadline = time.monotonic() + quiet
poller = zmq.Poller()
for name in kinds:
    poller.register(socks[name], zmq.POLLIN)
    poller.register(monitors[name], zmq.POLLIN)
while (left := deadline - time.monotonic()) > 0:
    for sock, _ in poller.poll(int(left * 1000) + 1):
        for name in kinds:
            if sock is socks[name]:
                sock.recv_multipart()
                report[name]["received"] += 1
            elif sock is monitors[name]:
                report[name]["events"].append(zmq.Event(recv_monitor_message(sock)["event"]).name)
def try_redis(**auth):
    try:
        redis.Redis(host=redis_host, port=redis_port, socket_timeout=2, **auth).get("chat:guests")
        return "served"
    except redis.RedisError as exc:
        return type(exc).__name__
report["redis"] = {"no password": try_redis(), "wrong password": try_redis(username="chat", password="guess"),
                   "default user": try_redis(password="guess")}
print(json.dumps(report))
"""


def test_an_attacker_on_the_bridge_gets_nothing(deployment: Deployment, people: dict[str, ChatClient]) -> None:
    net = deployment.net
    spy = net.start("attacker", [sys.executable, "-c", ATTACKER, json.dumps(deployment.endpoints),
                                 net["redis"].address, str(REDIS_PORT), str(QUIET)], stdout=subprocess.PIPE)
    alice, bob = people["alice"], people["bob"]
    sent, _ = talk_while(deployment, alice, bob, "alice", "spied", QUIET)  # traffic while it listens
    alice.send("/msg bob a secret")
    bob.expect("*alice* a secret")
    out, _ = spy.communicate(timeout=QUIET + 20)
    report = json.loads(out)
    for port in ("pub-out", "frontend", "backend", "pub-in"):
        assert report[port]["received"] == 0, report
        assert "CONNECTED" in report[port]["events"], report  # it did reach the port ...
        assert "HANDSHAKE_SUCCEEDED" not in report[port]["events"], report  # ... and was refused
        assert any(e.startswith("HANDSHAKE_FAILED") for e in report[port]["events"]), report
    assert report["redis"] == {"no password": "AuthenticationError", "wrong password": "AuthenticationError",
                               "default user": "AuthenticationError"}, report
    assert sent > 0


def opened_before_fence(log: Path) -> bool:
    """Whether the gateway opened its client port again after the silence and before it was fenced: what
    the broker's heartbeats that waited in the cut link did before they were numbered (gateway.link)."""
    lines = log.read_text(errors="replace").splitlines()
    fenced = next(i for i, line in enumerate(lines) if "fenced: " in line)
    closed = max(i for i, line in enumerate(lines[:fenced]) if "cannot serve" in line)
    return any("serving again" in line for line in lines[closed:fenced])


def test_cut_links_cost_a_pause_and_lose_nothing(deployment: Deployment, people: dict[str, ChatClient]) -> None:
    alice, bob, carol, dave = (people[n] for n in ("alice", "bob", "carol", "dave"))
    net, t = deployment.net, deployment.timings
    gw_a = deployment.gateway_of("alice").partition(".")[0]  # the host of alice's and carol's gateway
    assert deployment.gateway_of("carol").startswith(f"{gw_a}.")
    assert not deployment.gateway_of("bob").startswith(f"{gw_a}.")
    lost_workers = deployment.broker_counter("workers_lost_total")

    # chat across gateways
    alice.send("hello from the first gateway")
    bob.expect("#hall <alice> hello from the first gateway")
    bob.send("/msg alice hi back")
    alice.expect("*bob* hi back")

    # a worker host cut off while alice talks: a pause, nothing lost
    net.cut("wk1")
    try:
        sent, t["worker cut: longest wait"] = talk_while(deployment, alice, bob, "alice", "w", CUT)
    finally:
        net.restore("wk1")
    more, _ = talk_while(deployment, alice, bob, "alice", "w2", 0.5)
    for client in (bob, carol, dave):
        exactly_once_in_order(client, "alice", "w", sent)
    wait_until(lambda: deployment.broker_counter("workers_lost_total") >= lost_workers + 2, 10,
               "the broker to count wk1's two workers lost")
    assert more > 0

    # a gateway host cut off past the liveness window: its clients are told to reconnect,
    # the others see them quit, and it serves again under a new name by itself
    lost_gateways = deployment.broker_counter("gateways_lost_total")
    net.cut(gw_a)
    try:
        sent, t["gateway cut: longest wait elsewhere"] = talk_while(deployment, bob, dave, "bob", "g", CUT)
        saw(dave, "* alice quit (connection lost)", 5)
        saw(dave, "* carol quit (connection lost)", 5)
    finally:
        net.restore(gw_a)
    restored_at = time.monotonic()
    for client in (alice, carol):
        saw(client, PLEASE_RECONNECT, 15)
        client.wait_closed(5)
        client.close()  # as a real client does on the end of its stream: HAProxy stops counting it
    t["gateway cut: please reconnect after restore"] = time.monotonic() - restored_at
    exactly_once_in_order(dave, "bob", "g", sent)
    assert deployment.broker_counter("gateways_lost_total") == lost_gateways + 1
    gw_metrics = deployment.gateway_metrics[gw_a]
    wait_until(lambda: deployment.scrape(gw_metrics).get("chat_gateway_serving") == 1.0, 10, "the gateway serving")
    assert deployment.scrape(gw_metrics)["chat_gateway_fences_total"] == 1.0
    assert not opened_before_fence(deployment.run / f"{gw_a}.log"), "a stale heartbeat opened the client port"
    t["gateway cut: serving again after restore"] = time.monotonic() - restored_at
    wait_until(lambda: deployment.balancer.servers()[gw_a] == "UP", 15, "back in rotation")
    wait_until(lambda: deployment.balancer.sessions()[gw_a] == 0, 15, "alice's and carol's ends counted")
    erin = deployment.client("erin")  # leastconn: the re-joined gateway has no clients ...
    people["erin"] = erin
    instance = deployment.gateway_of("erin")
    # ... but a tie, a check in flight, or a connect HAProxy had to redispatch (its retries went to
    # the other gateway) may still send one elsewhere: newcomers, one each half second, for a while
    newcomers: list[str] = []

    def newcomer_on_gw_a() -> bool:
        nick = f"newcomer{len(newcomers)}"
        newcomers.append(nick)
        people[nick] = deployment.client(nick)
        return deployment.gateway_of(nick).startswith(f"{gw_a}.")

    if not instance.startswith(f"{gw_a}."):
        with contextlib.suppress(AssertionError):  # the assertion below says what HAProxy and the gateway saw
            wait_until(newcomer_on_gw_a, 10, "a newcomer on the re-joined gateway", interval=0.5)
        instance = deployment.gateway_of(newcomers[-1])
    gw_now, failures = deployment.scrape(gw_metrics), deployment.balancer.connect_failures()
    assert instance.startswith(f"{gw_a}."), (
        instance, deployment.balancer.sessions(), deployment.balancer.servers(),
        failures, {k: gw_now.get(f"chat_gateway_{k}") for k in ("serving", "broker_up", "fences_total")})
    assert instance != deployment.gateways[gw_a].ready_line.split()[1]
    erin.join("#hall")
    erin.send("I am new here")
    bob.expect("#hall <erin> I am new here")

    # the broker host cut off: it hears nobody, suspects its own link, reaps nobody
    lost_gateways = deployment.broker_counter("gateways_lost_total")
    net.cut("broker")
    try:
        for i in range(1, 6):
            bob.send(f"b-{i}")
        time.sleep(CUT)  # holding the fault, not waiting for anything
        for i in range(6, 11):
            bob.send(f"b-{i}")
    finally:
        net.restore("broker")
    restored_at = time.monotonic()
    erin.expect("#hall <bob> b-10", 20)
    t["broker cut: delivered after restore"] = time.monotonic() - restored_at
    for client in (dave, erin):
        exactly_once_in_order(client, "bob", "b", 10)
    erin.send("still here")
    dave.expect("#hall <erin> still here")
    assert deployment.broker_counter("gateways_lost_total") == lost_gateways
    assert not any(client.closed for client in (bob, dave, erin))
    print("timings:", {k: round(v, 2) for k, v in t.items()},
          "broker lost:", {name: deployment.broker_counter(f"{name}_lost_total") for name in ("gateways", "workers")})
