"""What one receiver checks of every line it reads, without I/O.

A benchmark line ends in `<sid> <seq> <t_ns>` (the last three words; IRC
puts a colon before the sid): the sender's number, its sequence number and
the send time (`time.perf_counter_ns`, the same clock in this one process).
Per line a `Tally` puts the latency `now - t_ns` into its array and checks
the sequence number against the sender's `Track`; any other line (joins,
quits, errors, an IRC server's PING) counts as another line, is answered if
it is a PING and kept if it is one of the first few errors.

Per (receiver, sender) a track keeps the highest sequence number seen and
the set of numbers skipped below it: a number that fills a gap is a
reordering, a number seen before is a duplicate. What never arrived is
counted at the end, as expected deliveries minus distinct ones. A number
that is none of ours (more than MAX_GAP past the highest) makes
its line another line, not a set of a billion gaps; so does a send time
that is no 64-bit number (which the array of latencies cannot hold).

The loop over a read's lines is the load generator's hottest code (once per
delivery), so what can be done once a read is: the counters, the
acknowledgements (`on_ack`, once per sender heard from), the lookups; and
the sender's word finds its track in one lookup, parsed once per receiver
(`int(word.lstrip(b":"))`, the same number as for every line before).
"""

from __future__ import annotations

from array import array
from collections.abc import Callable, Collection
from dataclasses import dataclass, field

from bench.dialect import is_error, pong

MAX_ERRORS = 5  # error lines kept for the report
# a sender's sequence numbers jump by at most this much at one receiver (a run sends ~10^5 a sender): more is
# no number of ours, and its gap would be a set too large to keep
MAX_GAP = 1 << 20
MAX_WORDS = 4096  # the sid words a receiver remembers the track of (its senders': a few)


@dataclass(slots=True)
class Stats:
    """What all receivers saw."""

    latencies: array = field(default_factory=lambda: array("q"))  # ns, at receivers with delayed ACKs
    latencies_quickack: array = field(default_factory=lambda: array("q"))  # ns, at TCP_QUICKACK receivers
    received: int = 0  # benchmark messages, counting duplicates
    duplicated: int = 0
    reordered: int = 0
    other_lines: int = 0  # anything else: joins, quits, errors
    errors: list[str] = field(default_factory=list)  # the first few error lines
    closed: list[str] = field(default_factory=list)  # why receivers were closed


Track = list  # [highest seq seen, set of the seqs skipped below it]


class Tally:
    """One receiver's checks; `feed(conn, lines, now)` (a `bench.loadgen` handler) takes the lines of one read."""

    __slots__ = ("acks", "by_word", "lat", "on_ack", "reply", "stats", "tracks")

    def __init__(self, stats: Stats, quickack: bool, reply: Callable[[bytes], None],
                 acks: Collection[int] = (), on_ack: Callable[[int, int], None] | None = None) -> None:
        """`reply` writes to the server (a PONG); `on_ack(sid, count)`: this receiver has seen `count` messages
        of sender `sid` in order, for each sid in `acks` it heard from."""
        self.stats = stats
        self.lat = stats.latencies_quickack if quickack else stats.latencies
        self.reply = reply
        self.acks = tuple(acks)
        self.on_ack = on_ack
        self.tracks: dict[int, Track] = {}  # sid -> its track
        self.by_word: dict[bytes, Track] = {}  # the sid's word as it arrives (b"3", b":3") -> its track

    def feed(self, conn: object, lines: list[bytes], now: int) -> None:
        """`conn` (unused: `reply` answers) makes this method the connection's handler itself: no call more a read."""
        append, track_of = self.lat.append, self.by_word.get
        others = 0
        for line in lines:
            try:
                _, sid_w, seq_w, stamp_w = line.rsplit(b" ", 3)
                seq = int(seq_w)
                track = track_of(sid_w) or self._track(sid_w)
                append(now - int(stamp_w))
            except (ValueError, OverflowError):  # fewer than 4 words, one of the last 3 no number, a time past 2^63
                others += 1
                self._other(line)
                continue
            if seq == track[0] + 1:
                track[0] = seq
            elif not out_of_line(self.stats, track, seq):
                self.lat.pop()
                others += 1
                self._other(line)
        self.stats.received += len(lines) - others
        if self.on_ack is not None:
            for sid in self.acks:
                heard = self.tracks.get(sid)
                if heard is not None:
                    self.on_ack(sid, heard[0] + 1)

    def _track(self, sid_w: bytes) -> Track:
        """The track of the sender a word names (ValueError: no number); remembered for the word, up to
        MAX_WORDS words (garbage names many)."""
        sid = int(sid_w.lstrip(b":"))
        track = self.tracks.get(sid)
        if track is None:
            track = self.tracks[sid] = [-1, set()]
        if len(self.by_word) < MAX_WORDS:
            self.by_word[sid_w] = track
        return track

    def _other(self, line: bytes) -> None:
        stats = self.stats
        stats.other_lines += 1
        answer = pong(line)
        if answer is not None:  # an IRC server checking we are alive
            self.reply(answer)
        elif (line.startswith(b"! ") or is_error(line)) and len(stats.errors) < MAX_ERRORS:
            stats.errors.append(line.decode(errors="replace"))


def out_of_line(stats: Stats, track: Track, seq: int) -> bool:
    """`seq` is not the successor of the highest seen: a gap opens, one closes (reordered), or a duplicate
    -> True; False for no sequence number of ours (more than MAX_GAP past the highest): another line."""
    highest, skipped = track
    if seq > highest:
        if seq - highest > MAX_GAP:
            return False
        skipped.update(range(highest + 1, seq))
        track[0] = seq
    elif seq in skipped:
        skipped.discard(seq)
        stats.reordered += 1
    else:
        stats.duplicated += 1
    return True
