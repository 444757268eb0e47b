"""Load for the failure tests: JSON-mode senders and receivers sharing rooms,
and the check of the protocol's guarantees (README, "The protocol in brief") over what every receiver got.

Senders pace their messages (a load generator's rate, not synchronisation)
so that faults land in the middle of the stream. `judge` is the verdict, pure: after a
broker's kill -9 it sets apart the window's two shapes as the chaos suite does
(tests.e2e.window.set_apart), and counts every other loss, duplicate or order difference.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from tests.e2e.chatclient import ChatClient
from tests.e2e.window import late_copies, set_apart, window_shaped

STOP_WITHIN = 0.1  # seconds a receiver takes at most to see `stop()` (its longest single read)


def wait_until(predicate, timeout: float, what: str, interval: float = 0.05) -> None:  # type: ignore[no-untyped-def]
    """Poll a condition until it holds; fail with `what` after `timeout`."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


def join_json(client: ChatClient, nick: str, room: str) -> None:
    client.send(f"/nick {nick}", "/json", f"/join {room}")
    client.expect_json(lambda o: o["type"] == "info" and o["text"].startswith("you joined"))


@dataclass
class Verdict:
    sent: int
    expected: int  # deliveries due to receivers whose connection stayed open
    delivered: int = 0
    lost: int = 0
    duplicated: int = 0
    reordered: int = 0
    order_mismatches: int = 0  # receivers whose order differs from the first one's
    window: int = 0  # copies lost in a broker's kill -9 window (tests.e2e.window), not in `lost`
    late: int = 0  # copies late in the window's other shape; their order mismatches not counted
    notes: list[str] = field(default_factory=list)

    def ok(self) -> bool:
        return not (self.lost or self.duplicated or self.reordered or self.order_mismatches)

    def complete(self) -> bool:
        """Every delivery due arrived, but for the copies set apart as lost in the kill -9 window."""
        return self.delivered + self.window == self.expected

    def line(self, label: str) -> str:
        return (f"{label}: sent {self.sent}, delivered {self.delivered}/{self.expected}, lost {self.lost}, "
                f"duplicated {self.duplicated}, reordered {self.reordered}, "
                f"order mismatches {self.order_mismatches}, kill -9 window: lost {self.window}, late {self.late}")


@dataclass(frozen=True)
class Seen:
    """One receiver whose connection stayed open: the room's messages it got, in order
    (JSON objects: id, from, text `<sender number> <n>`), and the gateway it is on."""

    got: Sequence[Mapping[str, Any]]
    gateway: object


def judge(seen: Sequence[Seen], homes: Mapping[str, object], count: int, broker_killed: bool = False) -> Verdict:
    """The verdict on what the receivers `seen` got of `count` numbered messages from each sender
    (`homes`: a sender's nick -> its gateway). `broker_killed`: the test killed a broker (kill -9),
    so the window's two shapes are set apart (tests.e2e.window.set_apart), and only they."""
    total = len(homes) * count
    v = Verdict(sent=total, expected=total * len(seen))
    for s in seen:
        _tally(v, s.got, homes)
    v.order_mismatches = sum(1 for s in seen[1:] if _ids(seen[0], s) != _ids(s, seen[0]))
    if broker_killed:
        _set_apart(v, seen, homes, count)
    return v


def _tally(v: Verdict, got: Sequence[Mapping[str, Any]], homes: Mapping[str, object]) -> None:
    ids = [m["id"] for m in got]
    v.delivered += len(ids)
    v.duplicated += len(ids) - len(set(ids))
    v.lost += v.sent - len(set(ids))
    for nick in homes:
        numbers = [_key(m)[1] for m in got if m["from"] == nick]
        v.reordered += sum(1 for a, b in zip(numbers, numbers[1:]) if b <= a)


def _key(message: Mapping[str, Any]) -> tuple[str, int]:
    return message["from"], int(message["text"].split()[1])


def _ids(one: Seen, other: Seen) -> list[str]:
    """`one`'s order restricted to the ids that `other` has too (receivers may join or leave)."""
    keep = {m["id"] for m in other.got}
    return [m["id"] for m in one.got if m["id"] in keep]


def _set_apart(v: Verdict, seen: Sequence[Seen], homes: Mapping[str, object], count: int) -> None:
    late = _late_copies(seen, homes) if v.order_mismatches else 0
    lost, v.late = set_apart(_window_shaped(seen, homes, count), late, v.expected)
    v.window, v.lost = lost, v.lost - lost
    if v.late:
        v.order_mismatches = 0  # all of them the window's late copies (tests.e2e.window.late_copies)


def _window_shaped(seen: Sequence[Seen], homes: Mapping[str, object], count: int) -> int:
    every = {(nick, n) for nick in homes for n in range(count)}
    got = {i: {_key(m) for m in s.got} for i, s in enumerate(seen)}
    gateway = {i: s.gateway for i, s in enumerate(seen)}
    origin = {(nick, n): home for nick, home in homes.items() for n in range(count)}
    return window_shaped({i: every - keys for i, keys in got.items()}, got, gateway, origin)


def _late_copies(seen: Sequence[Seen], homes: Mapping[str, object]) -> int:
    orders = {i: [m["id"] for m in s.got] for i, s in enumerate(seen)}
    gateway = {i: s.gateway for i, s in enumerate(seen)}
    origin = {m["id"]: homes.get(m["from"]) for s in seen for m in s.got}
    return late_copies(orders, gateway, origin) or 0


class Receiver(threading.Thread):
    """Reads the room's messages until it has `want` of them, the deadline passes, its connection
    closes, or `stop()`: a receiver still waiting (for copies the kill -9 window lost) stops before
    the test closes its socket, so no read runs on a closed socket."""

    def __init__(self, client: ChatClient, room: str, want: int, deadline: float) -> None:
        super().__init__(daemon=True)
        self.client, self.room, self.want, self.deadline = client, room, want, deadline
        self.gateway: int = client.sock.getpeername()[1]
        self.got: list[dict] = []
        self._stopping = threading.Event()

    def stop(self) -> None:
        self._stopping.set()
        self.join(5)

    def run(self) -> None:
        while len(self.got) < self.want and not self._stopping.is_set():
            line = self.client.read_line(min(self.deadline, time.monotonic() + STOP_WITHIN))
            if line is None:
                if self.client.closed or time.monotonic() >= self.deadline:
                    return
                continue
            if not line.startswith("{"):
                continue
            obj = json.loads(line)
            if obj.get("type") == "message" and obj.get("room") == self.room:
                self.got.append(obj)


class RoomLoad:
    """`senders` x `count` numbered messages into `room`, paced by `interval`."""

    def __init__(self, room: str, senders: list[ChatClient], listeners: list[ChatClient],
                 tag: str, count: int, interval: float) -> None:
        self.room, self.senders, self.listeners = room, senders, listeners
        self.tag, self.count, self.interval = tag, count, interval
        self.receivers: list[Receiver] = []
        self.writers: list[threading.Thread] = []
        self.homes: dict[str, object] = {}  # a sender's nick -> its gateway (the port it is on)
        self.send_failures = 0

    def nick(self, i: int) -> str:
        return f"s{i}{self.tag}"

    def join(self) -> None:
        for i, c in enumerate(self.senders):
            join_json(c, self.nick(i), self.room)
        for i, c in enumerate(self.listeners):
            join_json(c, f"l{i}{self.tag}", self.room)

    def start(self, deadline: float) -> None:
        want = len(self.senders) * self.count
        self.receivers = [Receiver(c, self.room, want, deadline) for c in self.senders + self.listeners]
        self.homes = {self.nick(i): r.gateway for i, r in enumerate(self.receivers[:len(self.senders)])}
        self.writers = [threading.Thread(target=self._send, args=(i, c), daemon=True)
                        for i, c in enumerate(self.senders)]
        for t in self.receivers + self.writers:
            t.start()

    def _send(self, i: int, client: ChatClient) -> None:
        for n in range(self.count):
            try:
                client.send(f"{i} {n}")
            except OSError:
                self.send_failures += 1
                return
            time.sleep(self.interval)  # pacing

    def delivered(self) -> int:
        return sum(len(r.got) for r in self.receivers)

    def finish(self, timeout: float, broker_killed: bool = False) -> Verdict:
        """Wait for the writers and receivers -> the verdict (`judge`) on the receivers whose
        connection stayed open; `broker_killed`: the test killed a broker (kill -9)."""
        end = time.monotonic() + timeout
        for t in self.writers + self.receivers:
            t.join(max(0.0, end - time.monotonic()))
        for r in self.receivers:
            r.stop()
        seen = [Seen(list(r.got), r.gateway) for r in self.receivers if not r.client.closed]
        return judge(seen, self.homes, self.count, broker_killed)
