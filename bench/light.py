"""`python -m bench.light`: what one message costs each part of the stack under light load.

Under light load an event travels alone: nothing is batched, and every
part wakes up for it. This measures that cost. It starts `chat-stack`
(bench.servers: free ports of 127.0.0.1, `--rate-limit 0`, the IRC and web
doors off), connects `--members` clients into one room (bench.handshake),
and has the first of them send single-line messages paced at `--rate` a
second for `--duration` seconds (bench.flows, open loop: one write a
message), after a short warm-up. Every other member must get every line:
the receivers check each line's sequence number (bench.tally) and the run
waits, bounded, until all expected deliveries came (loss, duplicates and
reordering are counted and make the exit status 1).

Between the start and the end of the measured phase (drain included) it
reads, per process of the stack (gateway, broker, each worker, Valkey, the
pool and chat-stack themselves) and for the load generator itself, CPU
time (the run time of all its threads in /proc/PID/task/*/schedstat, in ns;
utime+stime where the kernel keeps no schedstats) and context switches
(voluntary and involuntary, summed over /proc/PID/task/*/status: every
thread, ZeroMQ's I/O threads included: what those threads cost is shown
apart too), and prints them per message sent,
with the p50/p99/max latency from send to delivery and the per-hop times
of the events the gateway sampled (bench.hops). `--json` prints the same
as one JSON object. The stack is stopped by PID when the run ends, also on
a failure, Ctrl-C or SIGTERM.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

import click
import psutil

from bench.flows import Flow, Sender
from bench.handshake import ClientSpec, open_clients, settle
from bench.loadgen import Conn, Loop
from bench.measure import Meter, Result, add_latency
from bench.procstats import ProcessTree, own_cpu
from bench.servers import Server, start_stack, stop_server

SETUP_TIMEOUT = 30.0  # seconds for the clients to connect, register and join
DRAIN_LIMIT = 10.0  # longest wait for the deliveries still on their way when sending stops
DRAIN_QUIET = 2.0  # ... or for this long without a delivery
WARMUP_S = 0.5  # seconds of the same load before measuring: first calls (scripts loaded, caches) are not counted
SETTLE_LIMIT = 5.0  # longest wait for the stack to go idle after the warm-up
LOADGEN = "load-gen"
SCHEDSTATS = os.path.exists("/proc/self/schedstat")  # the kernel keeps run times in ns (CONFIG_SCHED_INFO)


@dataclass(frozen=True, slots=True)
class LightConfig:
    rate: float = 300.0  # messages a second, one sender
    members: int = 10  # in the one room, the sender included
    duration: float = 3.0  # seconds of measured sending
    workers: int = 2
    out: Path = Path("bench-results")  # the stack's log goes here


@dataclass(frozen=True, slots=True)
class Usage:
    """One process's CPU seconds and context switches so far, and which part it is."""

    part: str
    cpu: float
    switches: int
    zmq_io: float = 0.0  # of `cpu`, its ZeroMQ I/O threads'


@dataclass(frozen=True, slots=True)
class Row:
    """One process (or the total): its cost per message sent."""

    part: str
    pid: int | None
    cpu_us: float
    switches: float
    zmq_io_us: float = 0.0  # of cpu_us, ZeroMQ's I/O threads'


@dataclass
class LightReport:
    config: dict[str, Any]
    rows: list[Row] = field(default_factory=list)
    seconds: float = 0.0
    sent: int = 0
    expected: int = 0
    received: int = 0
    lost: int = 0
    duplicated: int = 0
    reordered: int = 0
    other_lines: int = 0
    p50_ms: float | None = None
    p99_ms: float | None = None
    max_ms: float | None = None
    max_send_lag_ms: float = 0.0
    skipped: int = 0  # messages not sent because 2000 were in flight already (far from light load)
    hops: dict[str, Any] = field(default_factory=dict)
    run_queue_ms_per_s: dict[str, float] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)

    @property
    def intact(self) -> bool:
        """Every member got every line, once and in order."""
        return self.sent > 0 and not (self.lost or self.duplicated or self.reordered)


@dataclass(frozen=True, slots=True)
class Threads:
    """What the threads of one process have used so far."""

    run: float | None  # CPU seconds to the ns (schedstat); None where the kernel keeps no schedstats
    zmq_io: float  # of it, ZeroMQ's I/O threads' (named ZMQbg/IO/N)
    switches: int  # context switches, voluntary and not


def threads_of(pid: int) -> Threads:
    """Sum over /proc/PID/task/* (a thread that ends meanwhile is left out; a gone process is zeros)."""
    run = zmq_io = switches = 0
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return Threads(None, 0.0, 0)
    for tid in tids:
        try:
            with open(f"/proc/{pid}/task/{tid}/status") as f:
                status = f.read()
            ran = _schedstat_ns(f"/proc/{pid}/task/{tid}/schedstat") if SCHEDSTATS else 0
        except (OSError, ValueError, IndexError):  # the thread ended meanwhile
            continue
        switches += sum(int(line.split()[1]) for line in status.splitlines() if "ctxt_switches" in line)
        run += ran
        if status.startswith("Name:\tZMQbg/IO"):
            zmq_io += ran
    return Threads(run / 1e9 if SCHEDSTATS else None, zmq_io / 1e9, switches)


def _schedstat_ns(path: str) -> int:
    """A thread's run time so far, in ns."""
    with open(path) as f:
        return int(f.read().split()[0])


def part_of(pid: int, part: str) -> str:
    """bench.procstats' part, the pool's multiprocessing helper (its resource tracker) told from a worker."""
    if part != "worker":
        return part
    try:
        return "mp-helper" if "resource_tracker" in " ".join(psutil.Process(pid).cmdline()) else part
    except psutil.Error:
        return part


def usage_of(pid: int, part: str, ticks: float) -> Usage:
    """`ticks`: its utime+stime, for where the kernel keeps no schedstats."""
    threads = threads_of(pid)
    return Usage(part, ticks if threads.run is None else threads.run, threads.switches, threads.zmq_io)


def snapshot(tree: ProcessTree) -> dict[int, Usage]:
    """Every process of the stack, and this one (the load generator)."""
    usage = {pid: usage_of(pid, part_of(pid, sample.part), sample.cpu) for pid, sample in tree.snapshot().items()}
    usage[os.getpid()] = usage_of(os.getpid(), LOADGEN, own_cpu())
    return usage


def per_message(before: dict[int, Usage], after: dict[int, Usage], messages: int) -> list[Row]:
    """The difference of two snapshots per message, one row a process (workers numbered by PID), and a total
    of the stack's processes (the load generator apart)."""
    n = max(messages, 1)
    rows: list[Row] = []
    numbered: dict[str, int] = {}
    for pid in sorted(after, key=lambda p: (after[p].part == LOADGEN, after[p].part, p)):
        now, then = after[pid], before.get(pid, Usage(after[pid].part, 0.0, 0))
        part = now.part
        if part == "worker":
            numbered[part] = numbered.get(part, 0) + 1
            part = f"worker-{numbered[part]}"
        rows.append(Row(part, pid, _per(now.cpu - then.cpu, n), round(max(now.switches - then.switches, 0) / n, 2),
                        _per(now.zmq_io - then.zmq_io, n)))
    stack = [row for row in rows if row.part != LOADGEN]
    rows.append(Row("stack total", None, round(sum(r.cpu_us for r in stack), 1),
                    round(sum(r.switches for r in stack), 2), round(sum(r.zmq_io_us for r in stack), 1)))
    return rows


def _per(seconds: float, messages: int) -> float:
    """CPU seconds -> microseconds a message."""
    return round(max(seconds, 0.0) * 1e6 / messages, 1)


def open_room(loop: Loop, server: Server, members: int, tag: str) -> list[Conn]:
    """`members` clients registered in one room, everything their joins caused read."""
    room = f"#{tag}"
    specs = [ClientSpec(f"{tag}m{i}", room, server.addrs[0]) for i in range(members)]
    conns = open_clients(loop, specs, SETUP_TIMEOUT, label=f"light {server.name}")
    settle(loop, conns, SETUP_TIMEOUT)
    return conns


def new_flow(loop: Loop, conns: list[Conn], label: str) -> Flow:
    """The first member sends to the room; every other one receives, the second acknowledges."""
    sender = Sender(conns[0], 0, b"", len(conns) - 1)
    return Flow(loop, [sender], conns, {0: conns[1]}, label)


def measure(server: Server, config: LightConfig, tag: str) -> LightReport:
    """Warm up, then send at the rate and drain, reading every process's usage around it."""
    assert server.tree is not None
    report = LightReport(config={k: str(v) for k, v in asdict(config).items()})
    loop = Loop()
    try:
        conns = open_room(loop, server, config.members, tag)
        warmup = new_flow(loop, conns, "light warm-up")
        warmup.run_rate(config.rate, WARMUP_S)
        warmup.drain(DRAIN_QUIET, DRAIN_LIMIT)
        server.tree.settle(limit=SETTLE_LIMIT)
        flow = new_flow(loop, conns, f"light {config.rate:,.0f}/s")
        result = Result("light", server.name)
        meter = Meter(server.tree, server.metrics)
        meter.begin()  # reads the hop times first: that scrape is outside what `before` .. `after` counts
        before = snapshot(server.tree)
        seconds, lateness = flow.run_rate(config.rate, config.duration)
        flow.drain(DRAIN_QUIET, DRAIN_LIMIT)
        after = snapshot(server.tree)
        meter.end(result, flow.stats.received)
    finally:
        loop.close()
    fill(report, flow, result, seconds, lateness)
    report.rows = per_message(before, after, report.sent)
    return report


def fill(report: LightReport, flow: Flow, result: Result, seconds: float, lateness: dict[str, float]) -> None:
    outcome = flow.outcome()
    report.seconds = round(seconds, 3)
    report.sent, report.expected, report.received = outcome["sent"], outcome["expected"], outcome["received"]
    report.lost, report.duplicated, report.reordered = outcome["lost"], outcome["duplicated"], outcome["reordered"]
    report.other_lines = outcome["other_lines"]
    report.max_send_lag_ms = lateness["max_send_lag_ms"]
    report.skipped = int(lateness["skipped_backlog"])
    report.errors = flow.stats.errors + flow.stats.closed
    add_latency(result, flow.stats.in_ns(flow.stats.latencies))
    report.p50_ms, report.p99_ms, report.max_ms = result.p50_ms, result.p99_ms, result.max_ms
    report.hops = result.extra.get("hops", {})
    report.run_queue_ms_per_s = result.extra.get("run_queue_ms_per_s", {})


def run(config: LightConfig) -> LightReport:
    """Start the stack, measure, stop it (by PID, whatever happened)."""
    config.out.mkdir(parents=True, exist_ok=True)
    server = start_stack(config.workers, 1, config.out, name="light")
    try:
        return measure(server, config, f"l{os.getpid():x}")
    finally:
        stop_server(server)


def text(report: LightReport) -> str:
    """The report as a table: a row a process, then the flow's outcome and latency."""
    lines = [f"{'part':<14} {'pid':>8} {'CPU us/msg':>11} {'of it ZMQ I/O':>14} {'switches/msg':>13}"]
    for row in report.rows:
        pid = str(row.pid) if row.pid is not None else ""
        lines.append(f"{row.part:<14} {pid:>8} {row.cpu_us:>11.1f} {row.zmq_io_us:>14.1f} {row.switches:>13.2f}")
    lines.append(f"sent {report.sent} in {report.seconds:.2f} s ({report.sent / max(report.seconds, 1e-9):,.0f}/s), "
                 f"expected {report.expected} deliveries, received {report.received}: lost {report.lost}, "
                 f"duplicated {report.duplicated}, reordered {report.reordered}, other lines {report.other_lines}")
    lines.append(f"latency p50 {_ms(report.p50_ms)} p99 {_ms(report.p99_ms)} max {_ms(report.max_ms)} ms; "
                 f"the generator's worst send lag {report.max_send_lag_ms:.2f} ms"
                 + (f"; {report.skipped} not sent (2000 in flight)" if report.skipped else ""))
    if report.hops:
        lines.append("hops (sampled events, mean ms): " + ", ".join(
            f"{name} {hop['mean_ms']:.3f}" for name, hop in report.hops.items()))
    if report.run_queue_ms_per_s:
        lines.append("run-queue wait, ms a second: " + ", ".join(
            f"{part} {ms:g}" for part, ms in report.run_queue_ms_per_s.items()))
    lines += [f"error: {error}" for error in report.errors[:5]]
    return "\n".join(lines)


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def _stop_on_sigterm(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(128 + signum)  # unwinds through run()'s finally: the stack is stopped


@click.command(context_settings={"show_default": True})
@click.option("--rate", default=300.0, type=click.FloatRange(1.0, 100_000.0), help="Messages a second, one sender.")
@click.option("--members", default=10, type=click.IntRange(2, 1000), help="Members of the room, the sender included.")
@click.option("--duration", default=3.0, type=click.FloatRange(0.2, 600.0), help="Seconds of measured sending.")
@click.option("--workers", default=2, type=click.IntRange(1, 256), help="Worker processes of the stack.")
@click.option("--out", default="bench-results", type=click.Path(file_okay=False, path_type=Path),
              help="Folder for the stack's log (chat-light.log).")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of the table.")
def main(rate: float, members: int, duration: float, workers: int, out: Path, as_json: bool) -> None:
    """Light load: CPU and context switches per message, per part of the stack, and the latency."""
    signal.signal(signal.SIGTERM, _stop_on_sigterm)
    began = time.monotonic()
    report = run(LightConfig(rate, members, duration, workers, out))
    if as_json:
        print(json.dumps(asdict(report)))
    else:
        print(text(report))
        print(f"({time.monotonic() - began:.1f} s in all; the stack's log: {out / 'chat-light.log'})", file=sys.stderr)
    if not report.intact:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
