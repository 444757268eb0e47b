"""The workloads W1 .. W5 of issue 4, and the runner that turns a failure into a row.

W1 fan-out at saturation: R rooms of M members spread over the gateways,
S senders a room each keeping a window of messages in flight, counted by
one member of the room that does not send (its arrivals are the acks).
W2 the same shape open-loop at shares of the W1 send rate, for latency.
W4 pairs of clients on different gateways (when there are several)
sending each other private messages, windowed like W1. W2 keeps the
latencies of receivers with TCP_QUICKACK apart from the plain ones.
Every workload speaks the server's dialect (`bench.dialect`): our line
protocol, or IRC for the C peers and the stack's IRC door. W3 (idle
connections) and W5 (churn) live in `idle` and `churn`.

Every workload opens its own clients, with nicks and rooms prefixed by a
tag of this run so that runs against a shared target do not collide, and
closes them when it ends; the runner then waits for the server to go idle.
"""

from __future__ import annotations

import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field

from bench.config import Shape
from bench.dialect import Dialect
from bench.flows import Flow, Sender
from bench.handshake import ClientSpec, open_clients, settle
from bench.loadgen import Conn, Loop, client_tls
from bench.measure import Meter, Result, add_latency, rate
from bench.servers import Server


@dataclass
class Context:
    server: Server
    shape: Shape
    tag: str  # a few letters unique to this run
    w1_rate: float | None = None  # messages/s of this server's W1, for W2
    notes: list[str] = field(default_factory=list)

    def addr(self, i: int) -> tuple[str, int]:
        addrs = self.server.addrs
        return addrs[i % len(addrs)]

    @property
    def speech(self) -> Dialect:
        return Dialect(self.server.dialect)

    def sender(self, conn: Conn, sid: int, prefix: bytes, fanout: int) -> Sender:
        """`fanout`: the deliveries to others; the sender's own copy is added where it gets one (JSON mode)."""
        speech = self.speech
        return Sender(conn, sid, prefix, fanout + speech.echoes, end=speech.end)

    def open(self, loop: Loop, specs: list[ClientSpec], label: str, window: int = 256) -> list[Conn]:
        return open_clients(loop, specs, setup_timeout(len(specs)), window=window,
                            label=f"{label} {self.server.name}", speech=self.server.dialect,
                            connect_cap=self.server.connects)


Workload = Callable[[Context, Loop], list[Result]]


# seconds a server may take to go idle after a workload closed its clients, before the next starts:
# ngIRCd takes most of a minute to let W3's 10,000 go on a slow day (the wait ends once it is idle)
SETTLE_AFTER = 90.0


def setup_timeout(clients: int) -> float:
    return 30.0 + clients / 200


_T0 = time.monotonic()


def say(text: str) -> None:
    print(f"[{time.monotonic() - _T0:6.1f}s] {text}", file=sys.stderr, flush=True)


# --- W1 and W2: fan-out -------------------------------------------------------------


def open_fanout(ctx: Context, loop: Loop, label: str,
                quickack: bool = False) -> tuple[list[Conn], list[Sender], dict[int, Conn]]:
    """R rooms x M members; members 0..S-1 of each room send, member S acknowledges.

    With `quickack`, every other receiver that does not send re-arms
    TCP_QUICKACK after each read (the acknowledging member S does not), so
    one run measures latency at receivers with and without delayed ACKs.
    """
    shape = ctx.shape
    oper = ctx.server.oper_senders
    specs = [ClientSpec(f"{ctx.tag}{label}r{r}m{m}", f"#{ctx.tag}-{label}-{r}", ctx.addr(r * shape.members + m),
                        oper=oper and m < shape.senders)
             for r in range(shape.rooms) for m in range(shape.members)]
    conns = ctx.open(loop, specs, label)
    settle(loop, conns, setup_timeout(len(conns)), ctx.server.dialect)  # the later joiners' notices are read
    senders: list[Sender] = []
    ackers: dict[int, Conn] = {}
    for r in range(shape.rooms):
        room = conns[r * shape.members:(r + 1) * shape.members]
        prefix = ctx.speech.to_room(f"#{ctx.tag}-{label}-{r}")
        for s in range(shape.senders):
            ackers[len(senders)] = room[shape.senders]
            senders.append(ctx.sender(room[s], len(senders), prefix, shape.members - 1))
        for m in range(shape.senders + 1, shape.members, 2):
            room[m].quickack = quickack
    return conns, senders, ackers


def fill_flow(result: Result, flow: Flow, seconds: float, during_send: int) -> None:
    outcome = flow.outcome()
    result.seconds = round(seconds, 3)
    result.sent = outcome["sent"]
    result.deliveries = outcome["received"]
    result.msgs_per_s = rate(outcome["sent"], seconds)
    result.deliveries_per_s = rate(during_send, seconds)
    result.lost, result.reordered, result.duplicated = outcome["lost"], outcome["reordered"], outcome["duplicated"]
    result.extra.update(expected=outcome["expected"], other_lines=outcome["other_lines"],
                        receivers_closed=outcome["receivers_closed"])
    if flow.stats.errors:
        result.extra["server_errors"] = flow.stats.errors
    if flow.stats.closed:
        result.extra["closed_because"] = sorted(set(flow.stats.closed))[:3]
    add_latency(result, flow.stats.in_ns(flow.stats.latencies))
    quick = flow.stats.latencies_quickack
    if quick:
        probe = Result(result.workload, result.server)
        add_latency(probe, flow.stats.in_ns(quick))
        result.extra.update(quickack_p50_ms=probe.p50_ms, quickack_p99_ms=probe.p99_ms,
                            quickack_max_ms=probe.max_ms, quickack_deliveries=len(quick))


def windowed(ctx: Context, loop: Loop, flow: Flow, result: Result) -> Result:
    meter = Meter(ctx.server.tree, ctx.server.metrics)
    meter.begin()
    seconds = flow.run_window(ctx.shape.window, ctx.shape.duration)
    during_send = flow.stats.received
    result.extra["drain_s"] = round(flow.drain(limit=ctx.shape.drain), 3)
    meter.end(result, flow.stats.received)
    fill_flow(result, flow, seconds, during_send)
    return result


def w1(ctx: Context, loop: Loop) -> list[Result]:
    shape = ctx.shape
    conns, senders, ackers = open_fanout(ctx, loop, "w1")
    flow = Flow(loop, senders, conns, ackers, f"W1 {ctx.server.name}")
    what = (f"fan-out at saturation: {shape.rooms} rooms x {shape.members} members, "
            f"{shape.senders} senders/room, window {shape.window}")
    result = windowed(ctx, loop, flow, Result("W1", ctx.server.name, what))
    ctx.w1_rate = result.msgs_per_s
    return [result]


def w2(ctx: Context, loop: Loop) -> list[Result]:
    conns, senders, ackers = open_fanout(ctx, loop, "w2", quickack=True)
    if not ctx.w1_rate:
        say(f"  W2 {ctx.server.name}: no W1 rate yet, calibrating with a W1 run")
        flow = Flow(loop, senders, conns, ackers, f"W2 calibration {ctx.server.name}")
        ctx.w1_rate = windowed(ctx, loop, flow, Result("W1", ctx.server.name)).msgs_per_s
    if not ctx.w1_rate:
        raise RuntimeError("W1 sent nothing: no rate to take shares of")
    results = []
    for level in ctx.shape.levels:
        if ctx.server.tree is not None:
            ctx.server.tree.settle(limit=5.0)
        fresh = [renew(s) for s in senders]
        flow = Flow(loop, fresh, conns, ackers, f"W2 {level:.0%} {ctx.server.name}")
        results.append(at_rate(ctx, flow, level, ctx.w1_rate * level))
    for offered in ctx.shape.fixed_rates:  # the same offered load for every server: latencies compare
        if ctx.server.tree is not None:
            ctx.server.tree.settle(limit=5.0)
        fresh = [renew(s) for s in senders]
        flow = Flow(loop, fresh, conns, ackers, f"W2 {offered:,.0f}/s {ctx.server.name}")
        results.append(at_rate(ctx, flow, offered / ctx.w1_rate, offered, f"W2-{offered:.0f}/s"))
    return results


def renew(sender: Sender) -> Sender:
    """The same sender, its counts back at zero (sequence numbers start again per flow)."""
    return Sender(sender.conn, sender.sid, sender.prefix, sender.fanout, end=sender.end)


def at_rate(ctx: Context, flow: Flow, level: float, offered: float, name: str = "") -> Result:
    what = f"fixed load {level:.0%} of W1 = {offered:,.0f} msgs/s offered, W1 shape"
    result = Result(name or f"W2-{level:.0%}", ctx.server.name, what)
    meter = Meter(ctx.server.tree, ctx.server.metrics)
    meter.begin()
    seconds, lateness = flow.run_rate(offered, ctx.shape.duration)
    during_send = flow.stats.received
    result.extra.update(offered_msgs_per_s=round(offered, 1), **lateness,
                        drain_s=round(flow.drain(limit=ctx.shape.drain), 3))
    meter.end(result, flow.stats.received)
    fill_flow(result, flow, seconds, during_send)
    return result


# --- W4: private messages ---------------------------------------------------------


def w4(ctx: Context, loop: Loop) -> list[Result]:
    shape = ctx.shape
    n_gw = len(ctx.server.addrs)
    specs = []
    oper = ctx.server.oper_senders
    for p in range(shape.pairs):
        specs.append(ClientSpec(f"{ctx.tag}w4a{p}", None, ctx.addr(p), oper=oper))
        specs.append(ClientSpec(f"{ctx.tag}w4b{p}", None, ctx.addr(p + 1), oper=oper))
    conns = ctx.open(loop, specs, "W4")
    senders = []
    ackers: dict[int, Conn] = {}
    for i, conn in enumerate(conns):
        peer = i ^ 1
        ackers[i] = conns[peer]
        senders.append(ctx.sender(conn, i, ctx.speech.to_nick(specs[peer].nick), 1))
    flow = Flow(loop, senders, conns, ackers, f"W4 {ctx.server.name}")
    where = "on different gateways" if n_gw > 1 else "on the one gateway"
    what = f"private messages: {shape.pairs} pairs {where}, both ways, window {shape.window}"
    return [windowed(ctx, loop, flow, Result("W4", ctx.server.name, what))]


def run_workload(name: str, ctx: Context, workloads: dict[str, Workload]) -> list[Result]:
    """Run one workload; a failure becomes a row with its error, and the run goes on."""
    server = ctx.server
    procs = [c.proc for c in ([server.child] if server.child else []) + server.parts]
    procs += [server.peer.proc] if server.peer is not None else []
    gone = [proc for proc in procs if proc.poll() is not None]
    if gone:
        return [Result(name, server.name, error=f"the server exited with {gone[0].returncode}")]
    say(f"{name} on {server.name} ...")
    loop = Loop(client_tls() if server.tls else None, ws=ctx.speech.ws)
    try:
        return workloads[name](ctx, loop)
    except Exception as exc:
        say(f"  {name} on {server.name} failed: {exc}")
        say("".join(traceback.format_exception(exc)[-3:]).rstrip())
        return [Result(name, server.name, error=f"{type(exc).__name__}: {exc}")]
    finally:
        loop.close()
        if server.tree is not None:
            server.tree.settle(limit=SETTLE_AFTER)
