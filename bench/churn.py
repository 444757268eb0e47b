"""W5: churn: clients that connect, take a nick, join a room, quit, and do it again.

`churners` slots run at once; each runs one cycle after the other:
connect, wait for the greeting, send `/nick` and `/join` together, wait
for `* you joined`, send `/quit`, wait for `* bye` and for the server to
close. A cycle's latency is its whole duration. Slots share a few rooms,
so every join and quit is also announced to others. A cycle that gets an
error line, is closed early or takes over CYCLE_TIMEOUT fails and counts.
In IRC (`_IrcCycle`): NICK and USER, JOIN on `001`, QUIT on `366` (the
end of the room's names), and the server's close.
"""

from __future__ import annotations

import sys
import time
from array import array
from dataclasses import dataclass, field

from bench import dialect
from bench.loadgen import Conn, Loop
from bench.measure import Meter, Result, add_latency, rate
from bench.workloads import Context

CYCLE_TIMEOUT = 10.0
GIVE_UP_AFTER = 3  # failures a slot, with no cycle done at all
ROOMS = 4


@dataclass
class Churn:
    ctx: Context
    loop: Loop
    until: float = 0.0  # time.monotonic: no cycle starts after this
    started: int = 0
    done: int = 0
    failed: int = 0
    lines: int = 0
    in_progress: int = 0
    cycles_ns: array = field(default_factory=lambda: array("q"))
    failures: list[str] = field(default_factory=list)
    deadlines: dict[Conn, float] = field(default_factory=dict)

    def start_cycle(self, slot: int) -> None:
        n = self.started
        self.started += 1
        try:
            conn = Conn(self.loop, self.ctx.addr(n), tag=slot)
        except OSError as exc:
            self._failed(slot, f"connect: {exc}")
            return
        self.in_progress += 1
        self.deadlines[conn] = time.monotonic() + CYCLE_TIMEOUT
        nick, room = f"{self.ctx.tag}c{n}", f"#{self.ctx.tag}-churn-{slot % ROOMS}"
        cycle: _Cycle | _IrcCycle
        if self.ctx.server.dialect == dialect.IRC:
            cycle = _IrcCycle(self, slot, nick, room, conn)
        else:
            cycle = _Cycle(self, slot, nick, room)
        conn.handler = cycle.on_lines
        conn.on_close = cycle.on_close

    def finished(self, conn: Conn, cycle: _Cycle | _IrcCycle) -> None:
        self.in_progress -= 1
        self.deadlines.pop(conn, None)
        if cycle.step == "bye" and conn.closed == "closed by the server":
            self.done += 1
            self.cycles_ns.append(time.perf_counter_ns() - cycle.began)
            self._next(cycle.slot)
        else:
            self._failed(cycle.slot, f"{conn.closed} (at step {cycle.step})")

    def _failed(self, slot: int, why: str) -> None:
        self.failed += 1
        if len(self.failures) < 5:
            self.failures.append(why)
        if self.done == 0 and self.failed >= GIVE_UP_AFTER * churners(self.ctx):
            self.until = 0.0  # nothing ever works: stop instead of spinning
        self._next(slot)

    def _next(self, slot: int) -> None:
        if time.monotonic() < self.until:
            self.start_cycle(slot)

    def tick(self, now: int) -> float | None:
        clock = time.monotonic()
        for conn, deadline in list(self.deadlines.items()):
            if clock > deadline:
                conn.close(f"no progress within {CYCLE_TIMEOUT:.0f}s")
        return None


class _Cycle:
    """One connect-nick-join-quit cycle: `step` is what it waits for."""

    __slots__ = ("began", "churn", "hello", "join_reply", "slot", "step")

    def __init__(self, churn: Churn, slot: int, nick: str, room: str) -> None:
        self.churn = churn
        self.slot = slot
        self.step = "greeting"
        self.hello = f"/nick {nick}\n/join {room}\n".encode()
        self.join_reply = b"* you joined " + room.encode()
        self.began = time.perf_counter_ns()

    def on_lines(self, conn: Conn, lines: list[bytes], now: int) -> None:
        self.churn.lines += len(lines)
        for line in lines:
            step = self.step
            if line.startswith(b"! "):
                conn.close(f"server said {line.decode(errors='replace')!r} at step {step}")
                return
            if step == "greeting" and line.startswith(b"* "):
                conn.send(self.hello)
                self.step = "join"
            elif step == "join" and line.startswith(self.join_reply):
                conn.send(b"/quit\n")
                self.step = "quit"
            elif step == "quit" and line == b"* bye":
                self.step = "bye"

    def on_close(self, conn: Conn) -> None:
        self.churn.finished(conn, self)


class _IrcCycle:
    """The same cycle in IRC: `step` is what it waits for."""

    __slots__ = ("began", "churn", "join", "slot", "step")

    def __init__(self, churn: Churn, slot: int, nick: str, room: str, conn: Conn) -> None:
        self.churn = churn
        self.slot = slot
        self.step = "greeting"
        self.join = dialect.join(room)
        self.began = time.perf_counter_ns()
        conn.send(dialect.register(nick))

    def on_lines(self, conn: Conn, lines: list[bytes], now: int) -> None:
        self.churn.lines += len(lines)
        for line in lines:
            step = self.step
            answer = dialect.pong(line)
            if answer is not None:
                conn.send(answer)
                continue
            command = dialect.command_of(line)
            if command == b"ERROR" and step == "quit":
                self.step = "bye"  # the server's farewell: the close follows
                continue
            if dialect.is_error(line):
                conn.close(f"server said {line.decode(errors='replace')!r} at step {step}")
                return
            if step == "greeting" and command == b"001":
                conn.send(self.join)
                self.step = "join"
            elif step == "join" and command == b"366":
                conn.send(b"QUIT\r\n")
                self.step = "quit"

    def on_close(self, conn: Conn) -> None:
        if self.step == "quit" and conn.closed == "closed by the server":
            self.step = "bye"  # a server may close without an ERROR line
        self.churn.finished(conn, self)


def churners(ctx: Context) -> int:
    """Slots cycling at once: fewer where the server's listen backlog is small (ngIRCd)."""
    cap = ctx.server.connects
    return ctx.shape.churners if cap is None else min(ctx.shape.churners, cap)


def w5(ctx: Context, loop: Loop) -> list[Result]:
    shape = ctx.shape
    churn = Churn(ctx, loop)
    slots = churners(ctx)
    result = Result("W5", ctx.server.name, f"churn: {slots} clients cycling connect, /nick, /join, /quit")
    meter = Meter(ctx.server.tree)
    meter.begin()
    began = time.monotonic()
    churn.until = began + shape.duration
    for slot in range(slots):
        churn.start_cycle(slot)
    loop.run(lambda: churn.in_progress == 0, churn.until + CYCLE_TIMEOUT + 1, churn.tick, _progress(churn, began))
    seconds = time.monotonic() - began
    meter.end(result, churn.lines)
    result.seconds = round(seconds, 3)
    result.sent = churn.done
    result.msgs_per_s = rate(churn.done, seconds)  # cycles a second
    result.deliveries = churn.lines
    result.deliveries_per_s = rate(churn.lines, seconds)
    result.extra.update(cycles=churn.done, failed=churn.failed, cycles_per_s=result.msgs_per_s)
    if churn.failures:
        result.extra["failures"] = churn.failures
    if churn.done == 0 and churn.failed:
        result.error = f"no cycle completed, {churn.failed} failed; first: {churn.failures[0]}"
    if result.server_cpu_s is not None and churn.done:
        result.cpu_ms_per_op = round(result.server_cpu_s / churn.done * 1000, 3)
    add_latency(result, churn.cycles_ns)
    return [result]


def _progress(churn: Churn, began: float):  # type: ignore[no-untyped-def]
    def show() -> None:
        took = max(time.monotonic() - began, 1e-9)
        print(f"  W5 {churn.ctx.server.name}: {took:4.1f}s cycles {churn.done:,} ({churn.done / took:,.0f}/s), "
              f"failed {churn.failed}", file=sys.stderr, flush=True)
    return show
