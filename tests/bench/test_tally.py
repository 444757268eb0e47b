"""The load generator's per-receiver checks (bench.tally) count exactly what the per-line parser they replace
counted, on the same byte streams cut anywhere; and its loop reads lines over real sockets."""

from __future__ import annotations

import random
import socket
import time
from array import array

import pytest

from bench.loadgen import Conn, Loop, cut_lines
from bench.tally import MAX_GAP, Stats, Tally

NOW = 10**13


# --- the parser bench.flows had before (per line, per read), kept here as the reference ----------------------


def reference(lines: list[bytes], now: int = NOW) -> tuple[Stats, list[bytes]]:
    stats, tracks, replies = Stats(), {}, []
    for line in lines:
        words = line.rsplit(b" ", 3)
        try:
            sid, seq, stamp = int(words[1].lstrip(b":")), int(words[2]), int(words[3])
        except (IndexError, ValueError):
            stats.other_lines += 1
            if line.startswith(b"PING"):
                replies.append(b"PONG" + line[4:].rstrip(b"\r") + b"\r\n")
            continue
        try:
            stats.latencies.append(now - stamp)
        except OverflowError:  # this parser raised it (and the load generator stopped): now another line
            stats.other_lines += 1
            continue
        stats.received += 1
        track = tracks.setdefault(sid, [-1, set()])
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
    lambda sid, seq, t: b"#room nick%d %d %d %d" % (sid, sid, seq, t),  # text mode, a room
    lambda sid, seq, t: b"*nick%d* %d %d %d" % (sid, sid, seq, t),  # text mode, private
    lambda sid, seq, t: b":n%d!u@h PRIVMSG #room :%d %d %d\r" % (sid, sid, seq, t),  # IRC
    lambda sid, seq, t: b"message - %d %d %d" % (sid, seq, t),  # WebSocket, rendered by bench.wsframe
)
STRAYS = (
    b"* alice joined #room", b"PING :irc.local\r", b"! unknown command", b":irc.local 433 * nick :in use\r",
    b"", b"\r", b"1 2 3", b" 1 2 3", b"x 1 2", b"x 1 2 3 4 five", b"x +1 2 3", b"x 1 -2 3", b"x 1 2 0x3",
    b"x :::4 0 3", b"x 0_4 1 3", b"x 1\t2 3 4", b"x \xff\xfe 2 3", b"x 1 2 99999999999999999999999999",
    b"x  1 2 3", b"x 4 2 3 ", b"x 04 1 5", b"x 1 2 \xd9\xa1",
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
        line = form(sid, seq, NOW - rng.randrange(10**8))
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
    tally = Tally(stats, quickack, replies.append)
    held = b""
    for data in reads:
        lines, held = cut_lines(held, data)
        tally.feed(None, lines, NOW)
    return stats, replies


@pytest.mark.parametrize("form", range(len(FORMS)))
@pytest.mark.parametrize("seed", range(6))
def test_the_same_counts_as_the_per_line_parser_on_streams_cut_anywhere(form: int, seed: int) -> None:
    rng = random.Random(seed * 10 + form)
    lines = stream(rng, FORMS[form])
    data = b"".join(line + b"\n" for line in lines)
    want, want_replies = reference(lines)
    got, replies = tally_over(cut(data, rng), quickack=seed % 2 == 1)
    assert counts(got) == counts(want)
    assert replies == want_replies
    assert want.received > 400 and want.other_lines > 0  # the stream did test something


def test_a_stream_of_every_dialect_and_stray_at_once() -> None:
    rng = random.Random(99)
    lines = [line for form in FORMS for line in stream(rng, form, lines=200)] + list(STRAYS)
    rng.shuffle(lines)
    data = b"".join(line + b"\n" for line in lines)
    want, _ = reference(lines)
    for reads in ([data], cut(data, rng), [bytes([b]) for b in data]):
        got, _ = tally_over(reads)
        assert counts(got) == counts(want)


def test_loss_duplication_and_reordering_are_counted() -> None:
    lines = [b"#r n %d %d %d" % (sid, seq, NOW - 5) for sid, seq in
             ((0, 0), (0, 1), (0, 3), (1, 0), (0, 2), (0, 3), (0, 5), (1, 1), (1, 1), (0, 4), (1, 3))]
    stats, _ = tally_over([b"".join(line + b"\n" for line in lines)])
    assert (stats.received, stats.reordered, stats.duplicated) == (11, 2, 2)
    assert list(stats.latencies) == [5] * 11
    # 0 sent 0..5, all came (2 and 4 late); 1 sent 0..3, its 2 never came: 9 distinct of 10, one lost
    assert stats.received - stats.duplicated == 10 - 1


def test_a_line_split_across_reads_is_one_line() -> None:
    assert cut_lines(b"", b"a 1 2 3\n#r n 1 ") == ([b"a 1 2 3"], b"#r n 1 ")
    assert cut_lines(b"#r n 1 ", b"2 3\n") == ([b"#r n 1 2 3"], b"")
    assert cut_lines(b"held", b"") == ([], b"held")
    assert cut_lines(b"", b"\n\n") == ([b"", b""], b"")
    stats, _ = tally_over([b"#r n 1 0", b" 12345", b"6\n"])
    assert stats.received == 1 and list(stats.latencies) == [NOW - 123456]


def test_a_sequence_number_far_past_the_highest_is_another_line_not_a_huge_gap() -> None:
    """The one difference from the per-line parser: it would have kept 10^12 numbers in a set."""
    lines = [b"#r n 0 0 1", b"#r n 0 %d 1" % (10**12), b"#r n 0 %d 1" % (2 + MAX_GAP), b"#r n 0 %d 1" % MAX_GAP,
             b"#r n 0 1 1"]
    started = time.monotonic()
    stats, _ = tally_over([b"".join(line + b"\n" for line in lines)])
    assert time.monotonic() - started < 5.0
    assert (stats.received, stats.other_lines, stats.duplicated, stats.reordered) == (3, 2, 0, 1)
    assert list(stats.latencies) == [NOW - 1] * 3


def test_garbage_loses_nothing_and_crashes_nothing() -> None:
    rng = random.Random(7)
    junk = bytes(rng.randrange(256) for _ in range(200_000))
    good = b"".join(b"#r n 2 %d 10\n" % seq for seq in range(1000))
    stats, _ = tally_over(cut(junk + b"\n" + good + junk[:100] + b"\n", rng))
    assert stats.received >= 1000  # the good lines (garbage may hold a line that reads as one)
    assert stats.other_lines > 0


def test_acknowledgements_once_a_read_for_the_senders_heard() -> None:
    acked: list[tuple[int, int]] = []
    tally = Tally(Stats(), False, lambda _: None, acks={0, 1}, on_ack=lambda sid, n: acked.append((sid, n)))
    tally.feed(None, [b"#r n 0 0 1", b"#r n 0 1 1", b"#r n 2 0 1"], NOW)
    assert acked == [(0, 2)]
    tally.feed(None, [b"#r n 1 0 1", b"#r n 0 3 1"], NOW)
    assert sorted(acked[1:]) == [(0, 4), (1, 1)]  # 0 skipped 2: acked up to its highest, as before


def test_errors_and_pings_among_the_lines() -> None:
    stats, replies = Stats(), []
    tally = Tally(stats, False, replies.append)
    tally.feed(None, [b"PING :abc\r", b"! no such room", b":irc 482 n #r :not op\r", b"#r n 0 0 1"], NOW)
    assert replies == [b"PONG :abc\r\n"]
    assert stats.errors == ["! no such room", ":irc 482 n #r :not op\r"]
    assert (stats.received, stats.other_lines) == (1, 3)


def test_quickack_receivers_keep_their_latencies_apart() -> None:
    stats = Stats()
    Tally(stats, True, lambda _: None).feed(None, [b"#r n 0 0 %d" % (NOW - 7)], NOW)
    Tally(stats, False, lambda _: None).feed(None, [b"#r n 0 0 %d" % (NOW - 9)], NOW)
    assert stats.latencies_quickack == array("q", [7]) and stats.latencies == array("q", [9])


# --- the loop, over real sockets ---------------------------------------------------------------------------


def test_the_loop_reads_lines_cut_anywhere_and_sees_the_server_close() -> None:
    listener = socket.create_server(("127.0.0.1", 0))
    loop = Loop()
    server: socket.socket | None = None
    try:
        got: list[bytes] = []
        closed: list[str] = []
        conn = Conn(loop, listener.getsockname()[:2])
        conn.handler = lambda _conn, lines, _now: got.extend(lines)
        conn.on_close = lambda c: closed.append(c.closed or "?")
        conn.quickack = True
        server, _ = listener.accept()
        assert loop.run(lambda: conn.connected, time.monotonic() + 10)
        payload = b"".join(b"#r n 0 %d 1\n" % i for i in range(3000))
        for at in range(0, len(payload), 4093):
            server.sendall(payload[at:at + 4093])
        assert loop.run(lambda: len(got) == 3000, time.monotonic() + 10), len(got)
        assert got == payload.split(b"\n")[:-1]
        conn.send(b"hello\n")
        server.settimeout(10)
        assert server.recv(100) == b"hello\n"
        server.close()
        server = None
        assert loop.run(lambda: bool(closed), time.monotonic() + 10)
        assert closed == ["closed by the server"] and not loop.by_fd and not loop.conns
    finally:
        if server is not None:
            server.close()
        loop.close()
        listener.close()


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
