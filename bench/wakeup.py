"""What a wake-up costs on this machine: the floor under every hop of the stack.

`python -m bench.wakeup [--round-trips N] [--json]` has two processes play
ping-pong over a pair of pipes, one byte each way, each blocking in `read`
until the other writes: every round trip is two wake-ups of a sleeping
process, and nothing else. It runs three times: both processes pinned to one
CPU, pinned to two different CPUs, and left to the scheduler. Reported per
case: the round trip's wall time, and the CPU time (user + system, both
processes) per wake-up.

Why it matters: an event alone crosses four ZeroMQ hops and a Redis round
trip, about 20 context switches over all the parts (`bench.light`). What one
costs bounds what a lone event costs, and on a virtual machine a wake-up of
a process on another virtual CPU (an inter-processor interrupt, which the
hypervisor handles) can cost several times one on the same CPU.
Not a test: figures only.
"""

from __future__ import annotations

import json
import os
import resource
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass

import click

WARMUP = 200  # round trips before the timed ones


@dataclass(frozen=True, slots=True)
class Result:
    case: str
    cpus: tuple[int, ...] | None  # the CPUs the two processes were pinned to; None: not pinned
    round_trip_us: float  # wall time of one round trip (two wake-ups)
    cpu_us_per_wakeup: float  # CPU of both processes (user + system) per wake-up


def cases(allowed: set[int]) -> list[tuple[str, tuple[int, int] | None]]:
    """The placements to measure on the CPUs this process may use: one CPU, two CPUs (if there
    are two), and none pinned."""
    first, *rest = sorted(allowed)
    placed: list[tuple[str, tuple[int, int] | None]] = [("one CPU", (first, first))]
    if rest:
        placed.append(("two CPUs", (first, rest[0])))
    placed.append(("scheduler's choice", None))
    return placed


def per_wakeup(cpu_seconds: float, round_trips: int) -> float:
    """CPU microseconds per wake-up: a round trip is two of them."""
    return cpu_seconds / (2 * round_trips) * 1e6


@contextmanager
def _pipes() -> Iterator[tuple[int, int, int, int]]:
    ping_r, ping_w = os.pipe()
    pong_r, pong_w = os.pipe()
    try:
        yield ping_r, ping_w, pong_r, pong_w
    finally:
        for fd in (ping_r, ping_w, pong_r, pong_w):
            os.close(fd)


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def measure(case: str, cpus: tuple[int, int] | None, round_trips: int) -> Result:
    """Ping-pong `round_trips` times (after WARMUP) between this process and a forked child."""
    allowed = os.sched_getaffinity(0)
    total = WARMUP + round_trips
    with _pipes() as (ping_r, ping_w, pong_r, pong_w):
        children_before = _children_cpu()
        pid = os.fork()
        if pid == 0:  # the child: answer every ping, then go
            status = 0
            try:
                if cpus is not None:
                    os.sched_setaffinity(0, {cpus[1]})
                for _ in range(total):
                    os.read(ping_r, 1)
                    os.write(pong_w, b"o")
            except BaseException:
                status = 1
            os._exit(status)
        try:
            if cpus is not None:
                os.sched_setaffinity(0, {cpus[0]})
            for _ in range(WARMUP):
                os.write(ping_w, b"i")
                os.read(pong_r, 1)
            started, cpu_started = time.perf_counter(), time.process_time()
            for _ in range(round_trips):
                os.write(ping_w, b"i")
                os.read(pong_r, 1)
            wall, cpu = time.perf_counter() - started, time.process_time() - cpu_started
        finally:
            os.sched_setaffinity(0, allowed)
            _, status = os.waitpid(pid, 0)
        if status != 0:
            raise RuntimeError(f"the ping-pong child failed (status {status})")
        # the child's CPU includes its warm-up: count it in the same share as the parent's timed part
        child = (_children_cpu() - children_before) * round_trips / total
    return Result(case, cpus, wall / round_trips * 1e6, per_wakeup(cpu + child, round_trips))


def report(results: list[Result]) -> str:
    lines = [f"{'case':<20} {'CPUs':<8} {'round trip us':>14} {'CPU us per wake-up':>19}"]
    for result in results:
        cpus = ",".join(map(str, result.cpus)) if result.cpus else "-"
        lines.append(f"{result.case:<20} {cpus:<8} {result.round_trip_us:>14.1f} {result.cpu_us_per_wakeup:>19.1f}")
    return "\n".join(lines)


@click.command(help=__doc__.split("\n\n")[0])
@click.option("--round-trips", default=20_000, show_default=True, type=click.IntRange(min=1),
              help="Timed round trips per case.")
@click.option("--json", "as_json", is_flag=True, help="Print the results as JSON.")
def main(round_trips: int, as_json: bool) -> None:
    results = [measure(case, cpus, round_trips) for case, cpus in cases(os.sched_getaffinity(0))]
    click.echo(json.dumps([asdict(result) for result in results]) if as_json else report(results))


if __name__ == "__main__":
    main()
