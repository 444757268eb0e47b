"""A connection's side of the conversation with the broker, as pure code.

One event per connection is in flight at a time: the next goes out when
the broker's answer (the `Mark` of that event) comes back, and carries
every line that arrived meanwhile. That keeps a connection's events in
order whatever happens behind the broker (a worker dies, the broker
restarts) and batches lines under load by itself. An event not answered
within the resend timeout goes out again, unchanged: the workers replay
it idempotently and gateways drop what they have already shown.

The session outlives the socket: its `Disconnected` event must be
answered too, so that a connection's departure is never lost.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

from protocol import codec
from protocol.messages import ClientEvent, Connected, Disconnected, Lines


@dataclass(slots=True)
class InFlight:
    seq: int
    frames: list[bytes]  # [key, body] (protocol.codec): what goes to the broker, again if need be
    sent: float  # when it last went out: the resend clock
    first_sent: float  # when it first went out: the latency clock


class Session:
    __slots__ = ("cid", "finished", "in_flight", "leaving", "next_seq", "pending")

    def __init__(self, cid: str, addr: str, now: float) -> None:
        self.cid = cid
        self.next_seq = 1
        self.pending: list[str] = []
        self.leaving: str | None = None  # the reason, once the client is gone
        self.finished = False  # Disconnected answered: nothing more to say
        self.in_flight: InFlight | None = None
        self._send(Connected(cid, 0, addr), now)

    def _send(self, event: ClientEvent, now: float) -> list[bytes]:
        frames = codec.event_frames(event)
        self.in_flight = InFlight(event.seq, frames, now, now)
        return frames

    def add_lines(self, lines: list[str]) -> None:
        self.pending.extend(lines)

    def leave(self, reason: str) -> None:
        if self.leaving is None:
            self.leaving = reason

    def next_frame(self, now: float) -> list[bytes] | None:
        """The next event to send, if none is in flight."""
        if self.in_flight is not None or self.finished:
            return None
        if self.pending:
            lines, self.pending = tuple(self.pending), []
            seq, self.next_seq = self.next_seq, self.next_seq + len(lines)
            return self._send(Lines(self.cid, seq, lines), now)
        if self.leaving is not None:
            return self._send(Disconnected(self.cid, self.next_seq, self.leaving), now)
        return None

    def answered(self, seq: int) -> bool:
        """The broker answered event `seq` -> True if that was the one in flight."""
        if self.in_flight is None or self.in_flight.seq != seq:
            return False
        if self.leaving is not None and seq == self.next_seq and not self.pending:
            self.finished = True
        self.in_flight = None
        return True

    def abandon(self) -> None:
        """Nothing more to send: the gateway was fenced (its connections were freed), or a
        worker's Close said the chat forgot this connection already (it departed)."""
        self.finished = True
        self.in_flight = None
        self.pending.clear()

    def overdue(self, now: float, timeout: float) -> list[bytes] | None:
        """The in-flight frames again if it waited past `timeout` (and restart its clock)."""
        if self.in_flight is None or now - self.in_flight.sent < timeout:
            return None
        self.in_flight.sent = now
        return self.in_flight.frames

    def resend(self, now: float) -> list[bytes] | None:
        """The in-flight frames, now (the broker restarted)."""
        if self.in_flight is None:
            return None
        self.in_flight.sent = now
        return self.in_flight.frames


class SeenEvents:
    """Which events this gateway has shown: replays are dropped.

    A connection's events reach every gateway in the order they were
    handled (one in flight at a time, all through the broker's one
    publisher), so it is enough to keep the highest seq seen per connection:
    anything at or below it is a replay. The `capacity` most recently
    active connections are kept; memory stays bounded.
    """

    __slots__ = ("_last", "capacity")

    def __init__(self, capacity: int = 100_000) -> None:
        self.capacity = capacity
        self._last: OrderedDict[str, int] = OrderedDict()  # least recently active first

    def first_time(self, cid: str, seq: int) -> bool:
        last = self._last.get(cid)
        if last is not None:
            if seq <= last:
                return False
            self._last.move_to_end(cid)
        elif len(self._last) >= self.capacity:
            self._last.popitem(last=False)
        self._last[cid] = seq
        return True
