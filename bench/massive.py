"""W6: 100,000 idle registered connections on one machine (opt-in: `--workloads W6`).

A process may hold at most `ulimit -Hn` (here 20,000) file descriptors, so
the connections are spread over the server's gateways (chat-bench raises
`--gateways` to enough of them) and over several load-generator processes,
each connecting from a source address of its own (127.0.0.11, .12 ...), so
no one address runs out of ephemeral ports. Every process registers its
share in the server's dialect, in rooms of `idle_room_size`, except the
first `w6_probe` connections, which join one probe room spread over every
gateway and every load-generator process.

Measured: the time from "go" until every process has registered its share
(connect + register, all at once); the RSS of every process of the server
once idle before and after, per connection and per part; then one message
to the probe room, and when each member saw it (the processes read the
same monotonic clock): all must have it, and the slowest is the figure
(target: under a second).

Each child process is driven over a pipe: "go" -> ("registered", n, s);
"arm" (probe handlers installed) -> ("armed",); "fire" to the one that
holds the sender; then each reports ("probe", latencies_ns) once all its
probe members have the message or PROBE_TIMEOUT passed; "close" ends it.
Children are stopped by their PID if they do not end by themselves.
"""

from __future__ import annotations

import math
import multiprocessing
import resource
import time
import traceback
from array import array
from collections.abc import Sequence
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess

from bench.dialect import IRC, WS, Dialect
from bench.handshake import ClientSpec, open_clients
from bench.loadgen import Conn, Loop, raise_file_limit
from bench.measure import Meter, Result, add_latency, rate
from bench.procstats import rss_by_part
from bench.workloads import Context, say, setup_timeout

FD_SLACK = 300  # the selector, the pipe, Python's own files
HANDSHAKES_AT_ONCE = 500  # per process
PROBE_TIMEOUT = 10.0
REPLY_TIMEOUT = 30.0
SOURCE_BASE = 10  # the k-th process connects from 127.0.0.(SOURCE_BASE + k + 1)


def hard_file_limit() -> int:
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    return 1 << 20 if hard == resource.RLIM_INFINITY else int(hard)


def per_process(cap: int | None = None) -> int:
    """Connections one process (a gateway, a load generator) may hold here: `cap` (a test's), or the fd limit."""
    most = hard_file_limit() - FD_SLACK
    return most if cap is None else min(cap, most)


def gateways_needed(connections: int, cap: int | None = None) -> int:
    return max(1, math.ceil(connections / per_process(cap)))


def specs_for(ctx: Context) -> list[ClientSpec]:
    n, probe, size = ctx.shape.w6, ctx.shape.w6_probe, ctx.shape.idle_room_size
    procs = gateways_needed(n, ctx.shape.w6_per_process)
    specs = []
    for i in range(n):
        room = f"#{ctx.tag}-w6-probe" if i < probe else f"#{ctx.tag}-w6-{i // size}"
        source = f"127.0.0.{SOURCE_BASE + i % procs + 1}"
        specs.append(ClientSpec(f"{ctx.tag}x{i}", room, ctx.addr(i), source=source))
    return specs


# --- the child processes -------------------------------------------------------------


def child_main(pipe: Connection, specs: Sequence[ClientSpec], speech: str, probe: Sequence[int],
               prefix: bytes, end: bytes, timeout: float) -> None:
    """One load-generator process: register `specs`, then answer the parent's commands."""
    loop = Loop()
    try:
        raise_file_limit(len(specs) + FD_SLACK)
        _wait_for(pipe, loop, "go")
        began = time.monotonic()
        conns = open_clients(loop, specs, timeout, window=HANDSHAKES_AT_ONCE, speech=speech)
        pipe.send(("registered", len(conns), time.monotonic() - began))
        _serve(pipe, loop, [conns[i] for i in probe], prefix, end)
    except Exception as exc:
        pipe.send(("error", f"{type(exc).__name__}: {exc}", traceback.format_exc()[-800:]))
    finally:
        loop.close()
        pipe.close()


def _wait_for(pipe: Connection, loop: Loop, wanted: str) -> tuple:
    """Keep reading the sockets (join notices) until the parent's next command -> it."""
    while True:
        loop.run(pipe.poll, time.monotonic() + 3600)
        command: tuple = pipe.recv()
        if command[0] == "close":
            raise SystemExit(0)
        if command[0] == wanted:
            return command


def _serve(pipe: Connection, loop: Loop, members: list[Conn], prefix: bytes, end: bytes) -> None:
    _wait_for(pipe, loop, "arm")
    arrivals = array("q")

    def on_lines(conn: Conn, lines: list[bytes], now: int) -> None:
        for line in lines:
            at = line.find(b"w6probe ")
            if at >= 0:
                arrivals.append(now - int(line[at + 8:].split()[0]))

    for conn in members:
        conn.handler = on_lines
    pipe.send(("armed",))
    command = _wait_for(pipe, loop, "fire")
    if command[1] and members:  # this process holds the sender: its first probe member
        members[0].send(b"%sw6probe %d%s" % (prefix, time.perf_counter_ns(), end))
    expected = len(members) - (1 if command[1] and members else 0)  # a sender does not get its own
    loop.run(lambda: len(arrivals) >= expected, time.monotonic() + PROBE_TIMEOUT)
    pipe.send(("probe", arrivals.tolist(), expected))
    _wait_for(pipe, loop, "close")


# --- the parent ----------------------------------------------------------------------


class Children:
    def __init__(self) -> None:
        self.procs: list[BaseProcess] = []
        self.pipes: list[Connection] = []

    def start(self, shares: list[list[ClientSpec]], probes: list[list[int]], speech: str,
              prefix: bytes, end: bytes, timeout: float) -> None:
        """One process a share; each may take `timeout` s to register its share (they share the server)."""
        ctx = multiprocessing.get_context("spawn")  # a fresh interpreter: none of our sockets
        for share, probe in zip(shares, probes, strict=True):
            ours, theirs = ctx.Pipe()
            args = (theirs, share, speech, probe, prefix, end, timeout)
            proc = ctx.Process(target=child_main, args=args, daemon=True)
            proc.start()
            theirs.close()
            self.procs.append(proc)
            self.pipes.append(ours)

    def tell(self, *command: object) -> None:
        for pipe in self.pipes:
            pipe.send(command)

    def gather(self, kind: str, timeout: float) -> list[tuple]:
        replies: list[tuple] = []
        deadline = time.monotonic() + timeout
        for pipe in self.pipes:
            left = deadline - time.monotonic()
            if left <= 0 or not pipe.poll(left):
                raise RuntimeError(f"a load-generator process gave no {kind!r} within {timeout:.0f}s")
            reply = pipe.recv()
            if reply[0] == "error":
                raise RuntimeError(f"a load-generator process failed: {reply[1]}")
            replies.append(reply)
        return replies

    def stop(self) -> None:
        for pipe in self.pipes:
            try:
                pipe.send(("close",))
            except OSError:
                continue
        for proc in self.procs:
            proc.join(10)
            if proc.is_alive():
                proc.kill()  # by its PID
                proc.join(5)
        for pipe in self.pipes:
            pipe.close()


def check_capacity(ctx: Context) -> None:
    n = ctx.shape.w6
    need = gateways_needed(n, ctx.shape.w6_per_process)
    if ctx.server.tree is None:
        raise RuntimeError("W6 needs the server's processes (for memory): start it here or give --stack-pid")
    if len(ctx.server.addrs) < need:
        raise RuntimeError(f"{n:,} connections need {need} listening processes of at most "
                           f"{per_process(ctx.shape.w6_per_process):,} "
                           f"connections each (ulimit -Hn {hard_file_limit():,}); this server has "
                           f"{len(ctx.server.addrs)}")


def w6(ctx: Context, loop: Loop) -> list[Result]:
    if ctx.server.dialect == WS:
        raise RuntimeError("W6 does not speak WebSocket (its generator processes and probe count are line-protocol)")
    check_capacity(ctx)
    shape, tree = ctx.shape, ctx.server.tree
    assert tree is not None
    n = shape.w6
    procs = gateways_needed(n, shape.w6_per_process)
    specs = specs_for(ctx)
    shares = [specs[k::procs] for k in range(procs)]
    probes = [[j for j, spec in enumerate(share) if spec.room and spec.room.endswith("-w6-probe")] for share in shares]
    speech = Dialect(ctx.server.dialect)
    prefix = speech.to_room(f"#{ctx.tag}-w6-probe")
    end = b"\r\n" if ctx.server.dialect == IRC else b"\n"
    result = Result("W6", ctx.server.name, f"{n:,} idle registered connections over {len(ctx.server.addrs)} "
                    f"listeners and {procs} load-generator processes; one message to a room of {shape.w6_probe:,}")
    tree.settle(limit=10.0)
    before = rss_by_part(tree.snapshot())
    meter = Meter(tree)
    children = Children()
    try:
        children.start(shares, probes, ctx.server.dialect, prefix, end, setup_timeout(n))
        meter.begin()
        began = time.monotonic()
        children.tell("go")
        registered = children.gather("registered", setup_timeout(n) + REPLY_TIMEOUT)
        result.connect_s = round(time.monotonic() - began, 3)
        say(f"  W6 {ctx.server.name}: {sum(r[1] for r in registered):,} registered in {result.connect_s:.1f} s")
        tree.settle(limit=30.0)
        after = rss_by_part(tree.snapshot())
        children.tell("arm")
        children.gather("armed", REPLY_TIMEOUT)
        holder = next(k for k, probe in enumerate(probes) if probe)
        for k, pipe in enumerate(children.pipes):
            pipe.send(("fire", k == holder))  # the holder's first probe member sends
        reports = children.gather("probe", PROBE_TIMEOUT + REPLY_TIMEOUT)
        meter.end(result, 0)
    finally:
        children.stop()
    latencies = array("q", [ns for report in reports for ns in report[1]])
    expected = sum(report[2] for report in reports)
    add_latency(result, latencies)
    result.cpu_per_100k = None
    result.msgs_per_s = rate(n, result.connect_s)  # registrations a second
    result.deliveries = len(latencies)
    result.lost = max(0, expected - len(latencies))
    result.rss_per_conn_kib = {part: round((after[part] - before.get(part, 0)) / n / 1024, 2) for part in after}
    result.rss_per_conn_kib["all"] = round(sum(v for k, v in result.rss_per_conn_kib.items() if k != "all"), 2)
    result.extra.update(registrations_per_s=result.msgs_per_s, probe_members=expected + 1,
                        probe_received=len(latencies), probe_all_in_ms=result.max_ms,
                        loadgen_processes=procs, rss_mib_after={k: round(v / 2**20, 1) for k, v in after.items()})
    if result.server_cpu_s is not None:
        result.cpu_ms_per_op = round(result.server_cpu_s / n * 1000, 3)
    return [result]
