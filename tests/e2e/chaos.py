"""The chaos suite's load and its verdict.

JSON-mode clients on both gateways send numbered messages (`<tag> <n>`)
into shared rooms and to private partners while a fault is injected. A
message counts as *accepted* when its sender got it back (JSON mode echoes
a sender's own messages with their id): that is the server's word that it
was handled. Then, for every receiver whose connection stayed open:
- lost: accepted messages it should have had and did not get;
- duplicated: ids it got twice;
- reordered: a sender's numbers not increasing;
- order mismatches: two receivers of a room that saw its messages in
  different orders;
- unexplained: messages neither accepted nor answered by an error
  (a silent loss at the sender's side);
- pause: the longest time between two deliveries to any live receiver,
  from the first to the last (how long the fault stopped the chat).

After a Redis failover, `nick_violations` checks the nickname invariant in
the new master: conn:<cid> has nick N exactly when nick:<lower N> is cid.
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass, field

import redis

from tests.e2e.chatclient import ChatClient
from tests.e2e.window import late_copies, set_apart, window_shaped


class Collector(threading.Thread):
    """Reads one client's JSON lines into a list until told to stop."""

    def __init__(self, client: ChatClient) -> None:
        super().__init__(daemon=True)
        self.client = client
        self.objects: list[dict] = []
        self.stamps: list[float] = []  # when each of `objects` arrived (monotonic)
        self.stop_at = time.monotonic() + 120
        self.last_line = time.monotonic()

    def run(self) -> None:
        while time.monotonic() < self.stop_at:
            line = self.client.read_line(min(self.stop_at, time.monotonic() + 0.2))
            if line is None:
                if self.client.closed:
                    return
                continue
            self.last_line = time.monotonic()
            if line.startswith("{"):
                self.objects.append(json.loads(line))
                self.stamps.append(self.last_line)

    def stop(self) -> None:
        self.stop_at = 0


@dataclass
class Member:
    nick: str
    client: ChatClient
    collector: Collector
    sends: int = 0  # numbered messages it sent

    @property
    def alive(self) -> bool:
        return not self.client.closed


@dataclass
class Stream:
    """One sender's numbered messages to a room (`#...`) or a nick."""

    sender: Member
    target: str
    tag: str
    count: int

    def line(self, n: int) -> str:
        text = f"{self.tag} {n}"
        return text if self.target.startswith("#") else f"/msg {self.target} {text}"

    def mine(self, obj: dict) -> bool:
        return obj.get("from") == self.sender.nick and obj.get("text", "").split(" ")[0] == self.tag and (
            obj.get("room") == self.target if self.target.startswith("#") else obj.get("type") == "private"
        )


@dataclass
class Verdict:
    fault: str
    sent: int = 0
    accepted: int = 0
    refused: int = 0  # error lines senders got
    delivered: int = 0
    lost: int = 0
    duplicated: int = 0
    reordered: int = 0
    order_mismatches: int = 0
    unexplained: int = 0
    pause: float = 0.0  # seconds: the longest gap between deliveries
    window: int = 0  # copies lost in a broker's kill -9 window, not in `lost`, or late in its other shape
    # (tests.e2e.window), their order mismatches not in `order_mismatches`
    notes: list[str] = field(default_factory=list)

    def ok(self) -> bool:
        return not (self.lost or self.duplicated or self.reordered or self.order_mismatches or self.unexplained)

    def row(self) -> str:
        return (f"| {self.fault} | {self.sent} | {self.accepted} | {self.refused} | {self.delivered} | "
                f"{self.lost} | {self.duplicated} | {self.reordered} | {self.order_mismatches} | "
                f"{self.unexplained} | {self.pause:.2f} | {self.window} |")


HEADER = ("| fault | sent | accepted | refused (told) | delivered | lost | duplicated | reordered | "
          "order mismatches | unexplained | pause (s) | kill -9 window |\n|---|---|---|---|---|---|---|---|---|---|---|---|")


def numbers(objs: list[dict], stream: Stream) -> list[int]:
    return [int(o["text"].split(" ")[1]) for o in objs if stream.mine(o)]


def judge(fault: str, streams: list[Stream], rooms: dict[str, list[Member]],
          partners: dict[str, Member], broker_killed: bool = False) -> Verdict:
    """Check what every live receiver got against what the senders had accepted; `broker_killed`:
    the phase killed a broker (kill -9), so losses of the window's shape are set apart
    (tests.e2e.window)."""
    v = Verdict(fault)
    shaped = 0
    for s in streams:
        v.sent += s.sender.sends
        accepted = set(numbers(s.sender.collector.objects, s))
        v.accepted += len(accepted)
        errors = sum(1 for o in s.sender.collector.objects if o.get("type") == "error")
        v.refused += errors
        if s.sender.alive and not errors:
            v.unexplained += s.sender.sends - len(accepted)
        receivers = rooms[s.target] if s.target.startswith("#") else [partners[s.target]]
        for r in receivers:
            if r is s.sender or not r.alive:
                continue
            got = numbers(r.collector.objects, s)
            v.delivered += len(got)
            v.duplicated += len(got) - len(set(got))
            v.reordered += sum(1 for a, b in zip(got, got[1:]) if b <= a)
            v.lost += len(accepted - set(got))
        if broker_killed:
            shaped += _window_shaped(s, accepted, receivers)
    late = held = 0  # copies that came late in the window's other shape, and the mismatches they explain
    for members in rooms.values():
        alive = [m for m in members if m.alive]
        mismatches = _order_mismatches(alive)
        copies = _late_copies(alive) if mismatches and broker_killed else None
        if copies is None:
            v.order_mismatches += mismatches
        else:
            late, held = late + copies, held + mismatches
    if broker_killed:
        lost, late = set_apart(shaped, late, v.delivered + v.lost)
        if not late:
            v.order_mismatches += held  # not the window: too many copies, or none came late
        v.window = lost + late
        v.lost -= lost
    live = {id(m): m for m in [*(m for ms in rooms.values() for m in ms), *partners.values()] if m.alive}
    v.pause = longest_pause(list(live.values()))
    return v


def _window_shaped(s: Stream, accepted: set[int], receivers: list[Member]) -> int:
    """The copies of `s`'s accepted messages its live receivers miss in the kill -9 window's shape
    (the sender's own copy shows what reached its gateway)."""
    live = [r for r in receivers if r is not s.sender and r.alive]
    if not s.sender.alive or not live:
        return 0
    got = {id(r): set(numbers(r.collector.objects, s)) for r in live} | {id(s.sender): accepted}
    gateway = {id(m): m.client.sock.getpeername()[1] for m in [s.sender, *live]}
    origin = {n: gateway[id(s.sender)] for n in accepted}
    return window_shaped({id(r): accepted - got[id(r)] for r in live}, got, gateway, origin)


def _late_copies(members: list[Member]) -> int | None:
    """The late copies that explain `members`' different orders of a room as the kill -9
    window's other shape (tests.e2e.window.late_copies), or None."""
    gateway = {id(m): m.client.sock.getpeername()[1] for m in members}
    home = {m.nick: gateway[id(m)] for m in members}
    origin: dict[str, object] = {}
    orders: dict[int, list[str]] = {}
    for m in members:
        shown = [o for o in m.collector.objects if o.get("type") in ("message", "action")]
        orders[id(m)] = [o["id"] for o in shown]
        origin.update((o["id"], home.get(o.get("from", ""))) for o in shown)
    return late_copies(orders, gateway, origin)


def longest_pause(members: list[Member]) -> float:
    """The longest gap between two chat deliveries to any of `members`, first to last."""
    times = sorted(t for m in members for t, o in zip(m.collector.stamps, m.collector.objects, strict=False)
                   if o.get("type") in ("message", "private"))
    return max((b - a for a, b in zip(times, times[1:])), default=0.0)


def _order_mismatches(members: list[Member]) -> int:
    orders = [[o["id"] for o in m.collector.objects if o.get("type") in ("message", "action")]
              for m in members]
    if not orders:
        return 0
    reference = orders[0]
    mismatches = 0
    for other in orders[1:]:
        common = set(reference) & set(other)
        if [i for i in reference if i in common] != [i for i in other if i in common]:
            mismatches += 1
    return mismatches


def send_streams(streams: list[Stream], interval: float) -> list[threading.Thread]:
    """One thread a sender, pacing its messages (a load generator's rate)."""
    def run(stream: Stream) -> None:
        for n in range(stream.count):
            try:
                stream.sender.client.send(stream.line(n))
            except OSError:
                return
            stream.sender.sends += 1
            time.sleep(interval)

    threads = [threading.Thread(target=run, args=(s,), daemon=True) for s in streams]
    for t in threads:
        t.start()
    return threads


def wait_quiet(members: list[Member], quiet: float, limit: float) -> None:
    """Wait until no member received anything for `quiet` seconds (at most `limit`)."""
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        newest = max(m.collector.last_line for m in members)
        if time.monotonic() - newest >= quiet:
            return
        time.sleep(0.1)


# one connection's side of the invariant, read at once: a departure (which frees both keys in one
# script) or a /nick is then wholly before or wholly after the read -> {exists, nick, its holder}
_CONN_SIDE = """
local nick = redis.call('HGET', KEYS[1], 'nick')
if not nick then return {redis.call('EXISTS', KEYS[1])} end
return {1, nick, redis.call('GET', ARGV[1] .. string.lower(nick))}
"""
# one nick's side, read at once -> {} if released, else {cid, that connection's nick}
_NICK_SIDE = """
local cid = redis.call('GET', KEYS[1])
if not cid then return {} end
return {cid, redis.call('HGET', ARGV[1] .. cid, 'nick')}
"""


def nick_violations(db: redis.Redis, prefix: str) -> list[str]:
    """Every break of the nickname invariant: a connection whose nick does not point
    back to it, a nick held for a connection that does not have it (two holders
    of one nick show as one of these). Each key's check reads both sides in one
    script, so a connection that leaves while the scan runs is no violation."""
    bad: list[str] = []
    conn, nick_key = f"{prefix}conn:", f"{prefix}nick:"
    for key in db.scan_iter(f"{conn}*", count=1000):
        if db.type(key) != "hash":
            continue  # conn:<cid>:rooms
        cid = key[len(conn):]
        exists, *named = db.eval(_CONN_SIDE, 1, key, nick_key)
        if not exists:
            continue  # left since the scan saw it
        nick, holder = named if named else (None, None)
        if not nick or holder != cid:
            bad.append(f"{cid} has nick {nick!r}, which points to {holder!r}")
    for key in db.scan_iter(f"{nick_key}*", count=1000):
        side = db.eval(_NICK_SIDE, 1, key, conn)
        if not side:
            continue  # released since the scan saw it (a connection left meanwhile)
        cid, nick = side[0], side[1] if len(side) > 1 else None
        if nick is None or nick.lower() != key[len(nick_key):]:
            bad.append(f"{key} points to {cid}, whose nick is {nick!r}")
    return bad
