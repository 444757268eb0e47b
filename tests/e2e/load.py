"""Load for the failure tests: JSON-mode senders and receivers sharing rooms,
and the check of the protocol's guarantees (README, "The protocol in brief") over what every receiver got.

Senders pace their messages (a load generator's rate, not synchronisation)
so that faults land in the middle of the stream.
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass, field

from tests.e2e.chatclient import ChatClient
from tests.e2e.window import window_losses


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
    notes: list[str] = field(default_factory=list)

    def ok(self) -> bool:
        return not (self.lost or self.duplicated or self.reordered or self.order_mismatches)

    def complete(self) -> bool:
        """Every delivery due arrived, but for the copies set apart as the kill -9 window's."""
        return self.delivered + self.window == self.expected

    def line(self, label: str) -> str:
        return (f"{label}: sent {self.sent}, delivered {self.delivered}/{self.expected}, lost {self.lost}, "
                f"duplicated {self.duplicated}, reordered {self.reordered}, "
                f"order mismatches {self.order_mismatches}, kill -9 window {self.window}")


class Receiver(threading.Thread):
    def __init__(self, client: ChatClient, room: str, want: int, deadline: float) -> None:
        super().__init__(daemon=True)
        self.client, self.room, self.want, self.deadline = client, room, want, deadline
        self.got: list[dict] = []

    def run(self) -> None:
        while len(self.got) < self.want:
            line = self.client.read_line(self.deadline)
            if line is None:
                return
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
        """Wait for the writers and receivers -> the verdict; `broker_killed`: the test killed a
        broker (kill -9), so losses of the window's shape are set apart (tests.e2e.window)."""
        end = time.monotonic() + timeout
        for t in self.writers + self.receivers:
            t.join(max(0.0, end - time.monotonic()))
        verdict = self.verdict()
        if broker_killed:
            verdict.window = self._window(verdict.expected)
            verdict.lost -= verdict.window
        return verdict

    def _window(self, due: int) -> int:
        alive = [r for r in self.receivers if not r.client.closed]
        every = {(self.nick(s), n) for s in range(len(self.senders)) for n in range(self.count)}
        got = {r: {(m["from"], int(m["text"].split()[1])) for m in r.got} for r in alive}
        gateway = {r: r.client.sock.getpeername()[1] for r in alive}
        origin = {(self.nick(s), n): c.sock.getpeername()[1]
                  for s, c in enumerate(self.senders) for n in range(self.count)}
        return window_losses({r: every - got[r] for r in alive}, got, gateway, origin, due)

    def verdict(self) -> Verdict:
        alive = [r for r in self.receivers if not r.client.closed]
        total = len(self.senders) * self.count
        v = Verdict(sent=total, expected=total * len(alive))
        reference: list[str] | None = None
        for r in alive:
            ids = [m["id"] for m in r.got]
            v.delivered += len(ids)
            v.duplicated += len(ids) - len(set(ids))
            v.lost += total - len(set(ids))
            for s in range(len(self.senders)):
                numbers = [int(m["text"].split()[1]) for m in r.got if m["from"] == self.nick(s)]
                v.reordered += sum(1 for a, b in zip(numbers, numbers[1:]) if b <= a)
            if reference is None:
                reference = ids
            elif _common_order(reference, ids) != _common_order(ids, reference):
                v.order_mismatches += 1
        return v


def _common_order(a: list[str], b: list[str]) -> list[str]:
    """`a` restricted to the ids that `b` has too (receivers may join or leave)."""
    keep = set(b)
    return [x for x in a if x in keep]
