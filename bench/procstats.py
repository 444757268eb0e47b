"""CPU time and memory of the processes under test, and of the load generator.

A server under test is known by its root PIDs (chat-stack, or the
baseline, or the processes found listening on `--target`); a snapshot
walks each root's process tree again (a worker may have been restarted)
and reads utime+stime and RSS of every process in it, Valkey included.
The CPU a workload cost is the sum of the per-PID differences between two
snapshots; processes are grouped by part (gateway, broker, worker, valkey
...) so the report can say where the time went. A snapshot also reads how
long the threads of each process waited on a run queue, runnable but not
running (/proc/PID/task/TID/schedstat): on a machine with fewer cores than
busy processes, that is where latency goes that no hop of ours shows.
"""

from __future__ import annotations

import os
import resource
import time
from dataclasses import dataclass

import psutil

_PARTS = (
    ("gateway.cli", "gateway"), ("broker.cli", "broker"), ("workers.cli", "worker-pool"),
    ("multiprocessing", "worker"), ("valkey", "valkey"), ("redis-server", "redis"),
    ("stack.cli", "stack"), ("chat-stack", "stack"), ("bench.baseline", "baseline"),
)


@dataclass(frozen=True, slots=True)
class Sample:
    part: str
    cpu: float  # seconds, user + system
    rss: int  # bytes
    runq: float = 0.0  # seconds its threads waited on a run queue (0 where the kernel does not say)


def run_queue_wait(pid: int) -> float:
    """Seconds the threads of `pid` spent runnable but waiting for a CPU, so far."""
    total = 0
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return 0.0
    for tid in tids:
        try:
            with open(f"/proc/{pid}/task/{tid}/schedstat") as f:
                total += int(f.read().split()[1])
        except (OSError, ValueError, IndexError):  # a thread that ended meanwhile, or no schedstats
            continue
    return total / 1e9


def part_of(proc: psutil.Process) -> str:
    try:
        cmdline = " ".join(proc.cmdline())
    except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
        return "?"
    for needle, part in _PARTS:
        if needle in cmdline:
            return part
    return proc.name() if proc.is_running() else "?"


class ProcessTree:
    """The processes of one server under test."""

    def __init__(self, roots: list[int]) -> None:
        self.roots = roots
        self._parts: dict[int, str] = {}

    def processes(self) -> list[psutil.Process]:
        found: dict[int, psutil.Process] = {}
        for pid in self.roots:
            try:
                root = psutil.Process(pid)
                for proc in [root, *root.children(recursive=True)]:
                    found[proc.pid] = proc
            except psutil.NoSuchProcess:
                continue
        return list(found.values())

    def pids(self) -> list[int]:
        return [proc.pid for proc in self.processes()]

    def snapshot(self) -> dict[int, Sample]:
        samples: dict[int, Sample] = {}
        for proc in self.processes():
            try:
                with proc.oneshot():
                    times = proc.cpu_times()
                    rss = proc.memory_info().rss
                    part = self._parts.get(proc.pid) or self._parts.setdefault(proc.pid, part_of(proc))
            except (psutil.NoSuchProcess, psutil.ZombieProcess):
                continue
            samples[proc.pid] = Sample(part, times.user + times.system, rss, run_queue_wait(proc.pid))
        return samples

    def settle(self, idle_share: float = 0.05, limit: float = 15.0, step: float = 0.25) -> float:
        """Wait until the tree uses under `idle_share` of a core -> seconds waited."""
        began = time.monotonic()
        before = self.snapshot()
        while time.monotonic() - began < limit:
            time.sleep(step)  # measuring an idle rate takes an interval
            after = self.snapshot()
            if cpu_used(before, after)[0] < idle_share * step:
                break
            before = after
        return time.monotonic() - began


def cpu_used(before: dict[int, Sample], after: dict[int, Sample]) -> tuple[float, dict[str, float]]:
    """CPU seconds between two snapshots -> (total, by part). A new process counts from zero."""
    by_part: dict[str, float] = {}
    for pid, sample in after.items():
        start = before[pid].cpu if pid in before else 0.0
        by_part[sample.part] = by_part.get(sample.part, 0.0) + max(0.0, sample.cpu - start)
    return sum(by_part.values()), by_part


def run_queue_by_part(before: dict[int, Sample], after: dict[int, Sample]) -> dict[str, float]:
    """Seconds spent waiting on a run queue between two snapshots, by part."""
    by_part: dict[str, float] = {}
    for pid, sample in after.items():
        start = before[pid].runq if pid in before else 0.0
        by_part[sample.part] = by_part.get(sample.part, 0.0) + max(0.0, sample.runq - start)
    return by_part


def rss_by_part(snapshot: dict[int, Sample]) -> dict[str, int]:
    by_part: dict[str, int] = {}
    for sample in snapshot.values():
        by_part[sample.part] = by_part.get(sample.part, 0) + sample.rss
    return by_part


def own_cpu() -> float:
    """This process's CPU seconds, user + system."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def listening_pids(port: int) -> list[int]:
    """PIDs of the processes listening on TCP `port` (those of this user that /proc shows)."""
    pids: set[int] = set()
    try:
        conns = psutil.net_connections(kind="tcp")
    except psutil.AccessDenied:
        return []
    for conn in conns:
        if conn.status == psutil.CONN_LISTEN and conn.laddr and conn.laddr.port == port and conn.pid:
            pids.add(conn.pid)
    return sorted(pids)


def stack_roots(pids: list[int]) -> list[int]:
    """Given gateway PIDs: their chat-stack parent if there is one (to count the whole stack)."""
    roots: set[int] = set()
    for pid in pids:
        try:
            parent = psutil.Process(pid).parent()
        except psutil.NoSuchProcess:
            continue
        roots.add(parent.pid if parent is not None and part_of(parent) == "stack" else pid)
    return sorted(roots)
