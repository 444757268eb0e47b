"""Micro-benchmark of the Lua scripts: Valkey's own CPU per room message, churn cycle and private message.

    python -m bench.lua_micro [--events 3000] [--repeat 3]

Drives the scripts of `workers.scripts` through `workers.store.Store` against a real Valkey
(`stack.valkey.start_valkey`), in the shapes of chat-bench's workloads:

- say: W1's, 10 rooms of 50 members over 2 gateways, 5 senders a room, events of 14 room
  messages (W1's mean is ~13.7), one script call an event;
- churn: W5's cycle, a connect, a /nick, a /join of one of 4 rooms, a /quit, each its own call;
- private: W4's, pairs on two gateways, events of 4 private messages.

For each it prints Valkey's CPU (user + sys, `INFO cpu`) and the EVALSHA time of
`INFO commandstats` per unit (a line, a cycle), best of `--repeat` runs. Valkey's CPU is its
process's, so the figures hold on a shared machine. It runs against the tree it is started from:
the same file run with an older checkout first on PYTHONPATH gives the before figures.
"""

from __future__ import annotations

import argparse
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import redis

from stack.children import stop
from stack.valkey import start_valkey
from workers.store import Store

ROOMS, MEMBERS, SENDERS, LINES = 10, 50, 5, 14
GATEWAYS = ("gw0.bench", "gw1.bench")
CHURN_ROOMS = 4
PRIVATE_LINES = 4
TEXT = "the quick brown fox jumps over the lazy d"


@dataclass(frozen=True, slots=True)
class Cost:
    """Valkey's CPU and EVALSHA time per unit, in microseconds."""

    cpu_us: float
    evalsha_us: float
    calls: float


class Conn:
    """A connection numbering its events and lines as a gateway does."""

    def __init__(self, cid: str) -> None:
        self.cid = cid
        self.event = 0
        self.line = 0

    def next_event(self) -> int:
        self.event += 1
        return self.event

    def next_line(self) -> int:
        self.line += 1
        return self.line


def _cpu(client: redis.Redis) -> tuple[float, int, int]:
    cpu: dict[str, Any] = client.info("cpu")  # type: ignore[assignment]
    stats: dict[str, Any] = client.info("commandstats")  # type: ignore[assignment]
    evalsha = stats.get("cmdstat_evalsha", {})
    seconds = float(cpu["used_cpu_user"]) + float(cpu["used_cpu_sys"])
    return seconds, int(evalsha.get("usec", 0)), int(evalsha.get("calls", 0))


def measured(client: redis.Redis, units: int, work: Callable[[], None]) -> Cost:
    """Valkey's cost of `work`, which does `units` units."""
    before = _cpu(client)
    work()
    after = _cpu(client)
    return Cost((after[0] - before[0]) * 1e6 / units, (after[1] - before[1]) / units,
                (after[2] - before[2]) / units)


def _connected(store: Store, cid: str, nick: str, rooms: list[str]) -> Conn:
    conn = Conn(cid)
    store.run_one(store.connect(cid, cid.rpartition(":")[0], "127.0.0.1"))
    store.run_one(store.set_nick((conn.next_event(), conn.next_line()), cid, nick))
    for room in rooms:
        store.run_one(store.join((conn.next_event(), conn.next_line()), cid, room))
    return conn


def say_bench(store: Store, client: redis.Redis, events: int) -> Cost:
    senders: list[Conn] = []
    for r in range(ROOMS):
        for m in range(MEMBERS):
            conn = _connected(store, f"{GATEWAYS[m % 2]}:r{r}m{m}", f"u{r}m{m}", [f"#room{r}"])
            if m < SENDERS:
                senders.append(conn)

    def work() -> None:
        for n in range(events):
            conn = senders[n % len(senders)]
            event = conn.next_event()
            store.run([store.say((event, conn.next_line()), conn.cid, None, TEXT, f"{conn.cid}/{conn.line}",
                                 1.7e9 + n, "message") for _ in range(LINES)])

    return measured(client, events * LINES, work)


def churn_bench(store: Store, client: redis.Redis, cycles: int) -> Cost:
    for r in range(CHURN_ROOMS):  # rooms with members to announce to
        for m in range(3):
            _connected(store, f"{GATEWAYS[m % 2]}:c{r}m{m}", f"c{r}m{m}", [f"#churn{r}"])

    def work() -> None:
        for n in range(cycles):
            gateway = GATEWAYS[n % 2]
            conn = Conn(f"{gateway}:x{n}")
            store.run_one(store.connect(conn.cid, gateway, "127.0.0.1"))
            store.run_one(store.set_nick((conn.next_event(), conn.next_line()), conn.cid, f"x{n}"))
            store.run_one(store.join((conn.next_event(), conn.next_line()), conn.cid, f"#churn{n % CHURN_ROOMS}"))
            store.run_one(store.leave((conn.next_event(), conn.next_line()), conn.cid))

    return measured(client, cycles, work)


def private_bench(store: Store, client: redis.Redis, events: int) -> Cost:
    pairs = [(_connected(store, f"{GATEWAYS[0]}:p{n}", f"pa{n}", []),
              _connected(store, f"{GATEWAYS[1]}:q{n}", f"pb{n}", [])) for n in range(50)]

    def work() -> None:
        for n in range(events):
            a, b = pairs[n % len(pairs)]
            sender, target = (a, f"pb{n % len(pairs)}") if n % 2 else (b, f"pa{n % len(pairs)}")
            event = sender.next_event()
            store.run([store.private((event, sender.next_line()), sender.cid, target, 1.7e9 + n)
                       for _ in range(PRIVATE_LINES)])

    return measured(client, events * PRIVATE_LINES, work)


BENCHES: dict[str, tuple[Callable[[Store, redis.Redis, int], Cost], str, int]] = {
    "say": (say_bench, "room message", 1),
    "churn": (churn_bench, "W5 cycle", 4),
    "private": (private_bench, "private message", 1),
}


def _print_commandstats(client: redis.Redis, units: int, unit: str) -> None:
    stats: dict[str, Any] = client.info("commandstats")  # type: ignore[assignment]
    for name, stat in sorted(stats.items(), key=lambda kv: -int(kv[1]["usec"])):
        print(f"    {name[8:]:14} {int(stat['calls']) / units:7.3f} calls {int(stat['usec']) / units:8.2f} us "
              f"per {unit} ({float(stat['usec_per_call']):.2f} us a call)")


def run(events: int, repeat: int, only: list[str], stats: bool) -> None:
    with tempfile.TemporaryDirectory(prefix="lua-micro-") as tmp:
        child, url = start_valkey(Path(tmp) / "valkey")
        try:
            client = redis.Redis.from_url(url, decode_responses=True)
            for name in only:
                bench, unit, divisor = BENCHES[name]
                units = max(1, events // divisor)
                costs = []
                for n in range(repeat):
                    client.config_resetstat()
                    costs.append(bench(Store(client, prefix=f"b{name}{n}:"), client, units))
                best = min(costs, key=lambda c: c.cpu_us)
                print(f"{name:8} Valkey CPU {best.cpu_us:7.2f} us, EVALSHA {best.evalsha_us:7.2f} us "
                      f"({best.calls:.3f} calls) per {unit}; all CPU: "
                      + " ".join(f"{c.cpu_us:.2f}" for c in costs))
                if stats:  # the last run's, its setup included
                    _print_commandstats(client, units * (LINES if name == "say" else 1), unit)
            client.close()
        finally:
            stop(child)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=3000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--only", default="say,churn,private")
    parser.add_argument("--stats", action="store_true", help="print the last run's commandstats per unit")
    args = parser.parse_args()
    run(args.events, args.repeat, args.only.split(","), args.stats)


if __name__ == "__main__":
    main()
