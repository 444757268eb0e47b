"""The gateway's dialect seam (protocol.doors), as pure code."""

from __future__ import annotations

from protocol.doors import Input, IrcDoor, LineDoor, View, WebDoor
from protocol.irc import IrcSettings
from protocol.messages import ChatEvent, EventType
from protocol.websocket import WebConfig, render_event

UPGRADE = (b"GET /ws HTTP/1.1\r\nHost: h\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
           b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n")


def test_written_keeps_order_and_drops_only_unanswered_bad_replies() -> None:
    got = Input([], [b"a", b"BAD1", b"b", b"BAD2", b"c"], bad=(1, 3))
    assert got.written(2) == b"aBAD1bBAD2c"
    assert got.written(1) == b"aBAD1bc"
    assert got.written(0) == b"abc"


def test_line_door_lines_errors_and_telnet_noise() -> None:
    door = LineDoor(16)
    got = door.feed(b"hello\n" + b"x" * 40 + b"\n\xc3\nbye")
    assert got.lines == ["hello"] and got.items == 3
    assert got.written(2) == b"! line too long (max 16 bytes)\n! invalid UTF-8\n"
    assert got.bad == (0, 1) and got.noise == 0
    assert door.feed(b"\n").lines == ["bye"]
    assert door.feed(b"\xff\xfb\x01\n").noise == 1 / 32


def test_line_door_switches_to_json_and_words_its_notices() -> None:
    door = LineDoor(4096)
    assert door.view is View.TEXT and door.ready and door.chatting
    door.set_json(True)
    assert door.view is View.JSON
    assert door.end("bye", error=False) == b"* bye\n" and door.end("") == b""
    assert door.refuse("full") == b"! full\n"


def test_irc_door_marks_error_numerics_bad_and_stays_irc() -> None:
    door = IrcDoor(IrcSettings("irc.test"))
    got = door.feed(b"PING :x\r\nFOO\r\nNICK alice\r\nUSER a 0 * :A\r\n")
    assert got.lines == ["/nick alice"] and got.items == 4
    assert [r.split()[1] for r in got.replies] == [b"PONG", b"421"] and got.bad == (1,)
    assert not door.ready and door.view is View.OWN
    door.set_json(True)
    assert door.view is View.OWN
    assert door.end("registration timeout") == b"ERROR :Closing Link: registration timeout\r\n"


def test_web_door_chats_only_once_upgraded_and_speaks_json() -> None:
    door = WebDoor(WebConfig())
    assert not door.chatting and door.notice("x") == b""
    assert door.feed(b"GET /ws HTTP/1.1\r\n").replies == []
    got = door.feed(UPGRADE[len(b"GET /ws HTTP/1.1\r\n"):])
    assert got.replies[0].startswith(b"HTTP/1.1 101 ") and door.chatting and door.ready
    event = ChatEvent(EventType.INFO, "hi")
    assert door.render(event, "c") == render_event(event) and door.view is View.WEB
    closing = door.end("flooding", error=True)
    assert closing.startswith(render_event(ChatEvent(EventType.ERROR, "flooding")))
    assert closing.endswith(b"flooding") and not door.chatting


def test_web_door_refuses_before_the_upgrade_with_http() -> None:
    door = WebDoor(WebConfig())
    assert door.refuse("server full").startswith(b"HTTP/1.1 503 ")
    assert WebDoor(WebConfig()).end("registration timeout").startswith(b"HTTP/1.1 503 ")
