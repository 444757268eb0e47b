"""Tests for protocol.lines: bytes from a TCP client -> text lines.

Besides examples, a reference splitter written straight from the README's protocol section
(Transport) works on the whole stream at once; the incremental `LineBuffer`
must agree with it however the stream is cut into `recv` chunks.
"""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from protocol.lines import (
    DEFAULT_MAX_LINE,
    DO,
    DONT,
    IAC,
    SB,
    SE,
    WILL,
    WONT,
    LineBuffer,
    LineError,
    LineProblem,
)

FAST = settings(
    max_examples=150,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)

NOP, DM, BRK, IP, AO, AYT, EC, EL, GA = 241, 242, 243, 244, 245, 246, 247, 248, 249

TOO_LONG = LineError(LineProblem.TOO_LONG, DEFAULT_MAX_LINE)
BAD_UTF8 = LineError(LineProblem.INVALID_UTF8, DEFAULT_MAX_LINE)


def feed_chunks(chunks: list[bytes], max_line: int = DEFAULT_MAX_LINE) -> list[str | LineError]:
    buf = LineBuffer(max_line)
    out: list[str | LineError] = []
    for chunk in chunks:
        out.extend(buf.feed(chunk))
    return out


def feed_whole(data: bytes, max_line: int = DEFAULT_MAX_LINE) -> list[str | LineError]:
    return feed_chunks([data], max_line)


def feed_bytewise(data: bytes, max_line: int = DEFAULT_MAX_LINE) -> list[str | LineError]:
    return feed_chunks([data[i : i + 1] for i in range(len(data))], max_line)


def cut(data: bytes, points: list[int]) -> list[bytes]:
    bounds = [0, *sorted(points), len(data)]
    return [data[a:b] for a, b in zip(bounds, bounds[1:])]


# --- a reference implementation, from the spec, on the whole stream --------


def strip_telnet(data: bytes) -> bytes:
    """Remove telnet commands from a complete stream (not incremental)."""
    out = bytearray()
    i, n = 0, len(data)
    while i < n:
        if data[i] != IAC:
            out.append(data[i])
            i += 1
            continue
        if i + 1 >= n:
            break
        cmd = data[i + 1]
        if cmd == IAC:
            out.append(0xFF)
            i += 2
        elif cmd in (WILL, WONT, DO, DONT):
            i += 3
        elif cmd == SB:
            j = i + 2
            while j < n:
                if data[j] == IAC:
                    if j + 1 < n and data[j + 1] == SE:
                        break
                    j += 2  # IAC + one byte stay inside the sub-negotiation
                else:
                    j += 1
            i = j + 2
        else:
            i += 2
    return bytes(out)


def reference_items(data: bytes, max_line: int) -> list[str | LineError]:
    out: list[str | LineError] = []
    for raw in strip_telnet(data).split(b"\n")[:-1]:  # the last one is unfinished
        seg = raw[:-1] if raw.endswith(b"\r") else raw
        if len(seg) > max_line:
            out.append(LineError(LineProblem.TOO_LONG, max_line))
        elif seg:
            try:
                out.append(seg.decode("utf-8"))
            except UnicodeDecodeError:
                out.append(LineError(LineProblem.INVALID_UTF8, max_line))
    return out


# --- strategies --------------------------------------------------------------

TOKENS = [
    b"a",
    b"hello",
    b" ",
    b"\xc3\xa9",  # e acute
    b"\xe2\x82\xac",  # euro sign
    b"\xc3",  # a lone lead byte
    b"\x80",
    b"\x00",
    b"\n",
    b"\r",
    b"\r\n",
    bytes([IAC]),
    bytes([IAC, IAC]),
    bytes([IAC, WILL, 1]),
    bytes([IAC, DO, 24]),
    bytes([IAC, SB, 24, 0]) + b"xterm" + bytes([IAC, SE]),
    bytes([IAC, SB]),
    bytes([IAC, SE]),
    bytes([IAC, NOP]),
    bytes([SB]),
    bytes([SE]),
    bytes([WILL]),
]

streams = st.one_of(
    st.binary(max_size=200),
    st.lists(st.sampled_from(TOKENS), max_size=60).map(b"".join),
)


@st.composite
def chunked(draw: st.DrawFn, data_strategy: st.SearchStrategy[bytes] = streams) -> tuple[bytes, list[bytes]]:
    data = draw(data_strategy)
    points = draw(st.lists(st.integers(0, len(data)), max_size=12))
    return data, cut(data, points)


# --- splitting ---------------------------------------------------------------


def test_lf_ends_a_line() -> None:
    assert feed_whole(b"hello\nworld\n") == ["hello", "world"]


def test_crlf_ends_a_line_and_the_cr_is_dropped() -> None:
    assert feed_whole(b"hello\r\nworld\r\n") == ["hello", "world"]


def test_mixed_lf_and_crlf() -> None:
    assert feed_whole(b"a\r\nb\nc\r\n") == ["a", "b", "c"]


def test_only_one_cr_right_before_lf_is_dropped() -> None:
    assert feed_whole(b"a\r\r\n") == ["a\r"]
    assert feed_whole(b"a\rb\n") == ["a\rb"]
    assert feed_whole(b"\ra\n") == ["\ra"]


def test_bare_cr_does_not_end_a_line() -> None:
    assert feed_whole(b"a\rb") == []


def test_empty_lines_are_ignored() -> None:
    assert feed_whole(b"\n\n\r\n\nx\n\r\n\n") == ["x"]


def test_whitespace_lines_are_kept() -> None:
    # only empty lines vanish; blanks are the command parser's business
    assert feed_whole(b" \n\t\n") == [" ", "\t"]


def test_unfinished_line_is_held_until_lf() -> None:
    buf = LineBuffer()
    assert buf.feed(b"hel") == []
    assert buf.pending == 3
    assert buf.feed(b"lo") == []
    assert buf.feed(b" world\nnext") == ["hello world"]
    assert buf.pending == 4
    assert buf.feed(b"\n") == ["next"]
    assert buf.pending == 0


def test_cr_and_lf_split_across_feeds() -> None:
    buf = LineBuffer()
    assert buf.feed(b"abc\r") == []
    assert buf.feed(b"\n") == ["abc"]


def test_multibyte_character_split_across_feeds() -> None:
    data = "héllo €\n".encode()
    assert feed_bytewise(data) == ["héllo €"]


def test_many_lines_in_one_feed_in_order() -> None:
    data = b"".join(f"line {i}\n".encode() for i in range(100))
    assert feed_whole(data) == [f"line {i}" for i in range(100)]


def test_empty_feed_returns_nothing() -> None:
    buf = LineBuffer()
    assert buf.feed(b"") == []
    assert buf.pending == 0


def test_a_buffer_is_held_only_while_a_line_is_split_across_reads() -> None:
    """An idle connection holds no line buffer: whole lines are decoded from the read itself."""
    buf = LineBuffer(16)
    assert buf._line is None and buf.pending == 0
    assert buf.feed(b"hello\nwor") == ["hello"]
    assert buf.pending == 3
    assert buf.feed(b"ld\r\n") == ["world"]
    assert buf._line is None and buf.pending == 0
    assert buf.feed(b"x" * 20) == []  # too long: nothing kept of it
    assert buf._line is None and buf.pending == 0
    assert buf.feed(b"yy\nok\n") == [LineError(LineProblem.TOO_LONG, 16), "ok"]
    assert buf._line is None


def test_max_line_must_be_positive() -> None:
    with pytest.raises(ValueError):
        LineBuffer(0)
    with pytest.raises(ValueError):
        LineBuffer(-1)
    assert feed_whole(b"a\nab\n", max_line=1) == ["a", LineError(LineProblem.TOO_LONG, 1)]


# --- telnet --------------------------------------------------------------------


@pytest.mark.parametrize("verb", [WILL, WONT, DO, DONT])
@pytest.mark.parametrize("option", [0, 1, 3, 24, 31, 10, 13, SE, SB, IAC])
def test_option_negotiation_is_stripped(verb: int, option: int) -> None:
    # the option byte is swallowed whatever it is, even LF, CR or IAC
    assert feed_whole(b"he" + bytes([IAC, verb, option]) + b"llo\n") == ["hello"]


def test_sub_negotiation_is_stripped() -> None:
    sub = bytes([IAC, SB, 24, 0]) + b"xterm\nstill inside\r\n" + bytes([IAC, SE])
    assert feed_whole(b"ab" + sub + b"cd\n") == ["abcd"]


def test_escaped_iac_inside_sub_negotiation_does_not_end_it() -> None:
    sub = bytes([IAC, SB, 24, IAC, IAC, SE, 1, 2, IAC, SE])
    assert feed_whole(b"x" + sub + b"y\n") == ["xy"]


def test_typical_telnet_client_preamble() -> None:
    preamble = bytes(
        [IAC, DO, 3, IAC, WILL, 24, IAC, WILL, 31, IAC, WONT, 1]
        + [IAC, SB, 31, 0, 80, 0, 24, IAC, SE]
        + [IAC, SB, 24, 0]
    ) + b"xterm-256color" + bytes([IAC, SE])
    assert feed_whole(preamble + b"/nick bob\r\n") == ["/nick bob"]


def test_only_telnet_on_a_line_gives_nothing() -> None:
    assert feed_whole(bytes([IAC, DO, 1, IAC, NOP]) + b"\r\n") == []


def test_iac_iac_is_a_literal_ff_byte_which_is_invalid_utf8() -> None:
    assert feed_whole(bytes([IAC, IAC]) + b"\n") == [BAD_UTF8]
    assert feed_whole(b"ab" + bytes([IAC, IAC]) + b"cd\nok\n") == [BAD_UTF8, "ok"]


def test_iac_iac_counts_as_one_byte_of_the_line() -> None:
    buf = LineBuffer(max_line=3)
    buf.feed(b"ab" + bytes([IAC, IAC]))
    assert buf.pending == 3


@pytest.mark.parametrize("cmd", [NOP, DM, BRK, IP, AO, AYT, EC, EL, GA, SE, 0, ord("a"), 10])
def test_two_byte_commands_are_stripped(cmd: int) -> None:
    assert feed_whole(b"a" + bytes([IAC, cmd]) + b"b\n") == ["ab"]


def test_iac_lf_swallows_the_lf() -> None:
    # IAC + any non-special byte is a two-byte command, LF included
    assert feed_whole(b"a" + bytes([IAC]) + b"\nb\n") == ["ab"]


TELNET_STREAM = (
    b"a"
    + bytes([IAC, WILL, 1])
    + b"b"
    + bytes([IAC, SB, 24, 0])
    + b"vt\n"
    + bytes([IAC, IAC, IAC, SE])
    + b"c"
    + bytes([IAC, NOP])
    + b"\xc3\xa9\r\n"
    + bytes([IAC, IAC])
    + b"\nd\n"
)


def test_telnet_stream_reference_result() -> None:
    assert feed_whole(TELNET_STREAM) == ["abcé", BAD_UTF8, "d"]


@pytest.mark.parametrize("at", range(len(TELNET_STREAM) + 1))
def test_telnet_split_at_every_position(at: int) -> None:
    assert feed_chunks([TELNET_STREAM[:at], TELNET_STREAM[at:]]) == ["abcé", BAD_UTF8, "d"]


def test_telnet_byte_by_byte() -> None:
    assert feed_bytewise(TELNET_STREAM) == ["abcé", BAD_UTF8, "d"]


def test_iac_split_across_feeds() -> None:
    buf = LineBuffer()
    assert buf.feed(b"hi" + bytes([IAC])) == []
    assert buf.feed(bytes([WILL])) == []
    assert buf.feed(bytes([1]) + b" there") == []
    assert buf.feed(bytes([IAC])) == []
    assert buf.feed(bytes([SB, 24])) == []
    assert buf.feed(b"\n\n" + bytes([IAC])) == []
    assert buf.feed(bytes([SE]) + b"!\n") == ["hi there!"]


def test_telnet_bytes_do_not_count_towards_the_limit() -> None:
    negotiation = bytes([IAC, SB, 24]) + b"x" * 100 + bytes([IAC, SE])
    assert feed_whole(b"abcd" + negotiation + b"\n", max_line=4) == ["abcd"]


# --- the length limit ----------------------------------------------------------


def test_line_of_exactly_max_line_bytes_is_accepted() -> None:
    line = b"x" * DEFAULT_MAX_LINE
    assert feed_whole(line + b"\n") == [line.decode()]


def test_line_of_max_line_plus_one_bytes_is_rejected_once_then_stream_goes_on() -> None:
    line = b"x" * (DEFAULT_MAX_LINE + 1)
    assert feed_whole(line + b"\nnext\n") == [TOO_LONG, "next"]


def test_cr_before_lf_is_not_counted() -> None:
    line = b"x" * DEFAULT_MAX_LINE
    assert feed_whole(line + b"\r\n") == [line.decode()]


def test_cr_before_lf_is_not_counted_when_fed_separately() -> None:
    buf = LineBuffer(max_line=4)
    assert buf.feed(b"abcd") == []
    assert buf.feed(b"\r") == []
    assert buf.pending == 5
    assert buf.feed(b"\n") == ["abcd"]


def test_a_cr_that_is_content_is_counted() -> None:
    # "abcd\r" + CR LF: the line is 5 bytes, one over
    assert feed_whole(b"abcd\r\r\n", max_line=4) == [LineError(LineProblem.TOO_LONG, 4)]


def test_limit_counts_bytes_not_characters() -> None:
    fits = "é" * (DEFAULT_MAX_LINE // 2)
    assert feed_whole(fits.encode() + b"\n") == [fits]
    assert feed_whole(("a" + fits).encode() + b"\n") == [TOO_LONG]


@pytest.mark.parametrize("max_line", [1, 2, 5, 17])
def test_limit_boundary_small_limits(max_line: int) -> None:
    err = LineError(LineProblem.TOO_LONG, max_line)
    ok = "y" * max_line
    data = ("y" * (max_line + 1) + "\n" + ok + "\r\n" + "z" * (max_line + 5) + "\r\nend\n").encode()
    expected = [err, ok, err, "end" if max_line >= 3 else err]
    assert feed_whole(data, max_line) == expected
    assert feed_bytewise(data, max_line) == expected


def test_huge_line_in_chunks_holds_at_most_max_line_plus_one_bytes() -> None:
    buf = LineBuffer()
    out: list[str | LineError] = []
    for _ in range(1000):
        out.extend(buf.feed(b"x" * 1000))
        assert buf.pending <= DEFAULT_MAX_LINE + 1
    assert out == []
    out.extend(buf.feed(b"tail\nafter\n"))
    assert out == [TOO_LONG, "after"]
    assert buf.pending == 0


def test_huge_line_byte_by_byte_holds_at_most_max_line_plus_one_bytes() -> None:
    buf = LineBuffer(max_line=10)
    for _ in range(100):
        assert buf.feed(b"x") == []
        assert buf.pending <= 11
    assert buf.feed(b"\n") == [LineError(LineProblem.TOO_LONG, 10)]


def test_huge_line_with_telnet_in_chunks_is_capped_too() -> None:
    buf = LineBuffer(max_line=64)
    out: list[str | LineError] = []
    for _ in range(200):
        out.extend(buf.feed(b"x" * 50 + bytes([IAC, NOP])))
        assert buf.pending <= 65
    out.extend(buf.feed(b"\nok\n"))
    assert out == [LineError(LineProblem.TOO_LONG, 64), "ok"]


def test_too_long_line_with_invalid_utf8_reports_too_long_only() -> None:
    assert feed_whole(b"\xff\xff" * 10 + b"\n", max_line=4) == [LineError(LineProblem.TOO_LONG, 4)]


# --- invalid UTF-8 -------------------------------------------------------------


@pytest.mark.parametrize(
    "bad",
    [
        b"\xc3",  # truncated two-byte sequence
        b"\xe2\x82",  # truncated three-byte sequence
        b"\x80",  # lone continuation byte
        b"\xc0\xaf",  # overlong encoding of '/'
        b"\xed\xa0\x80",  # an encoded surrogate
        b"\xf4\x90\x80\x80",  # beyond U+10FFFF
        b"\xfe",
        b"ok \xc3 ok",
    ],
)
def test_invalid_utf8_gives_line_error_and_the_stream_goes_on(bad: bytes) -> None:
    assert feed_whole(bad + b"\r\nfine\n") == [BAD_UTF8, "fine"]


def test_line_error_messages() -> None:
    assert TOO_LONG.message() == "line too long (max 4096 bytes)"
    assert LineError(LineProblem.TOO_LONG, 100).message() == "line too long (max 100 bytes)"
    assert BAD_UTF8.message() == "invalid UTF-8"


def test_errors_carry_the_buffer_limit() -> None:
    (err,) = feed_whole(b"x" * 11 + b"\n", max_line=10)
    assert isinstance(err, LineError)
    assert err.problem is LineProblem.TOO_LONG
    assert err.max_line == 10
    assert err.message() == "line too long (max 10 bytes)"


def test_line_error_is_a_frozen_value() -> None:
    assert LineError(LineProblem.INVALID_UTF8, 5) == LineError(LineProblem.INVALID_UTF8, 5)
    with pytest.raises(AttributeError):
        TOO_LONG.max_line = 1  # type: ignore[misc]


# --- properties ----------------------------------------------------------------


@FAST
@given(chunked(), st.integers(1, 16))
def test_property_matches_the_reference(case: tuple[bytes, list[bytes]], max_line: int) -> None:
    data, chunks = case
    assert feed_chunks(chunks, max_line) == reference_items(data, max_line)


@FAST
@given(chunked())
def test_property_matches_the_reference_default_limit(case: tuple[bytes, list[bytes]]) -> None:
    data, chunks = case
    assert feed_chunks(chunks) == reference_items(data, DEFAULT_MAX_LINE)


@FAST
@given(chunked(), st.integers(1, 16))
def test_property_whole_bytewise_and_chunked_agree(
    case: tuple[bytes, list[bytes]], max_line: int
) -> None:
    data, chunks = case
    whole = feed_whole(data, max_line)
    assert feed_bytewise(data, max_line) == whole
    assert feed_chunks(chunks, max_line) == whole


@FAST
@given(st.lists(st.binary(max_size=64), max_size=20), st.integers(1, 32))
def test_property_arbitrary_bytes_never_raise_and_items_are_sane(
    chunks: list[bytes], max_line: int
) -> None:
    buf = LineBuffer(max_line)
    for chunk in chunks:
        for item in buf.feed(chunk):
            if isinstance(item, str):
                assert item
                assert "\n" not in item
                assert len(item.encode("utf-8")) <= max_line
            else:
                assert isinstance(item, LineError)
                assert item.max_line == max_line
        assert 0 <= buf.pending <= max_line + 1


@FAST
@given(st.lists(st.text(max_size=30).filter(lambda s: "\n" not in s), max_size=10))
def test_property_clean_text_lines_come_back_unchanged(lines: list[str]) -> None:
    # no IAC can occur in UTF-8, so text lines survive intact
    data = b"".join(line.encode() + b"\r\n" for line in lines)
    # only the CR of each CR LF goes; a CR that is content stays
    expected = [line for line in lines if line]
    assert feed_bytewise(data) == expected
    assert feed_whole(data) == expected
