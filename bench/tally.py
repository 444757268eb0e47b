"""What one receiver checks of every line it reads, without I/O.

A benchmark message's text is `<sid> <seq> <t>` in fixed-width lowercase
hex (`body`: 4, 8 and 8 digits, 22 bytes in all, as long as the decimal
`<sid> <seq> <t_ns>` it replaces): the sender's number, its sequence number
and the send time in microseconds since the flow's `epoch` (a
`time.perf_counter_ns` reading, the same clock in this one process). A line
that carries one ends in that text (IRC puts a colon before the sid).
Per line a `Tally` puts the latency into its array, in microseconds (the
whole microseconds from the epoch to now, less t: within a microsecond, on
average right; `Stats.in_ns` gives them in ns once measured, for the
report, which shows microseconds) and checks the sequence number against
the sender's `Track`; any other line (joins, quits, errors, an IRC
server's PING) counts as another line, is answered if it is a PING and
kept if it is one of the first few errors.

Per (receiver, sender) a track keeps the highest sequence number seen and
the set of numbers skipped below it: a number that fills a gap is a
reordering, a number seen before is a duplicate. What never arrived is
counted at the end, as expected deliveries minus distinct ones. A number
that is none of ours (more than MAX_GAP past the highest) makes its line
another line, not a set of a billion gaps; so does a send time that makes
no 64-bit latency.

Reading the lines is the load generator's hottest code (once per
delivery). Its meaning is the per-line parser's (`_lines`): the last three
space-separated words, `int(word, 16)` each (the sid's without its leading
colons). A read of BULK_MIN lines or more whose every line ends in the
fixed-width text exactly (`_bulk`: one check of the whole read, else the
per-line parser takes it) has its numbers read in C: the texts are cut
out and joined, turned into bytes by `bytes.fromhex` and into numbers by
an `array`; only the sequence check stays a loop. The counters, the
acknowledgements (an acknowledging receiver's senders' `acked`, once per
sender heard from) and the lookups are done once a read.
"""

from __future__ import annotations

import sys
from array import array
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from itertools import count, repeat
from operator import itemgetter, sub
from typing import Protocol

from bench.dialect import is_error, pong

MAX_ERRORS = 5  # error lines kept for the report
# a sender's sequence numbers jump by at most this much at one receiver (a run sends ~10^5 a sender): more is
# no number of ours, and its gap would be a set too large to keep
MAX_GAP = 1 << 20
MAX_WORDS = 4096  # the sid words a receiver remembers the track of (its senders': a few)
BODY = b"%04x %08x %08x"  # sid, seq, send time (us since the epoch)
BODY_LEN = 22
MAX_SID, MAX_FIELD = 0xFFFF, 0xFFFFFFFF  # what the widths hold
BULK_MIN = 8  # lines in a read from which the whole-read path pays
_PAD = b"0000"  # before each body: 24 hex digits, three 32-bit numbers a line
_STRIDE = len(_PAD) + BODY_LEN
_SPACE_AT = tuple(len(_PAD) + at for at, byte in enumerate(BODY % (0, 0, 0)) if byte == 32)  # in the joined text
_BODY_OF = (itemgetter(slice(-BODY_LEN, None)), itemgetter(slice(-BODY_LEN - 1, -1)))  # [ends in CR]
_SEP_OF = (itemgetter(-BODY_LEN - 1), itemgetter(-BODY_LEN - 2))  # the byte before the body
_PRE_OF = (itemgetter(-BODY_LEN - 2), itemgetter(-BODY_LEN - 3))  # and the one before it
_LAST = itemgetter(-1)
_SWAP = sys.byteorder == "little"  # fromhex gives big-endian numbers


def body(sid: int, seq: int, stamp_us: int) -> bytes:
    """A benchmark message's text (the senders write it with their prefix, see `bench.flows.Sender`)."""
    return BODY % (sid, seq, stamp_us)


@dataclass(slots=True)
class Stats:
    """What all receivers saw."""

    latencies: array = field(default_factory=lambda: array("q"))  # us, at receivers with delayed ACKs
    latencies_quickack: array = field(default_factory=lambda: array("q"))  # us, at TCP_QUICKACK receivers
    received: int = 0  # benchmark messages, counting duplicates
    duplicated: int = 0
    reordered: int = 0
    other_lines: int = 0  # anything else: joins, quits, errors
    errors: list[str] = field(default_factory=list)  # the first few error lines
    closed: list[str] = field(default_factory=list)  # why receivers were closed

    @staticmethod
    def in_ns(latencies_us: array) -> array:
        """Latencies in ns (what `bench.measure.add_latency` takes), after the measurement."""
        return array("q", map((1000).__mul__, latencies_us))


Track = list  # [highest seq seen, set of the seqs skipped below it]


class Acked(Protocol):
    acked: int  # messages of this sender its acknowledging receiver has seen in order


class Tally:
    """One receiver's checks; `feed(conn, lines, now)` (a `bench.loadgen` handler) takes the lines of one read."""

    __slots__ = ("acks", "by_word", "epoch", "lat", "reply", "stats", "tracks", "wake")

    def __init__(self, stats: Stats, quickack: bool, reply: Callable[[bytes], None], epoch: int,
                 acks: Mapping[int, Acked] | None = None, wake: set[int] | None = None) -> None:
        """`reply` writes to the server (a PONG); `epoch`: the flow's, in perf_counter ns; `acks`: the senders this
        receiver acknowledges, by sid: their `acked` follows what it has seen in order, and their sid goes into
        `wake` when it grows."""
        self.stats = stats
        self.lat = stats.latencies_quickack if quickack else stats.latencies
        self.reply = reply
        self.epoch = epoch
        self.acks = tuple((acks or {}).items())
        self.wake = wake if wake is not None else set()
        self.tracks: dict[int, Track] = {}  # sid -> its track
        self.by_word: dict[bytes, Track] = {}  # the sid's word as it arrives (b"0003", b":0003") -> its track

    def feed(self, conn: object, lines: list[bytes], now: int) -> None:
        """`conn` (unused: `reply` answers) makes this method the connection's handler itself: no call more a read."""
        base = (now - self.epoch) // 1000  # a latency is base - t, in us
        others = self._bulk(lines, base) if len(lines) >= BULK_MIN else None
        if others is None:
            others = self._lines(lines, base)
        self.stats.received += len(lines) - others
        for sid, sender in self.acks:
            heard = self.tracks.get(sid)
            if heard is not None and sender.acked != heard[0] + 1:
                sender.acked = heard[0] + 1
                self.wake.add(sid)

    def _lines(self, lines: list[bytes], base: int) -> int:
        """Line by line (what defines the meaning) -> the other lines among them."""
        append, track_of = self.lat.append, self.by_word.get
        others = 0
        for line in lines:
            try:
                _, sid_w, seq_w, stamp_w = line.rsplit(b" ", 3)
                seq = int(seq_w, 16)
                track = track_of(sid_w) or self._track(sid_w)
                append(base - int(stamp_w, 16))
            except (ValueError, OverflowError):  # fewer than 4 words, one of the last 3 no number, no 64-bit latency
                others += 1
                self._other(line)
                continue
            if seq == track[0] + 1:
                track[0] = seq
            elif not out_of_line(self.stats, track, seq):
                self.lat.pop()
                others += 1
                self._other(line)
        return others

    def _bulk(self, lines: list[bytes], base: int) -> int | None:
        """The whole read at once, if every line ends in a body exactly -> the other lines; None: it does not."""
        numbers = _numbers(lines)
        if numbers is None:
            return None
        tracks, stats = self.tracks, self.stats
        get = tracks.get
        rejected: list[int] = []
        for i, sid, seq in zip(count(), numbers[0::3], numbers[1::3]):
            track = get(sid)
            if track is None:
                track = tracks[sid] = [-1, set()]
            if seq == track[0] + 1:
                track[0] = seq
            elif not out_of_line(stats, track, seq):
                rejected.append(i)
        latencies = map(sub, repeat(base), numbers[2::3])
        if not rejected:
            self.lat.extend(latencies)
            return 0
        kept = list(latencies)
        for i in reversed(rejected):
            del kept[i]
            self._other(lines[i])
        self.lat.extend(kept)
        return len(rejected)

    def _track(self, sid_w: bytes) -> Track:
        """The track of the sender a word names (ValueError: no number); remembered for the word, up to
        MAX_WORDS words (garbage names many)."""
        sid = int(sid_w.lstrip(b":"), 16)
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


def _numbers(lines: list[bytes]) -> array | None:
    """sid, seq, t of every line, in one array, if every line ends in ` BODY` or ` :BODY` (all alike, and all
    with a CR before the LF or none): what `Tally._lines` would read of them; None if any line does not."""
    n = len(lines)
    cr = 1 if lines[0][-1:] == b"\r" else 0
    if min(map(len, lines)) < BODY_LEN + 1 + cr:
        return None
    if cr and bytes(map(_LAST, lines)) != b"\r" * n:
        return None
    joined = _PAD + _PAD.join(map(_BODY_OF[cr], lines))
    spaces = b" " * n
    if any(joined[at::_STRIDE] != spaces for at in _SPACE_AT):
        return None
    seps = bytes(map(_SEP_OF[cr], lines))
    if seps != spaces and (seps != b":" * n or min(map(len, lines)) < BODY_LEN + 2 + cr
                           or bytes(map(_PRE_OF[cr], lines)) != spaces):
        return None
    try:  # any other byte (whitespace too, which fromhex skips) leaves fewer digits than 24 a line, or none
        raw = bytes.fromhex(joined.decode("ascii"))
    except ValueError:
        return None
    if len(raw) != 12 * n:
        return None
    numbers = array("I", raw)
    if _SWAP:
        numbers.byteswap()
    return numbers
