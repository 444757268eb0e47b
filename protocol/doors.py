"""The gateway's dialects, as pure code: what a connection's bytes mean and how
a delivery is shown, one `Door` per connection.

A door turns what one read returned into an `Input` (`feed`): the chat lines,
the bytes to write at once (answers to bad input, IRC's local replies, the
WebSocket handshake), how many items the read held (for flood control) and
how many of them were bad. It says how the chat's deliveries are shown (its
`view`): the line protocol in text or JSON mode and WebSocket render a
delivery from the event alone, so the gateway renders each once for all
their connections; an IRC connection renders its own (`render`). And it
words what the gateway says on its own (`notice`, `end`, `refuse`).

- `LineDoor`: the line protocol (nc, telnet): `protocol.lines`, text or JSON.
- `IrcDoor`: IRC (`protocol.irc`); never switches to JSON.
- `WebDoor`: HTTP and WebSocket (`protocol.websocket`); JSON from the start,
  own messages included; a chat connection only once upgraded (`chatting`).

`ready` is False until the client did what it must to chat (an IRC client
registered, a WebSocket client upgraded): the gateway cuts one that takes
too long. The gateway's socket, broker link, admission, flood control and
write path are the same for every door (gateway.client, gateway.reader, gateway.output, gateway.deliver).
"""

from __future__ import annotations

import enum
from typing import Protocol

from protocol.irc import IrcConnection, IrcSettings, Reply, ToChat
from protocol.irc_wire import line as irc_line
from protocol.lines import IAC, LineBuffer, LineError
from protocol.messages import ChatEvent, EventType
from protocol.webhttp import http_error
from protocol.websocket import CLOSE_GOING_AWAY, CLOSE_POLICY, WebConfig, WebConnection, render_event

TELNET_BYTES_PER_BAD_LINE = 32  # telnet commands (IAC bytes) that cost as much as one bad line
SERVICE_UNAVAILABLE = 503


class View(enum.IntEnum):
    """How a connection's deliveries are shown."""

    TEXT = 0  # the line protocol's text mode: once per delivery; no echo of one's own messages
    JSON = 1  # the line protocol's JSON mode: once per delivery
    WEB = 2  # JSON objects in WebSocket text frames: once per delivery
    OWN = 3  # by the connection itself (`Door.render`): IRC


class DoorKind(enum.StrEnum):
    LINE = "line"
    IRC = "irc"
    WEB = "ws"


class Input:
    """What one read meant (see the module docstring)."""

    __slots__ = ("bad", "close", "items", "lines", "noise", "replies")

    def __init__(self, lines: list[str], replies: list[bytes] | None = None, items: int = 0,
                 bad: tuple[int, ...] = (), noise: float = 0.0, close: str | None = None) -> None:
        self.lines = lines  # for the chat, in order
        self.replies = replies or []  # write now (in order), before what the lines cause
        self.items = items  # lines (or frames) the read ended, good, bad and empty
        self.bad = bad  # which replies answer bad input (indexes into `replies`)
        self.noise = noise  # more bad-line cost (telnet commands)
        self.close = close  # close after writing: why

    def written(self, answered: int) -> bytes:
        """The replies to write when only the first `answered` bad ones get an answer
        (past a client's allowance for bad lines, the rest go unanswered)."""
        if answered >= len(self.bad):
            return b"".join(self.replies)
        skipped = set(self.bad[answered:])
        return b"".join(reply for i, reply in enumerate(self.replies) if i not in skipped)


class Door(Protocol):
    kind: DoorKind
    view: View

    @property
    def ready(self) -> bool: ...

    @property
    def chatting(self) -> bool: ...

    def count_items(self, data: bytes) -> int: ...

    def feed(self, data: bytes) -> Input: ...

    def render(self, event: ChatEvent, cid: str) -> bytes: ...

    def set_json(self, on: bool) -> None: ...

    def notice(self, text: str, error: bool = True) -> bytes: ...

    def end(self, text: str, error: bool = True) -> bytes: ...

    def refuse(self, text: str) -> bytes: ...


class LineDoor:
    """nc and telnet: LF-ended lines; text mode until the chat says JSON."""

    __slots__ = ("_buffer", "view")
    kind = DoorKind.LINE
    ready = True
    chatting = True

    def __init__(self, max_line: int) -> None:
        self._buffer = LineBuffer(max_line)
        self.view = View.TEXT

    def count_items(self, data: bytes) -> int:
        return data.count(b"\n")

    def feed(self, data: bytes) -> Input:
        lines: list[str] = []
        errors: list[LineError] = []
        for item in self._buffer.feed(data):
            if isinstance(item, LineError):
                errors.append(item)
            else:
                lines.append(item)
        if not errors:
            return Input(lines, None, data.count(b"\n"), (), data.count(IAC) / TELNET_BYTES_PER_BAD_LINE)
        replies = [self.notice(error.message()) for error in errors]
        return Input(lines, replies, data.count(b"\n"), tuple(range(len(replies))),
                     data.count(IAC) / TELNET_BYTES_PER_BAD_LINE)

    def render(self, event: ChatEvent, cid: str) -> bytes:
        raise NotImplementedError("the line protocol renders once per delivery (View.TEXT, View.JSON)")

    def set_json(self, on: bool) -> None:
        self.view = View.JSON if on else View.TEXT

    def notice(self, text: str, error: bool = True) -> bytes:
        return f"{'!' if error else '*'} {text}\n".encode()

    def end(self, text: str, error: bool = True) -> bytes:
        return self.notice(text, error) if text else b""

    def refuse(self, text: str) -> bytes:
        return self.notice(text)


class IrcDoor:
    """IRC clients: `protocol.irc.IrcConnection` renders every delivery itself."""

    __slots__ = ("conn",)
    kind = DoorKind.IRC
    view = View.OWN
    chatting = True

    def __init__(self, settings: IrcSettings) -> None:
        self.conn = IrcConnection(settings)

    @property
    def ready(self) -> bool:
        return self.conn.registered

    def count_items(self, data: bytes) -> int:
        return data.count(b"\n")

    def feed(self, data: bytes) -> Input:
        before = self.conn.lines_seen
        lines: list[str] = []
        replies: list[bytes] = []
        bad: list[int] = []
        for action in self.conn.feed(data):
            if isinstance(action, ToChat):
                lines.extend(action.lines)
            elif isinstance(action, Reply):
                if _is_irc_error(action.data):
                    bad.append(len(replies))
                replies.append(action.data)
        return Input(lines, replies, self.conn.lines_seen - before, tuple(bad))

    def render(self, event: ChatEvent, cid: str) -> bytes:
        return self.conn.render(event, cid)

    def set_json(self, on: bool) -> None:
        """IRC clients stay IRC."""

    def notice(self, text: str, error: bool = True) -> bytes:
        return irc_line(self.conn.server, "NOTICE", self.conn.nick, text)

    def end(self, text: str, error: bool = True) -> bytes:
        return irc_line("", "ERROR", f"Closing Link: {text}" if text else "Closing Link")

    def refuse(self, text: str) -> bytes:
        return self.end(text)


def _is_irc_error(data: bytes) -> bool:
    """A local reply that answers a bad line: an error numeric (4xx), a FAIL, an invalid-input NOTICE."""
    words = data.split(b" ", 3)
    command = words[1] if len(words) > 1 and data.startswith(b":") else b""
    return (len(command) == 3 and command.startswith(b"4")) or command == b"FAIL" or b"invalid UTF-8" in data


class WebDoor:
    """Browsers: HTTP for the page, then WebSocket text frames of lines; JSON objects back."""

    __slots__ = ("conn",)
    kind = DoorKind.WEB
    view = View.WEB

    def __init__(self, config: WebConfig) -> None:
        self.conn = WebConnection(config)

    @property
    def ready(self) -> bool:
        return self.conn.is_open

    @property
    def chatting(self) -> bool:
        return self.conn.is_open

    def count_items(self, data: bytes) -> int:
        return 0  # frames are counted once parsed (`Input.items`)

    def feed(self, data: bytes) -> Input:
        got = self.conn.feed(data)
        return Input(list(got.lines), [got.out] if got.out else None, got.frames + len(got.lines), (), 0.0, got.close)

    def render(self, event: ChatEvent, cid: str) -> bytes:
        return self.conn.render(event)

    def set_json(self, on: bool) -> None:
        """A browser speaks JSON from the start, and on."""

    def notice(self, text: str, error: bool = True) -> bytes:
        if not self.conn.is_open:
            return b""
        return render_event(ChatEvent(EventType.ERROR if error else EventType.INFO, text))

    def end(self, text: str, error: bool = True) -> bytes:
        if not self.conn.is_open:
            return self.refuse(text) if text else b""
        code = CLOSE_POLICY if error else CLOSE_GOING_AWAY
        return (self.notice(text, error) if text else b"") + self.conn.close(text or "goodbye", code)

    def refuse(self, text: str) -> bytes:
        self.conn.close(text)  # nothing more is read or written as WebSocket
        return http_error(SERVICE_UNAVAILABLE, text)
