"""W3: many idle registered connections: memory per connection and time to connect.

N clients connect (spread over the gateways), each takes a nick and joins
a room of `idle_room_size` members (a join is announced to the room, so
rooms are kept small: one room of N would cost N^2/2 notices). The RSS of
every process of the server under test is read once it has gone idle
after the first half of the clients registered and once it has gone idle
after the second half: the difference over N/2 is the memory an idle
connection costs, per part (gateway, worker, Valkey ...), without what a
process allocates once on first use. The CPU the registrations cost is
measured too, and the time to connect is the two halves' added up.
"""

from __future__ import annotations

import time

from bench.handshake import ClientSpec
from bench.loadgen import Conn, Loop, raise_file_limit
from bench.measure import Meter, Result, rate
from bench.procstats import rss_by_part
from bench.workloads import Context

FD_SLACK = 200  # selector, logs, the baseline's pipes ...
HANDSHAKES_AT_ONCE = 500  # well under a listen backlog, so no SYN is dropped


def specs_for(ctx: Context) -> list[ClientSpec]:
    size = ctx.shape.idle_room_size
    return [ClientSpec(f"{ctx.tag}i{i}", f"#{ctx.tag}-idle-{i // size}", ctx.addr(i)) for i in range(ctx.shape.idle)]


def read_for(loop: Loop, seconds: float) -> None:
    """Keep reading (join notices) for a while, so no queue is left full."""
    loop.run(lambda: False, time.monotonic() + seconds)


def w3(ctx: Context, loop: Loop) -> list[Result]:
    n = ctx.shape.idle
    limit = raise_file_limit(n + FD_SLACK)
    if limit < n + FD_SLACK:
        raise RuntimeError(f"the file limit is {limit}: too low for {n} connections (ulimit -n)")
    tree = ctx.server.tree
    specs = specs_for(ctx)
    half = n // 2
    result = Result("W3", ctx.server.name,
                    f"idle: {n:,} registered connections in rooms of {ctx.shape.idle_room_size}")
    meter = Meter(tree)
    meter.begin()
    first, took_first, rss_half = connect_batch(ctx, loop, specs[:half])
    second, took_second, rss_all = connect_batch(ctx, loop, specs[half:])
    conns = first + second
    lines = sum(conn.lines_in for conn in conns)
    meter.end(result, lines)
    result.cpu_per_100k = None  # a few join notices: per registration says more
    result.connect_s = round(took_first + took_second, 3)
    result.msgs_per_s = rate(n, result.connect_s)  # registrations a second
    result.deliveries = lines
    result.extra["registrations_per_s"] = result.msgs_per_s
    if tree is not None and n - half > 0:
        result.rss_per_conn_kib = per_connection(rss_half, rss_all, n - half)
        result.extra["rss_mib_after"] = {part: round(rss / 2**20, 1) for part, rss in rss_all.items()}
    if result.server_cpu_s is not None:
        result.cpu_ms_per_op = round(result.server_cpu_s / n * 1000, 3)
    open_now = sum(1 for conn in conns if conn.closed is None)
    if open_now < n:
        result.extra["closed_while_idle"] = n - open_now
    return [result]


def connect_batch(ctx: Context, loop: Loop, specs: list[ClientSpec]) -> tuple[list[Conn], float, dict[str, int]]:
    """Connect and register `specs` -> (conns, seconds it took, RSS by part once idle again)."""
    began = time.monotonic()
    conns = ctx.open(loop, specs, "W3", window=HANDSHAKES_AT_ONCE) if specs else []
    took = time.monotonic() - began
    read_for(loop, 0.5)
    tree = ctx.server.tree
    if tree is None:
        return conns, took, {}
    tree.settle(limit=10.0)
    read_for(loop, 0.2)
    return conns, took, rss_by_part(tree.snapshot())


def per_connection(before: dict[str, int], after: dict[str, int], n: int) -> dict[str, float]:
    """KiB per connection by part, and in all."""
    growth = {part: (after[part] - before.get(part, 0)) / n / 1024 for part in after}
    growth["all"] = sum(growth.values())
    return {part: round(kib, 2) for part, kib in sorted(growth.items())}
