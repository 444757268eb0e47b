"""The WebSocket door, as pure code: one `WebConnection` per TCP connection.

`feed(data)` takes whatever one `recv` returned and gives back a `Feed`: the
bytes to write now, the chat lines to hand on, whether the upgrade happened
with this feed, and whether to close after writing. It never raises on input.

The connection goes through three phases:

- REQUEST: bytes are held until the blank line that ends the HTTP request
  head, at most `max_request` bytes (431 past that). The head is checked by
  h11 (400 if it is not HTTP). `GET /ws` with a WebSocket upgrade is handed
  to wsproto; an Origin that is neither this host nor in `origins` gets 403
  (no Origin at all is a non-browser client: accepted). A path in `static`
  gets that file; any other path 404, any method but GET and HEAD 405. Every
  plain HTTP answer closes the connection: one request per connection.
- OPEN: wsproto parses frames. A text message is at most `max_message` bytes
  (close 1009 past that) and holds chat lines separated by LF (a CR before
  the LF is dropped, empty lines vanish, the end of the message ends the last
  line). A line over `max_line` bytes gets the line protocol's error object
  and is dropped; the connection goes on. A binary message closes with 1003,
  invalid UTF-8 with 1007, a broken frame with 1002. Pings are answered.
  A close from the client is answered, then the connection is closed.
- DONE: everything is ignored; the shell closes the socket.

The HTTP answers and the Origin rule are in protocol.webhttp.

The server speaks JSON mode from the start: `render_event(event)` is one
JSON-mode object (protocol.render) in one unmasked text frame. It depends on
the event only, so a shell can render a delivery once for all its WebSocket
connections. `Feed.frames` and `Feed.nbytes` are for flood accounting: a
ping flood shows there even though it yields no line.
"""

from __future__ import annotations

import enum
import struct
from collections.abc import Mapping
from dataclasses import dataclass, field

import h11
from wsproto import ConnectionType, WSConnection
from wsproto.connection import ConnectionState
from wsproto.events import (
    AcceptConnection,
    BytesMessage,
    CloseConnection,
    Event,
    Ping,
    RejectConnection,
    Request,
    TextMessage,
)
from wsproto.utilities import RemoteProtocolError

from protocol.lines import DEFAULT_MAX_LINE, LineError, LineProblem
from protocol.messages import ChatEvent, EventType
from protocol.render import render_json
from protocol.webhttp import REASONS, header, http_error, http_response, origin_allowed

WS_PATH = b"/ws"
MAX_REQUEST = 8192
MAX_MESSAGE = 8192
MAX_CLOSE_REASON = 123  # a close frame's payload is at most 125 bytes, 2 of them the code

CLOSE_NORMAL = 1000
CLOSE_GOING_AWAY = 1001
CLOSE_UNSUPPORTED = 1003
CLOSE_POLICY = 1008
CLOSE_TOO_BIG = 1009

BINARY_REFUSED = "binary frames are not accepted: send text"


@dataclass(frozen=True, slots=True)
class StaticFile:
    content_type: str
    body: bytes


@dataclass(frozen=True, slots=True)
class WebConfig:
    """What every connection of one WebSocket listener shares."""

    static: Mapping[str, StaticFile] = field(default_factory=dict)  # "/" -> the page
    origins: frozenset[str] = frozenset()  # allowed besides this host: "https://chat.example"
    max_request: int = MAX_REQUEST
    max_message: int = MAX_MESSAGE
    max_line: int = DEFAULT_MAX_LINE


@dataclass(frozen=True, slots=True)
class Feed:
    out: bytes = b""  # write these now
    lines: tuple[str, ...] = ()  # chat lines, in order
    opened: bool = False  # the upgrade happened: a chat connection from now on
    close: str | None = None  # close after writing `out`; why (for the log)
    frames: int = 0  # WebSocket frames (or parts of frames) received
    nbytes: int = 0  # bytes received


class Phase(enum.Enum):
    REQUEST = 0
    OPEN = 1
    DONE = 2


def frame_text(payload: bytes) -> bytes:
    """One final, unmasked text frame (a server's frame) around `payload`."""
    size = len(payload)
    if size < 126:
        head = struct.pack("!BB", 0x81, size)
    elif size < 1 << 16:
        head = struct.pack("!BBH", 0x81, 126, size)
    else:
        head = struct.pack("!BBQ", 0x81, 127, size)
    return head + payload


def render_event(event: ChatEvent) -> bytes:
    """A chat event -> one JSON-mode object in one text frame."""
    return frame_text(render_json(event)[:-1])  # the frame ends it, not a LF


def error_frame(text: str) -> bytes:
    return render_event(ChatEvent(EventType.ERROR, text))


def split_lines(text: str, max_line: int) -> tuple[list[str], list[LineError]]:
    """One text message -> its lines and an error for each line over the limit."""
    lines: list[str] = []
    errors: list[LineError] = []
    for raw in text.split("\n"):
        line = raw[:-1] if raw.endswith("\r") else raw
        if not line:
            continue
        if len(line) > max_line or len(line.encode("utf-8", "surrogatepass")) > max_line:
            errors.append(LineError(LineProblem.TOO_LONG, max_line))
        else:
            lines.append(line)
    return lines, errors


class WebConnection:
    """One HTTP/WebSocket connection's state (see the module docstring)."""

    __slots__ = ("_head", "_message", "_message_size", "_ws", "config", "phase")

    def __init__(self, config: WebConfig) -> None:
        self.config = config
        self.phase = Phase.REQUEST
        self._head = bytearray()
        self._ws: WSConnection | None = None
        self._message: list[str] = []
        self._message_size = 0

    # --- input ------------------------------------------------------------------

    def feed(self, data: bytes) -> Feed:
        """Add received bytes -> what to do about them."""
        if self.phase is Phase.OPEN:
            return self._feed_frames(data, b"", opened=False)
        if self.phase is Phase.DONE:
            return Feed(nbytes=len(data))
        self._head += data
        end = self._head.find(b"\r\n\r\n")
        limit = self.config.max_request
        if (end < 0 and len(self._head) > limit) or end + 4 > limit:
            return self._refuse(431, f"request head too large (max {limit} bytes)", len(data))
        if end < 0:
            return Feed(nbytes=len(data))
        head, rest = bytes(self._head[: end + 4]), bytes(self._head[end + 4 :])
        self._head = bytearray()
        return self._route(head, rest, len(data))

    def _refuse(self, status: int, text: str, nbytes: int) -> Feed:
        self.phase = Phase.DONE
        return Feed(out=http_error(status, text), close=f"http {status}: {text}", nbytes=nbytes)

    def _route(self, head: bytes, rest: bytes, nbytes: int) -> Feed:
        parser = h11.Connection(h11.SERVER, max_incomplete_event_size=self.config.max_request)
        try:
            parser.receive_data(head)
            request = parser.next_event()
        except h11.RemoteProtocolError:
            return self._refuse(400, "bad request", nbytes)
        if not isinstance(request, h11.Request):
            return self._refuse(400, "bad request", nbytes)
        if request.method not in (b"GET", b"HEAD"):
            return self._refuse(405, "only GET is served here", nbytes)
        path = request.target.split(b"?", 1)[0]
        if path == WS_PATH:
            return self._upgrade(head, rest, list(request.headers), nbytes)
        static = self.config.static.get(path.decode("ascii", "replace"))
        if static is None:
            return self._refuse(404, "not found", nbytes)
        self.phase = Phase.DONE
        body = http_response(200, static.content_type, static.body, head_only=request.method == b"HEAD")
        return Feed(out=body, close="static file served", nbytes=nbytes)

    def _upgrade(self, head: bytes, rest: bytes, headers: list[tuple[bytes, bytes]], nbytes: int) -> Feed:
        ws = WSConnection(ConnectionType.SERVER)
        try:
            ws.receive_data(head)
            events = list(ws.events())
        except RemoteProtocolError as exc:
            hint = exc.event_hint
            status = hint.status_code if isinstance(hint, RejectConnection) else 400
            return self._refuse(status if status in REASONS else 400, "a WebSocket upgrade was expected", nbytes)
        except UnicodeError:  # a Host that is not IDNA
            return self._refuse(400, "bad request", nbytes)
        if not events or not isinstance(events[0], Request):
            return self._refuse(400, "bad request", nbytes)
        if not origin_allowed(header(headers, b"origin"), header(headers, b"host"), self.config.origins):
            return self._refuse(403, "origin not allowed", nbytes)
        accept = ws.send(AcceptConnection())
        self._ws = ws
        self.phase = Phase.OPEN
        return self._feed_frames(rest, accept, opened=True, nbytes=nbytes)

    def _feed_frames(self, data: bytes, out: bytes, opened: bool, nbytes: int | None = None) -> Feed:
        assert self._ws is not None
        buffer = bytearray(out)
        lines: list[str] = []
        close: str | None = None
        frames = 0
        if data:
            self._ws.receive_data(data)
        for event in self._ws.events():
            frames += 1
            close = self._on_event(event, buffer, lines)
            if close is not None:
                break
        nbytes = len(data) if nbytes is None else nbytes
        return Feed(bytes(buffer), tuple(lines), opened, close, frames, nbytes)

    def _on_event(self, event: Event, out: bytearray, lines: list[str]) -> str | None:
        """Handle one wsproto event -> why to close, or None."""
        if isinstance(event, TextMessage):
            return self._on_text(event, out, lines)
        if isinstance(event, Ping):
            out += self._send(event.response())
            return None
        if isinstance(event, BytesMessage):
            out += self.close(BINARY_REFUSED, CLOSE_UNSUPPORTED)
            return "binary frame"
        if isinstance(event, CloseConnection):
            return self._on_close(event, out)
        return None  # a pong

    def _on_text(self, event: TextMessage, out: bytearray, lines: list[str]) -> str | None:
        self._message_size += len(event.data.encode("utf-8", "surrogatepass"))
        limit = self.config.max_message
        if self._message_size > limit:
            out += self.close(f"message too big (max {limit} bytes)", CLOSE_TOO_BIG)
            return "message too big"
        self._message.append(event.data)
        if event.message_finished:
            found, errors = split_lines("".join(self._message), self.config.max_line)
            for error in errors:
                out += error_frame(error.message())
            lines += found
            self._message, self._message_size = [], 0
        return None

    def _on_close(self, event: CloseConnection, out: bytearray) -> str:
        assert self._ws is not None
        if self._ws.state is ConnectionState.REMOTE_CLOSING:  # the client's close: answer it
            out += self._send(event.response())
            self.phase = Phase.DONE
            return f"client closed ({event.code})"
        out += self.close(event.reason or "protocol error", event.code)  # wsproto found a broken frame
        return f"protocol error ({event.code}): {event.reason}"

    def _send(self, event: Event) -> bytes:
        assert self._ws is not None
        return self._ws.send(event)

    # --- output -----------------------------------------------------------------

    def render(self, event: ChatEvent) -> bytes:
        """A chat event -> the bytes to write (nothing unless open)."""
        return render_event(event) if self.phase is Phase.OPEN else b""

    def close(self, reason: str, code: int = CLOSE_NORMAL) -> bytes:
        """Start the close handshake -> the close frame (nothing unless open)."""
        if self.phase is not Phase.OPEN or self._ws is None:
            self.phase = Phase.DONE
            return b""
        self.phase = Phase.DONE
        if self._ws.state not in (ConnectionState.OPEN, ConnectionState.REMOTE_CLOSING):
            return b""
        short = reason.encode("utf-8")[:MAX_CLOSE_REASON].decode("utf-8", "ignore")
        return self._send(CloseConnection(code=code, reason=short))

    @property
    def is_open(self) -> bool:
        return self.phase is Phase.OPEN
