"""The benchmark's configuration: workload shapes and where to run them."""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

ALL_WORKLOADS = ("W1", "W2", "W3", "W4", "W5")  # the default; W6 (100k connections) is opt-in
KNOWN_WORKLOADS = (*ALL_WORKLOADS, "W6")
# W6 and W3 first: they measure RSS growth, which the memory a process kept from earlier workloads would hide;
# W5 last: its thousands of short connections leave TIME_WAIT sockets behind.
RUN_ORDER = ("W6", "W3", "W1", "W2", "W4", "W5")


@dataclass(frozen=True, slots=True)
class Shape:
    rooms: int = 10  # W1/W2: rooms ...
    members: int = 50  # ... of this many members
    senders: int = 5  # senders per room
    window: int = 32  # W1/W4: messages a sender keeps in flight
    duration: float = 10.0  # seconds each workload sends
    levels: tuple[float, ...] = (0.3, 0.7)  # W2: shares of the W1 send rate
    fixed_rates: tuple[float, ...] = (1000.0,)  # W2: and these offered msgs/s, the same for every server
    idle: int = 10_000  # W3: idle registered connections
    idle_room_size: int = 20  # W3: members per room (a join is announced to the room)
    pairs: int = 50  # W4: pairs of private correspondents
    churners: int = 32  # W5: clients cycling at once
    w6: int = 100_000  # W6: idle registered connections
    w6_probe: int = 1000  # W6: members of the room the probe message goes to
    w6_per_process: int | None = None  # W6: connections a gateway / load generator takes (None: the fd limit)
    drain: float = 15.0  # longest wait for what is in flight after sending stops

    def checked(self) -> Shape:
        if self.members < 2 or self.rooms < 1 or self.senders < 1:
            raise ValueError("W1 needs at least 1 room of 2 members and 1 sender")
        if not 2 <= self.w6_probe <= self.w6:
            raise ValueError("W6's probe room needs 2 members or more, and no more than its connections")
        # one member of each room must not send: it acknowledges the senders' messages
        return replace(self, senders=min(self.senders, self.members - 1))


QUICK = Shape(rooms=2, members=5, senders=2, window=8, duration=0.6, idle=200, idle_room_size=10,
              pairs=4, churners=4, drain=5.0, fixed_rates=(200.0,), w6=300, w6_probe=30, w6_per_process=100)


@dataclass(frozen=True, slots=True)
class BenchConfig:
    shape: Shape
    workloads: tuple[str, ...] = ALL_WORKLOADS
    workers: int = 2
    gateways: int = 1
    target: str | None = None  # HOST:PORT[,...] of a running stack; None: start one
    stack_pid: int | None = None  # the running stack's root process, for its CPU figures
    baseline: bool = False
    peers: tuple[str, ...] = ()  # C IRC servers to run too (bench.peers)
    doors: tuple[str, ...] = ()  # the stack's other doors to run too: "irc" (stack-irc), "ws" (stack-ws)
    variants: tuple[str, ...] = ()  # the stack without CURVE ("nocurve"), with TLS clients ("tls")
    out: Path = Path("bench-results")
    quick: bool = False


DOOR_NAMES = ("irc", "ws")


def parse_doors(spec: str) -> tuple[str, ...]:
    """'ws,irc' -> ('irc', 'ws'): the stack's doors to run beside its line protocol, in this order."""
    names = {item.strip().lower() for item in spec.split(",") if item.strip()}
    unknown = sorted(names - set(DOOR_NAMES))
    if unknown:
        raise ValueError(f"unknown door(s) {', '.join(unknown)}; choose from {', '.join(DOOR_NAMES)}")
    return tuple(name for name in DOOR_NAMES if name in names)


def parse_workloads(spec: str) -> tuple[str, ...]:
    """'w1,W3' -> ('W3', 'W1'): the chosen workloads, in the order they run (RUN_ORDER)."""
    names = {item.strip().upper() for item in spec.split(",") if item.strip()}
    unknown = sorted(names - set(KNOWN_WORKLOADS))
    if unknown:
        raise ValueError(f"unknown workload(s) {', '.join(unknown)}; choose from {', '.join(KNOWN_WORKLOADS)}")
    if not names:
        raise ValueError("no workload chosen")
    return tuple(name for name in RUN_ORDER if name in names)
