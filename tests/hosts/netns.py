"""Hosts for multi-host tests: Linux network namespaces joined by one bridge.

    namespace <run>-br       br0 (no address) with one port per host, `h-<name>`
    namespace <run>-<name>   lo, and eth0 10.77.0.N/24 (the other end of h-<name>)

Every link is made inside these namespaces (`ip -n`), never in the one the tests
run in; the only addresses are on 10.77.0.0/24 and 127.0.0.1 inside each host, and
every namespace's default route (IPv4 and IPv6) is `unreachable`: nothing a test
runs in a host can leave the machine, or reach the test's own namespace.

`hosts("a", "b")` is a context manager -> `Hosts`: run a command in a host, start
one (stopped on exit; `start_ready` also waits for its ready line), open sockets
in a host from the test itself (`inside`: only the calling thread moves, and a
socket stays in the namespace it was made in), cut a host's link (`ip link set
h-<name> down`, as if its cable were pulled) and restore it. On exit, also when the test failed, its
processes are killed and its namespaces deleted. Names carry the test process's
PID, so `sweep()` (also run by `hosts`) deletes what a run that died (kill -9)
left behind.

Needs root and `ip` (iproute2); `unavailable()` says why not, for a skip.
"""

from __future__ import annotations

import ctypes
import ipaddress
import itertools
import os
import shutil
import signal
import subprocess
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from stack.children import Child, start
from stack.rundir import pid_alive

PREFIX = "chatnet-"  # chatnet-<pid>-<serial>-<host>
SUBNET = ipaddress.ip_network("10.77.0.0/24")
MAX_HOSTS = 200
COMMAND_TIMEOUT = 10.0
NETNS_DIR = Path("/run/netns")
CLONE_NEWNET = 0x40000000


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, timeout=COMMAND_TIMEOUT,
                   stdin=subprocess.DEVNULL)


def namespaces() -> list[str]:
    out = subprocess.run(["ip", "netns", "list"], check=True, capture_output=True, text=True,
                         timeout=COMMAND_TIMEOUT).stdout
    return [line.split()[0] for line in out.splitlines() if line.strip()]


def unavailable() -> str | None:
    """Why these hosts cannot be made here, or None if they can."""
    if os.geteuid() != 0:
        return "network namespaces need root"
    if shutil.which("ip") is None:
        return "no `ip` command (Debian package iproute2)"
    try:
        namespaces()
    except (OSError, subprocess.SubprocessError) as exc:
        return f"`ip netns` does not work here: {exc}"
    return None


def sweep() -> list[str]:
    """Delete the namespaces of runs whose process is gone -> their names."""
    swept = []
    for name in namespaces():
        pid = name[len(PREFIX):].partition("-")[0]
        if name.startswith(PREFIX) and pid.isdigit() and not pid_alive(int(pid)):
            _ip("netns", "del", name)
            swept.append(name)
    return swept


@dataclass
class Host:
    name: str
    netns: str
    address: str  # on eth0, in SUBNET
    port: str  # its link's end on the bridge, in the bridge's namespace


@dataclass
class Hosts:
    bridge: str  # the bridge's namespace
    hosts: dict[str, Host] = field(default_factory=dict)
    processes: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def __getitem__(self, name: str) -> Host:
        return self.hosts[name]

    def command(self, host: str, argv: list[str]) -> list[str]:
        return ["ip", "netns", "exec", self.hosts[host].netns, *argv]

    def run(self, host: str, argv: list[str], timeout: float = COMMAND_TIMEOUT) -> subprocess.CompletedProcess[str]:
        """Run a command in a host, wait for it -> its result (not checked)."""
        return subprocess.run(self.command(host, argv), capture_output=True, text=True, timeout=timeout,
                              stdin=subprocess.DEVNULL, check=False)

    def start(self, host: str, argv: list[str], **popen: object) -> subprocess.Popen[bytes]:
        """Start a command in a host; it is killed when the hosts are torn down."""
        proc = subprocess.Popen(self.command(host, argv), start_new_session=True,  # type: ignore[call-overload]
                                stdin=subprocess.DEVNULL, **popen)
        self.processes.append(proc)
        return proc

    def start_ready(self, host: str, argv: list[str], ready_prefix: str, timeout: float = 30.0,
                    stderr: int | None = None) -> Child:
        """Start a chat part in a host and wait for its ready line (see `stack.children.start`)."""
        child = start(host, self.command(host, argv), ready_prefix, timeout=timeout, stderr=stderr)
        self.processes.append(child.proc)
        return child

    @contextmanager
    def inside(self, host: str) -> Iterator[None]:
        """The calling thread in the host's network namespace, for making sockets there."""
        with _entered(NETNS_DIR / self.hosts[host].netns):
            yield

    def inodes(self) -> set[int]:
        """The namespaces' identities, to find processes still in them after they are deleted."""
        return {os.stat(NETNS_DIR / netns).st_ino for netns in [*(h.netns for h in self.hosts.values()), self.bridge]}

    def cut(self, host: str) -> None:
        """Pull the host's cable: its bridge port goes down (the host keeps its address)."""
        _ip("-n", self.bridge, "link", "set", self.hosts[host].port, "down")

    def restore(self, host: str) -> None:
        _ip("-n", self.bridge, "link", "set", self.hosts[host].port, "up")

    def stop_processes(self) -> None:
        for proc in self.processes:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(COMMAND_TIMEOUT)


_serials = itertools.count(1)


def _setns(fd: int) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.setns(fd, CLONE_NEWNET) != 0:
        errno = ctypes.get_errno()
        raise OSError(errno, f"setns: {os.strerror(errno)}")


@contextmanager
def _entered(path: Path) -> Iterator[None]:
    home = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    try:
        target = os.open(path, os.O_RDONLY)
        try:
            _setns(target)
        finally:
            os.close(target)
        try:
            yield
        finally:
            _setns(home)
    finally:
        os.close(home)


def processes_in(inodes: set[int]) -> list[int]:
    """PIDs of the processes whose network namespace is one of `inodes`."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                if os.stat(f"/proc/{entry}/ns/net").st_ino in inodes:
                    found.append(int(entry))
            except OSError:  # gone meanwhile, or a kernel thread
                continue
    return found


def _isolate(netns: str) -> None:
    """lo up; every default route unreachable."""
    _ip("-n", netns, "link", "set", "lo", "up")
    _ip("-n", netns, "route", "add", "unreachable", "default")
    _ip("-n", netns, "-6", "route", "add", "unreachable", "default")


def _add_host(net: Hosts, name: str, address: str) -> None:
    netns = f"{net.bridge.removesuffix('-br')}-{name}"
    port = f"h-{name}"[:15]
    _ip("netns", "add", netns)
    net.hosts[name] = Host(name, netns, address, port)
    _isolate(netns)
    _ip("-n", net.bridge, "link", "add", port, "type", "veth", "peer", "name", "eth0", "netns", netns)
    _ip("-n", net.bridge, "link", "set", port, "master", "br0", "up")
    _ip("-n", netns, "addr", "add", f"{address}/{SUBNET.prefixlen}", "dev", "eth0")
    _ip("-n", netns, "link", "set", "eth0", "up")


def _delete(net: Hosts) -> None:
    net.stop_processes()
    present = set(namespaces())
    for netns in [host.netns for host in net.hosts.values()] + [net.bridge]:
        if netns in present:
            _ip("netns", "del", netns)


@contextmanager
def hosts(*names: str) -> Iterator[Hosts]:
    """Hosts with these names (letters, digits, -; 12 at most), addresses 10.77.0.1, .2, ..."""
    if len(names) > MAX_HOSTS or len(set(names)) != len(names):
        raise ValueError("at most 200 distinct host names")
    for name in names:
        if not (name.replace("-", "").isalnum() and name.isascii() and len(name) <= 12 and name != "br"):
            raise ValueError(f"bad host name {name!r}")
    sweep()
    net = Hosts(f"{PREFIX}{os.getpid()}-{next(_serials)}-br")
    with ExitStack() as stack:
        stack.callback(_delete, net)
        _ip("netns", "add", net.bridge)
        _isolate(net.bridge)
        _ip("-n", net.bridge, "link", "add", "br0", "type", "bridge")
        _ip("-n", net.bridge, "link", "set", "br0", "up")
        for name, address in zip(names, SUBNET.hosts(), strict=False):
            _add_host(net, name, str(address))
        yield net
