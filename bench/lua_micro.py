"""Micro-benchmark of the Lua scripts: Valkey's own CPU per room message, churn cycle and private message.

    python -m bench.lua_micro [--events 3000] [--repeat 3]

Drives the scripts of `workers.scripts` through `workers.store.Store` against a real Valkey
(`stack.valkey.start_valkey`), in the shapes of chat-bench's workloads:

- say: W1's, 10 rooms of 50 members over 2 gateways, 5 senders a room, events of 14 room
  messages (W1's mean is ~13.7), one script call an event;
- dispatch: say's rooms as a worker's dispatch brings them: 5 events of 7 room messages (what W1
  sends through the whole stack), each event's run (`Store.say_run`), in one round trip;
- churn: W5's cycle, a connect, an event of a /nick and a /join of one of 4 rooms, a /quit;
- register: W3's registration, a connect and an event of a /nick and a /join, rooms filled to 20
  members one after the other (a joiner finds 9.5 members on average);
- private: W4's, pairs on two gateways, events of 4 private messages.

For each it prints Valkey's CPU (user + sys, `INFO cpu`) and the EVALSHA time of
`INFO commandstats` per unit (a line, a cycle), best of `--repeat` runs. On a shared machine
both vary by half from run to run; `--callgrind` runs Valkey under valgrind's callgrind and
counts the instructions Valkey executes for the work alone (setup excluded), the same on every
run (slow: use a few hundred events). It runs against the tree it is started from: the same file
run with an older checkout first on PYTHONPATH gives the before figures.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import redis

from stack.children import Child, stop
from stack.valkey import _wait_for_ping, start_valkey, valkey_binary
from workers.store import Store

ROOMS, MEMBERS, SENDERS, LINES = 10, 50, 5, 14
GATEWAYS = ("gw0.bench", "gw1.bench")
CHURN_ROOMS = 4
PRIVATE_LINES = 4
REGISTER_ROOM = 20  # W3's rooms
DISPATCH, DISPATCH_LINES = 5, 7  # events a dispatch, room messages an event (W1 in the whole stack)
TEXT = "the quick brown fox jumps over the lazy d"


@dataclass(frozen=True, slots=True)
class Cost:
    """Valkey's CPU and EVALSHA time per unit, in microseconds, and its instructions (callgrind)."""

    cpu_us: float
    evalsha_us: float
    calls: float
    instructions: float = 0.0


@dataclass(frozen=True, slots=True)
class Callgrind:
    """A Valkey run under callgrind, instrumented only between `start` and `stop`."""

    pid: int
    out_dir: Path

    def _control(self, *args: str) -> None:
        subprocess.run(["callgrind_control", *args, str(self.pid)], check=True, capture_output=True, timeout=60)

    def start(self) -> None:
        self._control("--zero")
        self._control("--instr=on")

    def stop(self) -> int:
        """-> the instructions executed since `start`."""
        before = set(self.out_dir.glob("cg.out.*"))
        self._control("--instr=off")
        self._control("--dump")
        (dump,) = set(self.out_dir.glob("cg.out.*")) - before
        match = re.search(r"^totals: (\d+)", dump.read_text(), re.MULTILINE)
        return int(match.group(1)) if match else 0


def start_callgrind_valkey(data_dir: Path) -> tuple[Child, str, Callgrind]:
    data_dir.mkdir(parents=True)
    sock = data_dir / "valkey.sock"
    argv = ["valgrind", "--tool=callgrind", "--instr-atstart=no", f"--callgrind-out-file={data_dir}/cg.out",
            valkey_binary(), "--port", "0", "--unixsocket", str(sock), "--dir", str(data_dir), "--save", "",
            "--appendonly", "yes",  # as `stack.valkey` runs it: the AOF is part of every write
            "--logfile", str(data_dir / "valkey.log")]
    child = Child("valkey", subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                             stderr=subprocess.DEVNULL, start_new_session=True))
    url = f"unix://{sock}"
    _wait_for_ping(child, url, 120.0)
    return child, url, Callgrind(child.pid, data_dir)


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


def measured(client: redis.Redis, units: int, work: Callable[[], None], counter: Callgrind | None) -> Cost:
    """Valkey's cost of `work`, which does `units` units."""
    before = _cpu(client)
    if counter is not None:
        counter.start()
    work()
    instructions = counter.stop() if counter is not None else 0
    after = _cpu(client)
    return Cost((after[0] - before[0]) * 1e6 / units, (after[1] - before[1]) / units,
                (after[2] - before[2]) / units, instructions / units)


def _connected(store: Store, cid: str, nick: str, rooms: list[str]) -> Conn:
    conn = Conn(cid)
    store.run_one(store.connect(cid, cid.rpartition(":")[0], "127.0.0.1"))
    store.run_one(store.set_nick((conn.next_event(), conn.next_line()), cid, nick))
    for room in rooms:
        store.run_one(store.join((conn.next_event(), conn.next_line()), cid, room))
    return conn


def _room_senders(store: Store) -> list[Conn]:
    """W1's rooms, their members registered -> the senders."""
    senders: list[Conn] = []
    for r in range(ROOMS):
        for m in range(MEMBERS):
            conn = _connected(store, f"{GATEWAYS[m % 2]}:r{r}m{m}", f"u{r}m{m}", [f"#room{r}"])
            if m < SENDERS:
                senders.append(conn)
    return senders


def say_bench(store: Store, client: redis.Redis, events: int, counter: Callgrind | None) -> Cost:
    senders = _room_senders(store)

    def work() -> None:
        for n in range(events):
            conn = senders[n % len(senders)]
            event = conn.next_event()
            store.run([store.say((event, conn.next_line()), conn.cid, None, TEXT, f"{conn.cid}/{conn.line}",
                                 1.7e9 + n, "message") for _ in range(LINES)])

    return measured(client, events * LINES, work, counter)


def dispatch_bench(store: Store, client: redis.Redis, events: int, counter: Callgrind | None) -> Cost:
    """say's rooms, as a worker's dispatch brings them: DISPATCH events of DISPATCH_LINES room messages,
    each of its own sender, each event's lines one run (`Store.say_run`), all in one round trip."""
    senders = _room_senders(store)

    def work() -> None:
        for n in range(0, events, DISPATCH):
            runs = []
            for k in range(DISPATCH):
                conn = senders[(n + k) % len(senders)]
                event = conn.next_event()
                lines = [(conn.next_line(), "", TEXT, "message") for _ in range(DISPATCH_LINES)]
                runs.append(store.say_run(conn.cid, event, repr(1.7e9 + n), lines))
            store.run(runs)

    return measured(client, events * DISPATCH_LINES, work, counter)


def churn_bench(store: Store, client: redis.Redis, cycles: int, counter: Callgrind | None) -> Cost:
    for r in range(CHURN_ROOMS):  # rooms with members to announce to
        for m in range(3):
            _connected(store, f"{GATEWAYS[m % 2]}:c{r}m{m}", f"c{r}m{m}", [f"#churn{r}"])

    def work() -> None:
        for n in range(cycles):
            gateway = GATEWAYS[n % 2]
            conn = Conn(f"{gateway}:x{n}")
            store.run_one(store.connect(conn.cid, gateway, "127.0.0.1"))
            event = conn.next_event()  # /nick and /join in one event, as W5 sends them
            store.run([store.set_nick((event, conn.next_line()), conn.cid, f"x{n}"),
                       store.join((event, conn.next_line()), conn.cid, f"#churn{n % CHURN_ROOMS}")])
            store.run_one(store.leave((conn.next_event(), conn.next_line()), conn.cid))

    return measured(client, cycles, work, counter)


def register_bench(store: Store, client: redis.Redis, count: int, counter: Callgrind | None) -> Cost:
    """W3's registrations: a connect, then /nick and /join in one event, into rooms of REGISTER_ROOM."""
    def work() -> None:
        for n in range(count):
            gateway = GATEWAYS[n % 2]
            conn = Conn(f"{gateway}:i{n}")
            store.run_one(store.connect(conn.cid, gateway, "127.0.0.1"))
            event = conn.next_event()
            store.run([store.set_nick((event, conn.next_line()), conn.cid, f"i{n}"),
                       store.join((event, conn.next_line()), conn.cid, f"#idle-{n // REGISTER_ROOM}")])

    return measured(client, count, work, counter)


def private_bench(store: Store, client: redis.Redis, events: int, counter: Callgrind | None) -> Cost:
    pairs = [(_connected(store, f"{GATEWAYS[0]}:p{n}", f"pa{n}", []),
              _connected(store, f"{GATEWAYS[1]}:q{n}", f"pb{n}", [])) for n in range(50)]

    def work() -> None:
        for n in range(events):
            a, b = pairs[n % len(pairs)]
            sender, target = (a, f"pb{n % len(pairs)}") if n % 2 else (b, f"pa{n % len(pairs)}")
            event = sender.next_event()
            store.run([store.private((event, sender.next_line()), sender.cid, target, 1.7e9 + n)
                       for _ in range(PRIVATE_LINES)])

    return measured(client, events * PRIVATE_LINES, work, counter)


# name -> (the bench, its unit, events per unit of --events, units an event)
BENCHES: dict[str, tuple[Callable[[Store, redis.Redis, int, Callgrind | None], Cost], str, int, int]] = {
    "say": (say_bench, "room message", 1, LINES),
    "dispatch": (dispatch_bench, "room message", 1, DISPATCH_LINES),
    "churn": (churn_bench, "W5 cycle", 4, 1),
    "private": (private_bench, "private message", 1, PRIVATE_LINES),
    "register": (register_bench, "W3 registration", 1, 1),
}


def _print_commandstats(client: redis.Redis, units: int, unit: str) -> None:
    stats: dict[str, Any] = client.info("commandstats")  # type: ignore[assignment]
    for name, stat in sorted(stats.items(), key=lambda kv: -int(kv[1]["usec"])):
        print(f"    {name[8:]:14} {int(stat['calls']) / units:7.3f} calls {int(stat['usec']) / units:8.2f} us "
              f"per {unit} ({float(stat['usec_per_call']):.2f} us a call)")


def run(events: int, repeat: int, only: list[str], stats: bool, callgrind: bool) -> None:
    with tempfile.TemporaryDirectory(prefix="lua-micro-") as tmp:
        counter: Callgrind | None = None
        if callgrind:
            child, url, counter = start_callgrind_valkey(Path(tmp) / "valkey")
        else:
            child, url = start_valkey(Path(tmp) / "valkey")
        try:
            client = redis.Redis.from_url(url, decode_responses=True)
            for name in only:
                bench, unit, divisor, per_event = BENCHES[name]
                units = max(1, events // divisor)
                costs = []
                for n in range(repeat):
                    client.config_resetstat()
                    costs.append(bench(Store(client, prefix=f"b{name}{n}:"), client, units, counter))
                best = min(costs, key=lambda c: c.cpu_us)
                if counter is not None:
                    print(f"{name:8} Valkey instructions per {unit}: "
                          + " ".join(f"{c.instructions / 1000:.1f}k" for c in costs))
                    continue
                print(f"{name:8} Valkey CPU {best.cpu_us:7.2f} us, EVALSHA {best.evalsha_us:7.2f} us "
                      f"({best.calls:.3f} calls) per {unit}; all CPU: "
                      + " ".join(f"{c.cpu_us:.2f}" for c in costs))
                if stats:  # the last run's, its setup included
                    _print_commandstats(client, units * per_event, unit)
            client.close()
        finally:
            stop(child)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=3000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--only", default="say,dispatch,churn,private,register")
    parser.add_argument("--stats", action="store_true", help="print the last run's commandstats per unit")
    parser.add_argument("--callgrind", action="store_true", help="count Valkey's instructions (valgrind)")
    args = parser.parse_args()
    run(args.events, args.repeat, args.only.split(","), args.stats, args.callgrind)


if __name__ == "__main__":
    main()
