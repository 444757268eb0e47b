"""Tests for gateway.session: a connection's events to the broker, as pure code."""

from __future__ import annotations

from gateway.session import SeenEvents, Session
from protocol import codec
from protocol.messages import Connected, Disconnected, Lines, Message, event_key

CID = "gwA.abc123:7"


def decode(frames: list[bytes]) -> Message:
    """An event's frames [key, body] -> the event, once its key is seen to name it."""
    key, body = frames
    msg = codec.decode(body)
    assert isinstance(msg, (Connected, Lines, Disconnected))
    assert codec.decode_key(key) == event_key(msg)
    return msg


def started(now: float = 0.0) -> Session:
    """A session whose Connected event was answered."""
    s = Session(CID, "10.0.0.1:5555", now)
    assert s.answered(0)
    return s


# --- Connected --------------------------------------------------------------------


def test_connected_is_in_flight_at_start() -> None:
    s = Session(CID, "10.0.0.1:5555", 3.0)
    assert s.in_flight is not None
    assert s.in_flight.seq == 0
    assert s.in_flight.sent == 3.0
    assert decode(s.in_flight.frames) == Connected(CID, 0, "10.0.0.1:5555")
    assert s.next_seq == 1
    assert not s.finished


def test_nothing_goes_out_while_connected_is_in_flight() -> None:
    s = Session(CID, "addr", 0.0)
    s.add_lines(["hello"])
    assert s.next_frame(1.0) is None
    assert s.answered(0)
    assert decode(s.next_frame(2.0) or []) == Lines(CID, 1, ("hello",))


# --- Lines ------------------------------------------------------------------------


def test_no_frame_without_lines() -> None:
    s = started()
    assert s.next_frame(1.0) is None
    s.add_lines([])
    assert s.next_frame(1.0) is None


def test_lines_are_batched_while_an_event_is_in_flight() -> None:
    s = started()
    s.add_lines(["a"])
    first = s.next_frame(1.0)
    assert first is not None and decode(first) == Lines(CID, 1, ("a",))
    assert s.next_seq == 2
    s.add_lines(["b", "c"])
    s.add_lines(["d"])
    assert s.next_frame(2.0) is None  # "a" is still in flight
    assert s.pending == ["b", "c", "d"]
    assert s.answered(1)
    second = s.next_frame(3.0)
    assert second is not None and decode(second) == Lines(CID, 2, ("b", "c", "d"))
    assert s.pending == []
    assert s.next_seq == 5
    assert s.in_flight is not None and s.in_flight.seq == 2 and s.in_flight.sent == 3.0
    assert s.answered(2)
    s.add_lines(["e"])
    third = s.next_frame(4.0)
    assert third is not None and decode(third) == Lines(CID, 5, ("e",))


def test_answered_with_a_wrong_seq_is_ignored() -> None:
    s = started()
    s.add_lines(["a", "b"])
    s.next_frame(1.0)
    assert not s.answered(0)  # an old answer (Connected's)
    assert not s.answered(2)  # a line inside the event, not the event
    assert not s.answered(3)
    assert s.in_flight is not None and s.in_flight.seq == 1
    s.add_lines(["c"])
    assert s.next_frame(2.0) is None
    assert s.answered(1)
    assert not s.answered(1)  # answered twice: the second is a replay


def test_answered_with_nothing_in_flight() -> None:
    s = started()
    assert not s.answered(0)
    assert not s.answered(1)


# --- leaving ------------------------------------------------------------------------


def test_leave_sends_disconnected_after_pending_lines() -> None:
    s = started()
    s.add_lines(["a"])
    s.next_frame(1.0)  # Lines 1 in flight
    s.add_lines(["b", "c"])
    s.leave("connection reset")
    assert s.next_frame(2.0) is None
    assert s.answered(1)
    assert not s.finished
    lines = s.next_frame(3.0)
    assert lines is not None and decode(lines) == Lines(CID, 2, ("b", "c"))
    assert s.answered(2)
    assert not s.finished
    bye = s.next_frame(4.0)
    assert bye is not None and decode(bye) == Disconnected(CID, 4, "connection reset")
    assert s.next_seq == 4
    assert s.next_frame(5.0) is None
    assert s.answered(4)
    assert s.finished
    assert s.in_flight is None
    assert s.next_frame(6.0) is None  # nothing more to say


def test_leave_right_after_connect() -> None:
    s = Session(CID, "addr", 0.0)
    s.leave("quit")
    assert s.next_frame(1.0) is None  # Connected still in flight
    assert s.answered(0)
    assert not s.finished
    bye = s.next_frame(2.0)
    assert bye is not None and decode(bye) == Disconnected(CID, 1, "quit")
    assert not s.answered(0)
    assert s.answered(1)
    assert s.finished


def test_the_first_reason_to_leave_stays() -> None:
    s = started()
    s.leave("quit")
    s.leave("connection reset")
    bye = s.next_frame(1.0)
    assert bye is not None and decode(bye) == Disconnected(CID, 1, "quit")


def test_lines_answer_while_leaving_does_not_finish() -> None:
    s = started()
    s.add_lines(["a"])
    s.next_frame(1.0)
    s.leave("eof")
    assert s.answered(1)  # seq 1 is the Lines event, not the goodbye (seq 2)
    assert not s.finished
    bye = s.next_frame(2.0)
    assert bye is not None and decode(bye) == Disconnected(CID, 2, "eof")


# --- resending ----------------------------------------------------------------------


def test_overdue_only_after_the_timeout_and_restarts_the_clock() -> None:
    s = Session(CID, "addr", 10.0)
    frame = s.in_flight.frames if s.in_flight else []
    assert s.overdue(10.0, 5.0) is None
    assert s.overdue(14.9, 5.0) is None
    assert s.overdue(15.0, 5.0) == frame
    assert s.in_flight is not None and s.in_flight.sent == 15.0
    assert s.overdue(16.0, 5.0) is None  # the clock started again
    assert s.overdue(19.9, 5.0) is None
    assert s.overdue(20.5, 5.0) == frame
    assert s.answered(0)
    assert s.overdue(100.0, 5.0) is None  # nothing in flight


def test_overdue_resends_the_same_lines_event() -> None:
    s = started()
    s.add_lines(["a", "b"])
    frame = s.next_frame(1.0)
    s.add_lines(["c"])  # arrives meanwhile: not folded into the resend
    again = s.overdue(10.0, 2.0)
    assert again == frame
    assert again is not None and decode(again) == Lines(CID, 1, ("a", "b"))


def test_resend_returns_the_in_flight_frame_now() -> None:
    s = started()
    assert s.resend(1.0) is None
    s.add_lines(["a"])
    frame = s.next_frame(2.0)
    assert s.resend(3.0) == frame
    assert s.in_flight is not None and s.in_flight.sent == 3.0
    assert s.overdue(4.0, 2.0) is None  # resend restarted the clock too
    assert s.overdue(5.0, 2.0) == frame


# --- SeenEvents ---------------------------------------------------------------------------


def test_seen_events_drops_repeats() -> None:
    seen = SeenEvents()
    assert seen.first_time(CID, 0)
    assert not seen.first_time(CID, 0)
    assert seen.first_time(CID, 1)
    assert not seen.first_time(CID, 1)
    assert seen.first_time("gwB.x:1", 1)  # another connection: its own numbers
    assert not seen.first_time("gwB.x:1", 1)


def test_seen_events_drops_anything_at_or_below_the_highest_seq() -> None:
    seen = SeenEvents()
    assert seen.first_time(CID, 1)
    assert seen.first_time(CID, 4)  # a Lines event of three lines was 1, next is 4
    assert not seen.first_time(CID, 1)
    assert not seen.first_time(CID, 3)
    assert not seen.first_time(CID, 4)
    assert seen.first_time(CID, 5)


def test_seen_events_a_lost_gateway_mark_shows_once() -> None:
    seen = SeenEvents()
    assert seen.first_time("!gwA.abc", 0)
    assert not seen.first_time("!gwA.abc", 0)


def test_seen_events_evicts_the_least_recently_active_beyond_capacity() -> None:
    seen = SeenEvents(capacity=2)
    assert seen.first_time("g:1", 1)
    assert seen.first_time("g:2", 1)
    assert seen.first_time("g:1", 2)  # g:1 active again: g:2 is now the oldest
    assert not seen.first_time("g:2", 1)  # a repeat does not make it younger
    assert seen.first_time("g:3", 1)  # evicts g:2
    assert not seen.first_time("g:1", 2)  # g:1 is still known
    assert not seen.first_time("g:3", 1)
    assert seen.first_time("g:2", 1)  # forgotten: new again (evicts g:1)
    assert seen.first_time("g:1", 1)  # forgotten too


def test_an_abandoned_session_sends_nothing_more() -> None:
    s = Session("gw.x:1", "127.0.0.1:1", 0.0)
    s.abandon()
    s.add_lines(["late"])
    s.leave("gone")
    assert s.finished
    assert s.next_frame(1.0) is None
    assert s.overdue(100.0, 1.0) is None
    assert s.resend(100.0) is None
