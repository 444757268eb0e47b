"""Message flows: senders that stamp every message, receivers that check them.

A message's text is `<sid> <seq> <t>` (`bench.tally.body`: fixed-width
hex): the sender's number, its own sequence number (0, 1, 2 ...) and the
send time in microseconds since the flow's `epoch` (`time.perf_counter_ns`).
Senders and receivers live in this one process, so the receiver reads
the same clock. A room message arrives as `#room <nick> <sid> <seq> <t>`,
a private one as `*nick* <sid> <seq> <t>`, an IRC one as
`:nick!u@h PRIVMSG target :<sid> <seq> <t>`: the last three words are ours.
Latencies are kept apart for receivers with TCP_QUICKACK (`Conn.quickack`).

Each receiver checks what it reads with a `bench.tally.Tally`: per
(receiver, sender) the sequence numbers (lost, reordered, duplicated), per
line the latency.

A `Flow` drives the senders, either closed-loop (`run_window`: each
sender keeps at most `window` messages in flight, counted at its one
acknowledging receiver) or open-loop (`run_rate`: a fixed number of
messages a second over all senders in turn), and `drain` waits for what
is in flight. Every message is its own write, as lines of separate
people arrive: batching them is the server's business.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass

from bench.loadgen import Conn, Loop
from bench.tally import BODY, MAX_SID, Stats, Tally

LINE = b"%s" + BODY + b"%s"  # prefix, body, end


@dataclass(slots=True)
class Sender:
    conn: Conn
    sid: int
    prefix: bytes  # b"" for the current room, b"/msg nick " for a private message (`Dialect.to_room/to_nick`)
    fanout: int  # deliveries expected for each message
    seq: int = 0  # messages sent so far
    acked: int = 0  # messages seen by the acknowledging receiver
    end: bytes = b"\n"  # IRC: CRLF

    def send(self, count: int, stamp_us: int) -> None:
        """One write a message, as separate clients' lines arrive: batching them is the server's job."""
        seq, line, write = self.seq, LINE, self.conn.send
        prefix, sid, end = self.prefix, self.sid, self.end
        for s in range(seq, seq + count):
            write(line % (prefix, sid, s, stamp_us, end))
        self.seq = seq + count


class Flow:
    def __init__(self, loop: Loop, senders: Sequence[Sender], receivers: Sequence[Conn],
                 ackers: dict[int, Conn], label: str) -> None:
        """`ackers[sid]` is the receiver whose arrivals count as acknowledgements for `sid`."""
        if len(senders) > MAX_SID + 1:
            raise ValueError(f"at most {MAX_SID + 1} senders: a sid has 4 hex digits")
        self.loop = loop
        self.senders = list(senders)
        self.label = label
        self.stats = Stats()
        self.epoch = time.perf_counter_ns()  # send times count microseconds from here (32 bits: 71 minutes)
        self._wake: set[int] = set()
        self._acks_by_conn: dict[int, set[int]] = {}
        for sid, conn in ackers.items():
            self._acks_by_conn.setdefault(id(conn), set()).add(sid)
        for conn in receivers:
            self._attach(conn)
        for sender in self.senders:
            if sender.conn not in receivers:
                sender.conn.on_close = self._on_close

    @property
    def sent(self) -> int:
        return sum(s.seq for s in self.senders)

    @property
    def expected(self) -> int:
        return sum(s.seq * s.fanout for s in self.senders)

    def _attach(self, conn: Conn) -> None:
        acks = {sid: self.senders[sid] for sid in self._acks_by_conn.get(id(conn), ())}
        conn.handler = Tally(self.stats, conn.quickack, conn.send, self.epoch, acks, self._wake).feed
        conn.on_close = self._on_close

    def _on_close(self, conn: Conn) -> None:
        self.stats.closed.append(conn.closed or "?")

    # --- driving ------------------------------------------------------------------

    def run_window(self, window: int, duration: float) -> float:
        """Closed loop for `duration` seconds -> the seconds it really ran."""
        self._wake.update(range(len(self.senders)))

        def tick(now: int) -> float | None:
            wake, senders, epoch = self._wake, self.senders, self.epoch
            for sid in wake:
                sender = senders[sid]
                room = window - (sender.seq - sender.acked)
                if room > 0:
                    sender.send(room, (time.perf_counter_ns() - epoch) // 1000)  # us since the epoch
            wake.clear()
            return None

        return self._run(duration, tick)

    def run_rate(self, rate: float, duration: float, max_in_flight: int = 2000) -> tuple[float, dict[str, float]]:
        """Open loop at `rate` messages a second -> (seconds, {skipped, max lag in ms}).

        Nothing here ever waits for the server (sends are non-blocking), so
        a message is stamped when it is really written: the only lateness
        is the generator's own (timer granularity, being busy reading), and
        it is reported as the lag, not added to the server's latency.
        """
        start = time.perf_counter_ns()
        interval = 1e9 / rate
        state = {"due": 0, "skipped": 0, "lag": 0}
        senders = self.senders

        def tick(now: int) -> float | None:
            due = int((now - start) / interval) + 1
            k = state["due"]
            if k < due:
                state["lag"] = max(state["lag"], now - (start + int(k * interval)))
            while k < due:
                sender = senders[k % len(senders)]
                if sender.seq - sender.acked < max_in_flight:
                    sender.send(1, (time.perf_counter_ns() - self.epoch) // 1000)  # us since the epoch
                else:
                    state["skipped"] += 1
                k += 1
            state["due"] = k
            return max(0.0, (start + k * interval - time.perf_counter_ns()) / 1e9)

        took = self._run(duration, tick)
        return took, {"skipped_backlog": state["skipped"], "max_send_lag_ms": round(state["lag"] / 1e6, 2)}

    def _run(self, duration: float, tick) -> float:  # type: ignore[no-untyped-def]
        began = time.monotonic()
        self.loop.run(lambda: False, began + duration, tick, self._progress(began))
        return time.monotonic() - began

    def _progress(self, began: float):  # type: ignore[no-untyped-def]
        def show() -> None:
            took = max(time.monotonic() - began, 1e-9)
            print(f"  {self.label}: {took:4.1f}s sent {self.sent:,} ({self.sent / took:,.0f}/s), "
                  f"deliveries {self.stats.received:,} ({self.stats.received / took:,.0f}/s)",
                  file=sys.stderr, flush=True)
        return show

    def drain(self, quiet: float = 2.0, limit: float = 15.0) -> float:
        """Read until every expected delivery came, or nothing came for `quiet` s -> seconds."""
        began = time.monotonic()
        last = {"received": -1, "at": began}

        def done() -> bool:
            now = time.monotonic()
            if self.stats.received != last["received"]:
                last["received"], last["at"] = self.stats.received, now
            return self.stats.received - self.stats.duplicated >= self.expected or now - last["at"] > quiet

        self.loop.run(done, began + limit, None, self._progress(began))
        return time.monotonic() - began

    def outcome(self) -> dict[str, int]:
        stats = self.stats
        distinct = stats.received - stats.duplicated
        return {"sent": self.sent, "expected": self.expected, "received": stats.received,
                "lost": max(0, self.expected - distinct), "reordered": stats.reordered,
                "duplicated": stats.duplicated, "other_lines": stats.other_lines,
                "receivers_closed": len(stats.closed)}
