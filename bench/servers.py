"""The servers under test: a chat-stack, a baseline or a C IRC peer started here, or a running target.

`start_stack` runs `chat-stack` as a child on free consecutive ports of
127.0.0.1 with the per-connection limits that a benchmark must lift (the
flood limit, the per-address cap: every client here comes from
127.0.0.1); `start_baseline` runs `bench.baseline` on a port the OS
picks. Both log to a file in the output folder. `stop_server` stops the
child by its PID, then kills by PID any process of its tree that outlived
it. `attach_target` finds the processes behind `--target` ports, when it
can, so their CPU can be counted too. `start_irc_peer` runs ngIRCd or
InspIRCd (`bench.peers`), `start_stack_irc` the stack with its IRC door:
both are driven in the IRC dialect. `start_stack_ws` runs the stack with
its web door (`--web-port`), driven over WebSocket. A stack started here
times one event in HOP_SAMPLE at every hop (`CHAT_HOP_SAMPLE`, unless the
environment sets it) and says where each part's metrics are (`metrics`):
the meter reads the per-hop times there (bench.hops).
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import psutil

from bench import peers
from bench.dialect import CHAT, IRC, WS
from bench.procstats import ProcessTree, listening_pids, stack_roots
from stack.children import Child, ChildFailed, python_module, start, stop
from stack.valkey import start_valkey

Addr = tuple[str, int]

HOP_SAMPLE = 20  # the stack's gateways time one event in this many at every hop (protocol.hops)


@dataclass
class Server:
    name: str  # "stack", "stack-irc", "stack-ws", "baseline", "ngircd", "inspircd" or "target"
    addrs: list[Addr]
    tree: ProcessTree | None  # None: its processes are unknown, no CPU or RSS figures
    child: Child | None = None
    log: Path | None = None
    notes: list[str] = field(default_factory=list)
    dialect: str = CHAT
    oper_senders: bool = False  # IRC: senders OPER up and set +F (ngIRCd's throttle)
    peer: peers.Peer | None = None
    tls: bool = False  # the clients speak TLS to `addrs`
    connects: int | None = None  # connections not yet answered by the server at most (a small listen backlog)
    parts: list[Child] = field(default_factory=list)  # children started one by one (stack-nocurve), last first
    workdir: Path | None = None  # removed when the server stops
    metrics: dict[str, str] = field(default_factory=dict)  # part -> HOST:PORT of its metrics (a stack)


def metrics_of(ready_line: str) -> dict[str, str]:
    """The parts' metrics endpoints that a chat-stack ready line names (`Metrics: broker=H:P ...`)."""
    _, found, rest = ready_line.partition(" Metrics: ")
    if not found:
        return {}
    return dict(re.findall(r"([\w.-]+)=(127\.0\.0\.1:\d+)", rest.partition(". ")[0]))


def stack_env() -> dict[str, str]:
    """The stack's environment: hop sampling on, unless already chosen."""
    return {"CHAT_HOP_SAMPLE": str(HOP_SAMPLE), **os.environ}


def _free_ports(count: int, host: str = "127.0.0.1", tries: int = 50) -> int:
    """A first port p such that p .. p+count-1 are free right now."""
    for _ in range(tries):
        with socket.socket() as probe:
            probe.bind((host, 0))
            first = probe.getsockname()[1]
        if first + count > 65535:
            continue
        if all(_is_free(host, first + i) for i in range(count)):
            return first
    raise ChildFailed(f"no {count} consecutive free ports found")


def _is_free(host: str, port: int) -> bool:
    with socket.socket() as probe:
        try:
            probe.bind((host, port))
        except OSError:
            return False
    return True


def stack_argv(port: int, workers: int, gateways: int, rate_limit_off: bool = True,
               extra: tuple[str, ...] = ()) -> list[str]:
    args = ["--port", str(port), "--host", "127.0.0.1", "--workers", str(workers),
            "--gateways", str(gateways), "--max-per-address", "0", *extra]
    for door in ("--irc-port", "--web-port"):  # doors on fixed default ports: off unless asked for
        if door not in extra and stack_has_option(door):
            args += [door, "off"]
    if rate_limit_off:
        args += ["--rate-limit", "0"]
    return python_module("stack.cli", *args)


def stack_has_option(option: str) -> bool:
    """Whether this checkout's chat-stack knows `option` (the IRC door, --no-curve ... land separately)."""
    from stack import cli  # the command's own definition: no process to start

    return any(option in param.opts for param in cli.main.params)


DOORS = {IRC: "--irc-port", WS: "--web-port"}  # dialect -> the chat-stack option of its door


def start_stack(workers: int, gateways: int, out_dir: Path, extra: tuple[str, ...] = (),
                name: str = "stack", door: str | None = None) -> Server:
    """chat-stack on free ports; with a `door` (IRC or WS), that door is what the clients use."""
    log = out_dir / f"chat-{name}.log"
    last: Exception | None = None
    for _ in range(3):  # a port found free may be taken before the stack binds it
        port = _free_ports(gateways * (2 if door else 1))
        args = extra + ((DOORS[door], str(port + gateways)) if door else ())
        with log.open("ab") as sink:
            try:
                child = start(name, stack_argv(port, workers, gateways, extra=args), "chat-stack ready",
                              timeout=60, stderr=sink.fileno(), env=stack_env())
            except ChildFailed as exc:
                last = exc
                continue
        first = port + gateways if door else port
        addrs = [("127.0.0.1", first + i) for i in range(gateways)]
        return Server(name, addrs, ProcessTree([child.pid]), child, log, dialect=door or CHAT,
                      metrics=metrics_of(child.ready_line))
    raise ChildFailed(f"chat-stack did not start: {last} (see {log})")


def start_stack_irc(workers: int, gateways: int, out_dir: Path, extra: tuple[str, ...] = ()) -> Server:
    if not stack_has_option("--irc-port"):
        raise peers.PeerUnavailable("this chat-stack has no IRC door (--irc-port) yet")
    return start_stack(workers, gateways, out_dir, extra, name="stack-irc", door=IRC)


def start_stack_ws(workers: int, gateways: int, out_dir: Path, extra: tuple[str, ...] = ()) -> Server:
    if not stack_has_option("--web-port"):
        raise peers.PeerUnavailable("this chat-stack has no web door (--web-port) yet")
    return start_stack(workers, gateways, out_dir, extra, name="stack-ws", door=WS)


def self_signed(workdir: Path) -> tuple[Path, Path]:
    """A throw-away certificate and key for 127.0.0.1 (openssl) -> (cert, key)."""
    cert, key = workdir / "cert.pem", workdir / "key.pem"
    argv = ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
            "-keyout", str(key), "-out", str(cert), "-days", "2", "-subj", "/CN=127.0.0.1"]
    try:
        subprocess.run(argv, capture_output=True, check=True, timeout=30)
    except (OSError, subprocess.SubprocessError) as exc:
        raise ChildFailed(f"could not make a self-signed certificate with openssl: {exc}") from exc
    return cert, key


def start_stack_tls(workers: int, gateways: int, out_dir: Path, extra: tuple[str, ...] = ()) -> Server:
    """chat-stack with TLS listeners (`--tls-port`): the clients use those."""
    workdir = Path(tempfile.mkdtemp(prefix="chat-bench-tls-"))
    try:
        cert, key = self_signed(workdir)
        log = out_dir / "chat-stack-tls.log"
        for _ in range(3):
            port = _free_ports(gateways * 2)
            args = (*extra, "--tls-port", str(port + gateways), "--tls-cert", str(cert), "--tls-key", str(key))
            with log.open("ab") as sink:
                try:
                    child = start("stack-tls", stack_argv(port, workers, gateways, extra=args), "chat-stack ready",
                                  timeout=60, stderr=sink.fileno())
                except ChildFailed:
                    continue
            addrs = [("127.0.0.1", port + gateways + i) for i in range(gateways)]
            return Server("stack-tls", addrs, ProcessTree([child.pid]), child, log, tls=True, workdir=workdir)
        raise ChildFailed(f"chat-stack with TLS did not start (see {log})")
    except BaseException:
        shutil.rmtree(workdir, ignore_errors=True)
        raise


def start_stack_nocurve(workers: int, gateways: int, out_dir: Path, maxmemory: int = 0) -> Server:
    """The stack's parts as chat-stack starts them, but without CURVE keys (each part warns: plaintext).

    chat-stack always runs CURVE; this is the comparison it cannot make.
    """
    workdir = Path(tempfile.mkdtemp(prefix="chat-bench-nocurve-"))
    log = out_dir / "chat-stack-nocurve.log"
    children: list[Child] = []
    ep = {name: f"ipc://{workdir}/{name}" for name in ("frontend", "backend", "pub-in", "pub-out")}
    try:
        with log.open("ab") as sink:
            valkey, url = start_valkey(workdir / "valkey", maxmemory=maxmemory)
            children.append(valkey)
            children.append(start("broker", python_module(
                "broker.cli", "--frontend", ep["frontend"], "--backend", ep["backend"], "--pub-in", ep["pub-in"],
                "--pub-out", ep["pub-out"]), "chat-broker ready", stderr=sink.fileno()))
            children.append(start("workers", python_module(
                "workers.cli", "-n", str(workers), "--backend", ep["backend"], "--redis-url", url),
                "chat-worker started", stderr=sink.fileno()))
            port = _free_ports(gateways)
            for i in range(gateways):
                children.append(start(f"gateway-{i + 1}", python_module(
                    "gateway.cli", "--frontend", ep["frontend"], "--pub-out", ep["pub-out"], "--id", f"gw{i + 1}",
                    "--listen", f"127.0.0.1:{port + i}", "--rate-limit", "0", "--max-per-address", "0"),
                    f"chat-gateway gw{i + 1}.", stderr=sink.fileno()))
    except BaseException:
        stop_children(children)
        shutil.rmtree(workdir, ignore_errors=True)
        raise
    addrs = [("127.0.0.1", port + i) for i in range(gateways)]
    return Server("stack-nocurve", addrs, ProcessTree([c.pid for c in children]), None, log, parts=children,
                  workdir=workdir)


def stop_children(children: list[Child]) -> None:
    for child in reversed(children):
        stop(child)


def start_irc_peer(name: str, out_dir: Path) -> Server:
    peer = peers.start_peer(name, out_dir)
    server = Server(name, [("127.0.0.1", peer.port)], ProcessTree([peer.proc.pid]), None, peer.log,
                    dialect=IRC, oper_senders=peer.kind.oper, peer=peer, connects=peer.kind.connects)
    server.notes.append(f"{name}: {peer.version}, as user {peers.UNPRIVILEGED}, config bench/irc_conf/{peer.kind.conf}")
    return server


def start_baseline(out_dir: Path) -> Server:
    log = out_dir / "chat-baseline.log"
    with log.open("ab") as sink:
        child = start("baseline", python_module("bench.baseline", "--port", "0"), "chat-baseline listening",
                      timeout=30, stderr=sink.fileno())
    port = int(child.ready_line.rsplit(":", 1)[1])
    return Server("baseline", [("127.0.0.1", port)], ProcessTree([child.pid]), child, log)


def parse_targets(spec: str) -> list[Addr]:
    addrs: list[Addr] = []
    for item in spec.split(","):
        host, sep, port = item.strip().rpartition(":")
        if not sep or not port.isdigit():
            raise ValueError(f"expected HOST:PORT, got {item!r}")
        addrs.append((host.strip("[]") or "127.0.0.1", int(port)))
    return addrs


def attach_target(spec: str, stack_pid: int | None) -> Server:
    addrs = parse_targets(spec)
    server = Server("target", addrs, None)
    if stack_pid is not None:
        server.tree = ProcessTree([stack_pid])
        return server
    listeners = sorted({pid for _, port in addrs for pid in listening_pids(port)})
    if listeners:
        server.tree = ProcessTree(stack_roots(listeners))
    else:
        server.notes.append("the target's processes were not found: no CPU or RSS figures (try --stack-pid)")
    return server


def stop_server(server: Server) -> None:
    """Stop what we started, by PID; kill leftovers of its tree by PID."""
    if server.peer is not None:
        peers.stop_peer(server.peer)
    stop_children(server.parts)
    if server.workdir is not None:
        shutil.rmtree(server.workdir, ignore_errors=True)
    if server.child is None:
        return
    leftovers = server.tree.processes() if server.tree is not None else []
    stop(server.child)
    for proc in leftovers:
        try:
            if proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE:
                proc.kill()
        except psutil.NoSuchProcess:
            continue
