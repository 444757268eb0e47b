"""IRC lines: bytes -> `IrcMessage` values, and values -> safe bytes (RFC 1459/2812, IRCv3 tags).

`IrcLineBuffer.feed(data)` splits what a socket gave into lines at CR, LF
or CRLF, incrementally, holding at most one line: a line longer than its
limit (512 bytes, plus 8191 for a tag section once `message-tags` is on)
yields one `TOO_LONG` and is dropped up to its end, so an endless line
costs nothing. `parse(line)` turns one line into an `IrcMessage` or None
(blank); invalid UTF-8 is `INVALID_UTF8`.

`line(...)` builds an outgoing line: every parameter is stripped of CR, LF,
NUL and the characters of `protocol.commands.UNSAFE`, middle parameters of
spaces too, and the line is cut to 512 bytes (tags apart) on a character
boundary, so nothing a peer sent can split or forge a line.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from protocol.commands import strip_unsafe

MAX_LINE = 512  # bytes, CRLF included, tags excluded
MAX_TAGS = 8191  # bytes of a tag section, '@' and the space included
MAX_PARAMS = 15


class IrcProblem(enum.Enum):
    TOO_LONG = "too long"
    INVALID_UTF8 = "invalid UTF-8"


@dataclass(frozen=True, slots=True)
class IrcMessage:
    command: str  # upper case
    params: tuple[str, ...]
    tags: str = ""  # the raw tag section, without '@' (kept for nothing but its size today)


class IrcLineBuffer:
    """CR/LF line splitter with a hard cap per line."""

    __slots__ = ("_line", "_skipping", "max_line")

    def __init__(self, max_line: int = MAX_LINE) -> None:
        self.max_line = max_line  # bytes before the line end
        self._line = bytearray()
        self._skipping = False  # in a line that was too long: drop up to its end

    def feed(self, data: bytes) -> list[bytes | IrcProblem]:
        out: list[bytes | IrcProblem] = []
        start = 0
        while start < len(data):
            end = _next_break(data, start)
            chunk = data[start:end]
            if not self._skipping:
                if len(self._line) + len(chunk) > self.max_line:
                    self._line.clear()
                    self._skipping = True
                    out.append(IrcProblem.TOO_LONG)
                else:
                    self._line += chunk
            if end == len(data):
                break
            if not self._skipping and self._line:
                out.append(bytes(self._line))
            self._line.clear()
            self._skipping = False
            start = end + 1
        return out


def too_long(raw: bytes) -> bool:
    """A line (no CR/LF) over the limits: 510 bytes of message, MAX_TAGS of tags ('@' and space included)."""
    if raw.startswith(b"@"):
        cut = raw.find(b" ")
        tags, raw = (raw, b"") if cut < 0 else (raw[:cut + 1], raw[cut + 1:])
        if len(tags) > MAX_TAGS:
            return True
    return len(raw) > MAX_LINE - 2


def _next_break(data: bytes, start: int) -> int:
    cr, lf = data.find(b"\r", start), data.find(b"\n", start)
    ends = [i for i in (cr, lf) if i >= 0]
    return min(ends) if ends else len(data)


def parse(raw: bytes) -> IrcMessage | IrcProblem | None:
    """One line (no CR/LF) -> a message, a problem, or None for a blank line."""
    try:
        text = raw.decode()
    except UnicodeDecodeError:
        return IrcProblem.INVALID_UTF8
    tags = ""
    if text.startswith("@"):
        tags, _, text = text[1:].partition(" ")
    text = text.lstrip(" ")
    if text.startswith(":"):  # a client's prefix means nothing to us
        _, _, text = text.partition(" ")
    head, sep, trailing = text.partition(" :")
    words = [w for w in head.split(" ") if w]
    if not words:
        return None
    params = words[1:]
    if sep:
        params.append(trailing)
    if len(params) > MAX_PARAMS:  # RFC: the 15th takes the rest
        params = [*params[: MAX_PARAMS - 1], " ".join(params[MAX_PARAMS - 1:])]
    return IrcMessage(words[0].upper(), tuple(params), tags)


def _middle(param: str) -> str:
    """A parameter that is not the last: no blank, no leading ':', never empty."""
    safe = strip_unsafe(param).replace(" ", "").lstrip(":")
    return safe or "*"


def line(prefix: str, command: str, *params: str, tags: str = "", ctcp: str = "") -> bytes:
    """One outgoing line: `@tags :prefix COMMAND p1 p2 :last` CRLF, safe and at most 512 bytes.

    With `ctcp` (a CTCP command such as ACTION), the last parameter is sent as that CTCP:
    its own text is filtered, then wrapped in the \x01 delimiters."""
    parts = [f":{_middle(prefix)}"] if prefix else []
    parts.append(command)
    parts.extend(_middle(p) for p in params[:-1])
    if params:
        parts.append(":" + (f"\x01{ctcp} " if ctcp else "") + strip_unsafe(params[-1]))
    body = _cut(" ".join(parts).encode(), MAX_LINE - 3 if ctcp else MAX_LINE - 2)
    body += (b"\x01" if ctcp and params else b"") + b"\r\n"
    if tags:
        return b"@" + _cut(strip_unsafe(tags).replace(" ", "").encode(), MAX_TAGS - 2) + b" " + body
    return body


def _cut(data: bytes, limit: int) -> bytes:
    """`data` cut to `limit` bytes without splitting a UTF-8 character."""
    if len(data) <= limit:
        return data
    return data[:limit].decode(errors="ignore").encode()


def escape_tag_value(value: str) -> str:
    """IRCv3 tag value escaping."""
    return (value.replace("\\", "\\\\").replace(";", "\\:").replace(" ", "\\s")
            .replace("\r", "\\r").replace("\n", "\\n"))
