"""The load generator's per-receiver checks (bench.tally) count exactly what the per-line parser it had
counted (now in hex, its times in microseconds), on the same byte streams cut anywhere, whether a read
takes the whole-read path or goes line by line; and its loop reads lines over real sockets."""

from __future__ import annotations

import contextlib
import random
import socket
import time
from array import array
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from bench.loadgen import MAX_HELD, Conn, Loop, cut_lines
from bench.tally import BULK_MIN, MAX_GAP, Stats, Tally, _numbers, body

EPOCH = 10**13
NOW = EPOCH + 10**10  # 10 s into the flow
SENT = 10**7  # us: a send time 3 s before NOW


# --- the parser bench.flows had before (per line, per read), kept here as the reference ----------------------


def reference(lines: list[bytes], now: int = NOW) -> tuple[Stats, list[bytes]]:
    """bench.flows' per-line parser as it was, reading hex and microseconds since EPOCH."""
    stats, tracks, replies = Stats(), {}, []
    for line in lines:
        words = line.rsplit(b" ", 3)
        try:
            sid, seq, stamp = int(words[1].lstrip(b":"), 16), int(words[2], 16), int(words[3], 16)
        except (IndexError, ValueError):
            stats.other_lines += 1
            if line.startswith(b"PING"):
                replies.append(b"PONG" + line[4:].rstrip(b"\r") + b"\r\n")
            continue
        try:
            stats.latencies.append((now - EPOCH) // 1000 - stamp)
        except OverflowError:  # this parser raised it (and the load generator stopped): now another line
            stats.other_lines += 1
            continue
        track = tracks.setdefault(sid, [-1, set()])
        if seq > track[0] + MAX_GAP:  # it kept such a gap in a set (and hung): now another line
            stats.latencies.pop()
            stats.other_lines += 1
            continue
        stats.received += 1
        if seq == track[0] + 1:
            track[0] = seq
        elif seq > track[0]:
            track[1].update(range(track[0] + 1, seq))
            track[0] = seq
        elif seq in track[1]:
            track[1].discard(seq)
            stats.reordered += 1
        else:
            stats.duplicated += 1
    return stats, replies


def counts(stats: Stats) -> tuple:
    return (stats.received, stats.duplicated, stats.reordered, stats.other_lines,
            list(stats.latencies) + list(stats.latencies_quickack))


# --- byte streams ----------------------------------------------------------------------------------------------

FORMS = (
    lambda sid, seq, t: b"#room nick%d %s" % (sid, body(sid, seq, t)),  # text mode, a room
    lambda sid, seq, t: b"*nick%d* %s" % (sid, body(sid, seq, t)),  # text mode, private
    lambda sid, seq, t: b":n%d!u@h PRIVMSG #room :%s\r" % (sid, body(sid, seq, t)),  # IRC
    lambda sid, seq, t: b"message - %s" % body(sid, seq, t),  # WebSocket, rendered by bench.wsframe
)
STRAYS = (
    b"* alice joined #room", b"PING :irc.local\r", b"! unknown command", b":irc.local 433 * nick :in use\r",
    b"", b"\r", b"1 2 3", b" 1 2 3", b"x 1 2", b"x 1 2 3 4 five", b"x +1 2 3", b"x 1 -2 3", b"x 1 2 0x3",
    b"x :::4 0 3", b"x 0_4 1 3", b"x 1\t2 3 4", b"x \xff\xfe 2 3", b"x 1 2 fffffffffffffffffffffff",
    b"x  1 2 3", b"x 4 2 3 ", b"x 04 1 5", b"x 1 2 \xd9\xa1", b"x 0001 2 3", b" 0002 00000000 00000001",
    b":0002 00000000 00000001", b"x ::0002 00000000 00000001", b"x 0002 0000000G 00000001",
    b"x 0002 000000 0 00000001", b"x 0002 00000000 0000000A", b"x 0002\t00000000 00000001",
    b"x 0002 00000000 00000001\r\r", b"x:0002 00000000 00000001", b"x 0002 00000000  0000001",
)


def stream(rng: random.Random, form, lines: int = 600, senders: int = 5) -> list[bytes]:
    """Benchmark lines of a few senders, some lost, duplicated, reordered, among stray lines."""
    seqs = [0] * senders
    out: list[bytes] = []
    while len(out) < lines:
        roll = rng.random()
        if roll < 0.08:
            out.append(rng.choice(STRAYS))
            continue
        sid = rng.randrange(senders)
        seq = seqs[sid]
        seqs[sid] += 1
        if roll < 0.11:
            continue  # lost
        line = form(sid, seq, SENT + rng.randrange(10**5))
        if roll < 0.13 and out:
            out.insert(rng.randrange(len(out)), line)  # reordered (or a gap that closes later)
        else:
            out.append(line)
        if roll > 0.98:
            out.append(line)  # duplicated
    return out


def cut(data: bytes, rng: random.Random) -> list[bytes]:
    """`data` in reads cut anywhere: a byte, a line and a half, many lines."""
    reads, at = [], 0
    while at < len(data):
        size = rng.choice((1, 2, 7, 30, 61, 200, 1000, 5000))
        reads.append(data[at:at + size])
        at += size
    return reads


def tally_over(reads: list[bytes], quickack: bool = False) -> tuple[Stats, list[bytes]]:
    stats, replies = Stats(), []
    tally = Tally(stats, quickack, replies.append, EPOCH)
    held = b""
    for data in reads:
        lines, held = cut_lines(held, data)
        tally.feed(None, lines, NOW)
    return stats, replies


def msg(sid: int, seq: int, sent_us: int = SENT) -> bytes:
    return b"#r n " + body(sid, seq, sent_us)


def latency(sent_us: int = SENT) -> int:
    return (NOW - EPOCH) // 1000 - sent_us


def lf(lines: list[bytes]) -> bytes:
    return b"".join(line + b"\n" for line in lines)


@pytest.mark.parametrize("form", range(len(FORMS)))
@pytest.mark.parametrize("seed", range(6))
def test_the_same_counts_as_the_per_line_parser_on_streams_cut_anywhere(form: int, seed: int) -> None:
    rng = random.Random(seed * 10 + form)
    lines = stream(rng, FORMS[form])
    data = lf(lines)
    want, want_replies = reference(lines)
    got, replies = tally_over(cut(data, rng), quickack=seed % 2 == 1)
    assert counts(got) == counts(want)
    assert replies == want_replies
    assert want.received > 400 and want.other_lines > 0  # the stream did test something


@pytest.mark.parametrize("form", range(len(FORMS)))
def test_whole_reads_of_clean_lines_take_the_bulk_path_and_count_the_same(form: int) -> None:
    rng = random.Random(form)
    lines = [line for line in stream(rng, FORMS[form], lines=3000) if line not in STRAYS]
    assert _numbers(lines[:BULK_MIN]) is not None  # clean lines are read at once
    want, _ = reference(lines)
    reads = [lf(lines[at:at + size]) for at, size in zip(range(0, len(lines), 60), [60] * 50)]
    got, _ = tally_over(reads)
    assert counts(got) == counts(want) and want.received > 2000 and want.reordered and want.duplicated


@pytest.mark.parametrize("stray", range(len(STRAYS)))
def test_one_stray_line_in_a_whole_read_counts_as_line_by_line(stray: int) -> None:
    rng = random.Random(stray)
    for form in FORMS:
        lines = [line for line in stream(rng, form, lines=40) if line not in STRAYS]
        lines.insert(rng.randrange(len(lines)), STRAYS[stray])
        want, _ = reference(lines)
        got, _ = tally_over([lf(lines)])
        assert counts(got) == counts(want), (form, STRAYS[stray])


def test_near_misses_of_the_body_are_read_as_line_by_line() -> None:
    """Reads that look clean but for one byte: the whole-read check sends them line by line."""
    good = [msg(1, seq) for seq in range(20)]
    bad = (b"#r n 0001 00000014 0000000A", b"#r n 0001 00000014 00000000\r", b"#r n\t0001 00000014 00000000",
           b" 0001 00000014 00000000", b":0001 00000014 00000000", b"#r n :0001 00000014 00000000",
           b"#r n 0001 0000001400000000", b"#r n 0001 00000014 0000 000", b"#r n 00001 0000014 00000000",
           b"#r n 0001 000000 14 0000000")
    for odd in bad:
        for at in (0, 7, 20):
            lines = [*good[:at], odd, *good[at:]]
            assert counts(tally_over([lf(lines)])[0]) == counts(reference(lines)[0]), (odd, at)
    irc = [b":n!u@h PRIVMSG #r :" + body(1, seq, SENT) + b"\r" for seq in range(20)]
    for lines in ([*irc[:5], irc[5][:-1], *irc[6:]], [*irc[:5], good[5], *irc[6:]]):  # one without CR, one text
        assert counts(tally_over([lf(lines)])[0]) == counts(reference(lines)[0])
    assert _numbers(irc) is not None and _numbers([*irc[:5], irc[5][:-1], *irc[6:]]) is None


def test_a_stream_of_every_dialect_and_stray_at_once() -> None:
    rng = random.Random(99)
    lines = [line for form in FORMS for line in stream(rng, form, lines=200)] + list(STRAYS)
    rng.shuffle(lines)
    data = lf(lines)
    want, _ = reference(lines)
    for reads in ([data], cut(data, rng), [bytes([b]) for b in data]):
        got, _ = tally_over(reads)
        assert counts(got) == counts(want)


def test_loss_duplication_and_reordering_are_counted() -> None:
    lines = [msg(sid, seq) for sid, seq in
             ((0, 0), (0, 1), (0, 3), (1, 0), (0, 2), (0, 3), (0, 5), (1, 1), (1, 1), (0, 4), (1, 3))]
    for reads in ([lf(lines)], [lf(lines[:4]), lf(lines[4:])]):  # whole read, and two short ones
        stats, _ = tally_over(reads)
        assert (stats.received, stats.reordered, stats.duplicated) == (11, 2, 2)
        assert list(stats.latencies) == [latency()] * 11
        # 0 sent 0..5, all came (2 and 4 late); 1 sent 0..3, its 2 never came: 9 distinct of 10, one lost
        assert stats.received - stats.duplicated == 10 - 1


def test_a_line_split_across_reads_is_one_line() -> None:
    assert cut_lines(b"", b"a 1 2 3\n#r n 1 ") == ([b"a 1 2 3"], b"#r n 1 ")
    assert cut_lines(b"#r n 1 ", b"2 3\n") == ([b"#r n 1 2 3"], b"")
    assert cut_lines(b"held", b"") == ([], b"held")
    assert cut_lines(b"", b"\n\n") == ([b"", b""], b"")
    line = msg(1, 0, 123456) + b"\n"
    stats, _ = tally_over([line[:7], line[7:20], line[20:]])
    assert stats.received == 1 and list(stats.latencies) == [latency(123456)]


@pytest.mark.parametrize("read", [1, BULK_MIN + 2])
def test_a_sequence_number_far_past_the_highest_is_another_line_not_a_huge_gap(read: int) -> None:
    """A difference from the per-line parser: it would have kept 10^9 numbers in a set."""
    lines = [msg(0, 0), msg(0, 10**9), msg(0, 2 + MAX_GAP), msg(0, MAX_GAP), msg(0, 1)]
    lines += [msg(3, seq) for seq in range(BULK_MIN)]
    started = time.monotonic()
    stats, _ = tally_over([lf(lines[at:at + read]) for at in range(0, len(lines), read)])
    assert time.monotonic() - started < 5.0
    assert (stats.received, stats.other_lines, stats.duplicated, stats.reordered) == (3 + BULK_MIN, 2, 0, 1)
    assert list(stats.latencies) == [latency()] * (3 + BULK_MIN)


def test_garbage_loses_nothing_and_crashes_nothing() -> None:
    rng = random.Random(7)
    junk = bytes(rng.randrange(256) for _ in range(200_000))
    good = lf([msg(2, seq) for seq in range(1000)])
    stats, _ = tally_over(cut(junk + b"\n" + good + junk[:100] + b"\n", rng))
    assert stats.received >= 1000  # the good lines (garbage may hold a line that reads as one)
    assert stats.other_lines > 0


@dataclass
class Acks:
    acked: int = 0


def test_acknowledgements_once_a_read_for_the_senders_heard() -> None:
    senders, wake = {0: Acks(), 1: Acks()}, set()
    tally = Tally(Stats(), False, lambda _: None, EPOCH, senders, wake)
    tally.feed(None, [msg(0, 0), msg(0, 1), msg(2, 0)], NOW)
    assert (senders[0].acked, senders[1].acked, wake) == (2, 0, {0})
    wake.clear()
    tally.feed(None, [msg(1, 0), msg(0, 3)], NOW)
    assert (senders[0].acked, senders[1].acked, wake) == (4, 1, {0, 1})  # 0 skipped 2: up to its highest, as before
    wake.clear()
    tally.feed(None, [msg(1, seq) for seq in range(1, 1 + BULK_MIN)] + [msg(0, 3)], NOW)
    assert (senders[0].acked, senders[1].acked, wake) == (4, 1 + BULK_MIN, {1})  # 0's duplicate: no wake


def test_errors_and_pings_among_the_lines() -> None:
    stats, replies = Stats(), []
    tally = Tally(stats, False, replies.append, EPOCH)
    tally.feed(None, [b"PING :abc\r", b"! no such room", b":irc 482 n #r :not op\r", msg(0, 0)], NOW)
    assert replies == [b"PONG :abc\r\n"]
    assert stats.errors == ["! no such room", ":irc 482 n #r :not op\r"]
    assert (stats.received, stats.other_lines) == (1, 3)


def test_quickack_receivers_keep_their_latencies_apart() -> None:
    stats = Stats()
    Tally(stats, True, lambda _: None, EPOCH).feed(None, [msg(0, 0, 7)], NOW)
    Tally(stats, False, lambda _: None, EPOCH).feed(None, [msg(0, 0, 9)], NOW)
    assert stats.latencies_quickack == array("q", [latency(7)]) and stats.latencies == array("q", [latency(9)])


def test_a_latency_is_within_a_microsecond_of_the_time_since_sending() -> None:
    epoch = 5_000_000_123
    stats = Stats()
    tally = Tally(stats, False, lambda _: None, epoch)
    for sent_ns, now in ((epoch + 2_000_000_777, epoch + 3_000_000_776), (epoch + 999, epoch + 1_000_000_000)):
        tally.feed(None, [msg(0, len(stats.latencies), (sent_ns - epoch) // 1000)], now)
        assert abs(stats.latencies[-1] * 1000 - (now - sent_ns)) < 1000
    assert list(Stats.in_ns(stats.latencies)) == [us * 1000 for us in stats.latencies]


# --- the loop, over real sockets ---------------------------------------------------------------------------


@dataclass
class Served:
    """A load-generator connection on its loop, the server's end of it, and what it saw."""
    loop: Loop
    conn: Conn
    server: socket.socket
    got: list[bytes]
    closed: list[str]


@contextlib.contextmanager
def served() -> Iterator[Served]:
    """A Conn connected to a listener of ours on loopback; everything closed after."""
    listener = socket.create_server(("127.0.0.1", 0))
    loop = Loop()
    server: socket.socket | None = None
    try:
        got: list[bytes] = []
        closed: list[str] = []
        conn = Conn(loop, listener.getsockname()[:2])
        conn.handler = lambda _conn, lines, _now: got.extend(lines)
        conn.on_close = lambda c: closed.append(c.closed or "?")
        server, _ = listener.accept()
        assert loop.run(lambda: conn.connected, time.monotonic() + 10)
        yield Served(loop, conn, server, got, closed)
    finally:
        if server is not None:
            server.close()
        loop.close()
        listener.close()


def test_the_loop_reads_lines_cut_anywhere_and_sees_the_server_close() -> None:
    with served() as s:
        s.conn.quickack = True
        payload = b"".join(b"#r n 0 %d 1\n" % i for i in range(3000))
        for at in range(0, len(payload), 4093):
            s.server.sendall(payload[at:at + 4093])
        assert s.loop.run(lambda: len(s.got) == 3000, time.monotonic() + 10), len(s.got)
        assert s.got == payload.split(b"\n")[:-1]
        s.conn.send(b"hello\n")
        s.server.settimeout(10)
        assert s.server.recv(100) == b"hello\n"
        s.server.close()
        assert s.loop.run(lambda: bool(s.closed), time.monotonic() + 10)
        assert s.closed == ["closed by the server"] and not s.loop.by_fd and not s.loop.conns


def test_a_refused_connection_closes_with_its_reason() -> None:
    free = socket.create_server(("127.0.0.1", 0))
    addr = free.getsockname()[:2]
    free.close()  # nothing listens there now
    loop = Loop()
    try:
        closed: list[str] = []
        conn = Conn(loop, addr)
        conn.on_close = lambda c: closed.append(c.closed or "?")
        assert loop.run(lambda: bool(closed), time.monotonic() + 10)
        assert closed[0].startswith("connect: ECONNREFUSED") and not loop.by_fd
    finally:
        loop.close()


def test_a_server_that_never_ends_its_line_is_cut_not_held_without_bound() -> None:
    with served() as s:
        s.server.setblocking(False)
        s.server.sendall(b"one line\n")
        chunk, sent = b"x" * 65536, 0
        deadline = time.monotonic() + 20
        while not s.closed and sent <= 4 * MAX_HELD and time.monotonic() < deadline:
            with contextlib.suppress(BlockingIOError):
                sent += s.server.send(chunk)
            s.loop.run(lambda: bool(s.closed), time.monotonic() + 0.01)
        assert s.closed == [f"a line of more than {MAX_HELD} bytes from the server"], (s.closed, sent)
        assert s.got == [b"one line"] and len(s.conn.inbuf) <= MAX_HELD + 65536
