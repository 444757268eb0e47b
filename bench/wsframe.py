"""The load generator's WebSocket client side (RFC 6455), in a few lines, without I/O.

A `WsClient` belongs to one connection. `request()` is the HTTP upgrade it
writes first (`GET /ws`, a fresh Sec-WebSocket-Key, no Origin: not a
browser). `frame(data)` wraps chat lines (LF-separated, as the line
protocol writes them) in one final, masked text frame with a fresh mask
key. `feed(data)` takes whatever one `recv` returned and gives back a
`Reading`: the lines the rest of the generator understands, control frames
to write (a pong for each ping, the close answer), and why to close, if so.

Until the `101 Switching Protocols` head (at most MAX_HEAD bytes) with
the right Sec-WebSocket-Accept has arrived, nothing else is read. Then each
server frame is unmasked and holds one JSON-mode object (the door speaks
JSON mode from the start). `to_line` renders it as the line protocol's text
mode would, so handshakes, flows and churn cycles read both alike:
`message`/`action`/`private`/`history` -> `TYPE FROM TEXT` (a room or
private message with a plain text: `TYPE - TEXT`, without a JSON parser; the benchmark
text stays the last three words), `error` -> `! TEXT`, anything else ->
`* TEXT`. A server close frame ends the connection as "closed by the server".
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import random
import struct
from dataclasses import dataclass

GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
WS_PATH = "/ws"
MAX_HEAD = 8192  # the 101 response head
MAX_FRAME = 1 << 20  # a server frame larger than this is no benchmark traffic
MAX_FRAGMENTS = 64  # frames of one fragmented message
OP_CONT, OP_TEXT, OP_BINARY, OP_CLOSE, OP_PING, OP_PONG = 0x0, 0x1, 0x2, 0x8, 0x9, 0xA
DELIVERIES = frozenset({"message", "action", "private", "history"})
CLOSED_BY_SERVER = "closed by the server"
# protocol.render's JSON (json.dumps, its default separators) of the deliveries the workloads count,
# by their first bytes (both kinds have 7 letters: one slice looks both up)
FAST_KINDS = {b'{"type": "%s", ' % kind: b"%s - " % kind for kind in (b"message", b"private")}
FAST_PREFIX_LEN = len(next(iter(FAST_KINDS)))
FAST_TEXT = b'"text": "'


def accept_for(key: bytes) -> bytes:
    """The Sec-WebSocket-Accept a server must answer `key` with."""
    return base64.b64encode(hashlib.sha1(key + GUID).digest())  # RFC 6455 prescribes SHA-1


def mask(payload: bytes, key: bytes) -> bytes:
    """XOR `payload` with the 4-byte `key` repeated (one big-integer XOR: fast for short payloads)."""
    size = len(payload)
    if not size:
        return payload
    keys = (key * (size // 4 + 1))[:size]
    return (int.from_bytes(payload, "big") ^ int.from_bytes(keys, "big")).to_bytes(size, "big")


def client_frame(payload: bytes, opcode: int = OP_TEXT) -> bytes:
    """One final, masked frame (a client's frame) around `payload`."""
    key = random.getrandbits(32).to_bytes(4, "big")  # a mask key, no secret
    size = len(payload)
    if size < 126:
        head = struct.pack("!BB", 0x80 | opcode, 0x80 | size)
    elif size < 1 << 16:
        head = struct.pack("!BBH", 0x80 | opcode, 0x80 | 126, size)
    else:
        head = struct.pack("!BBQ", 0x80 | opcode, 0x80 | 127, size)
    return head + key + mask(payload, key)


def to_line(payload: bytes) -> bytes:
    """One JSON-mode object -> the line the line protocol's text mode would show.

    A room or private message with a plain text (what the workloads send)
    takes a fast path without a JSON parser: json.dumps writes `"text": "` literally and
    escapes every quote inside a string, so the text ends at the next quote
    unless it holds a backslash. Its sender is left out: only the text counts.
    """
    kind = FAST_KINDS.get(payload[:FAST_PREFIX_LEN])
    if kind is not None:
        start = payload.find(FAST_TEXT, FAST_PREFIX_LEN)
        if start > 0:
            start += len(FAST_TEXT)
            end = payload.find(b'"', start)
            if end > 0 and b"\\" not in payload[start:end]:
                return kind + payload[start:end]
    return parsed_line(payload)


def parsed_line(payload: bytes) -> bytes:
    try:
        obj = json.loads(payload)
        kind, text = str(obj.get("type", "")), str(obj.get("text", ""))
    except (ValueError, AttributeError):
        return b"! not a JSON object: " + payload[:80]
    if kind in DELIVERIES:
        return f"{kind} {obj.get('from', '')} {text}".encode()
    return (("! " if kind == "error" else "* ") + text).encode()


@dataclass(frozen=True, slots=True)
class Reading:
    lines: list[bytes]
    reply: bytes = b""  # control frames to write now
    close: str | None = None  # close the connection after this, for this reason


class WsClient:
    """One connection's client-side WebSocket state (see the module docstring)."""

    __slots__ = ("buf", "fragments", "host", "key", "open")

    def __init__(self, host: str) -> None:
        self.host = host  # HOST:PORT, for the Host header
        self.key = base64.b64encode(os.urandom(16))
        self.open = False
        self.buf = b""
        self.fragments: list[bytes] = []

    def request(self) -> bytes:
        return (f"GET {WS_PATH} HTTP/1.1\r\nHost: {self.host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                f"Sec-WebSocket-Key: {self.key.decode()}\r\nSec-WebSocket-Version: 13\r\n\r\n").encode()

    def frame(self, data: bytes) -> bytes:
        return client_frame(data)

    def feed(self, data: bytes) -> Reading:
        buf = self.buf + data if self.buf else data
        if not self.open:
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                self.buf = buf
                return Reading([], close="upgrade response too long" if len(buf) > MAX_HEAD else None)
            problem = self._check_head(buf[:end])
            if problem is not None:
                return Reading([], close=problem)
            self.open = True
            buf = buf[end + 4:]
        return self._frames(buf)

    def _check_head(self, head: bytes) -> str | None:
        lines = head.split(b"\r\n")
        if not lines[0].startswith(b"HTTP/1.1 101"):
            return f"upgrade refused: {lines[0].decode(errors='replace')[:100]}"
        headers = dict(line.split(b":", 1) for line in lines[1:] if b":" in line)
        accept = {name.strip().lower(): value.strip() for name, value in headers.items()}.get(b"sec-websocket-accept")
        if accept != accept_for(self.key):
            return "upgrade answered with a wrong Sec-WebSocket-Accept"
        return None

    def _frames(self, buf: bytes) -> Reading:
        lines: list[bytes] = []
        reply = b""
        at, size = 0, len(buf)
        while size - at >= 2:
            first, second = buf[at], buf[at + 1]
            length, start = second & 0x7F, at + 2
            if second & 0x80:
                return Reading(lines, reply, "the server masked a frame")
            if length == 126:
                if size - at < 4:
                    break
                length, start = int.from_bytes(buf[at + 2:at + 4], "big"), at + 4
            elif length == 127:
                if size - at < 10:
                    break
                length, start = int.from_bytes(buf[at + 2:at + 10], "big"), at + 10
            if length > MAX_FRAME:
                return Reading(lines, reply, f"a server frame of {length} bytes")
            if size - start < length:
                break
            at = start + length
            payload, opcode = buf[start:at], first & 0x0F
            if opcode in (OP_TEXT, OP_CONT):
                if len(self.fragments) >= MAX_FRAGMENTS:
                    return Reading(lines, reply, f"a message of over {MAX_FRAGMENTS} fragments")
                message = self._message(payload, opcode, bool(first & 0x80))
                if message is not None:
                    lines.append(to_line(message))
            elif opcode == OP_PING:
                reply += client_frame(payload, OP_PONG)
            elif opcode == OP_CLOSE:
                return Reading(lines, reply + client_frame(payload[:2], OP_CLOSE), close_reason(payload))
            elif opcode != OP_PONG:
                return Reading(lines, reply, f"unexpected WebSocket opcode {opcode}")
        self.buf = buf[at:]
        return Reading(lines, reply)

    def _message(self, payload: bytes, opcode: int, final: bool) -> bytes | None:
        """A text frame or a continuation -> the whole message once its final frame came."""
        if opcode == OP_TEXT and final and not self.fragments:
            return payload
        self.fragments.append(payload)
        if not final:
            return None
        message = b"".join(self.fragments)
        self.fragments = []
        return message


def close_reason(payload: bytes) -> str:
    """A server's close frame -> why the connection ends ("closed by the server" for a normal close)."""
    code = int.from_bytes(payload[:2], "big") if len(payload) >= 2 else 1005
    if code in (1000, 1001, 1005):
        return CLOSED_BY_SERVER
    return f"{CLOSED_BY_SERVER} (WebSocket close {code}: {payload[2:].decode(errors='replace')[:80]})"
