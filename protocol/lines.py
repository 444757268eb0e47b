"""Bytes from a TCP client -> text lines, incrementally.

`LineBuffer.feed(data)` takes whatever one `recv` returned (a part of a
line, many lines, a telnet negotiation split anywhere) and returns the
complete items: `str` lines and `LineError` values. It keeps only the line
being assembled, and never more than `max_line` bytes of it: the cap is a
security limit, so an endless line costs nothing. A line that one read
brings whole is decoded from that read: a buffer exists only while a line is
split across reads (an idle connection holds none).

Rules (README, "The protocol in brief": Transport):
- LF ends a line; a CR right before it is dropped; empty lines vanish.
- Telnet commands (IAC ...) are removed, including sub-negotiation
  (IAC SB ... IAC SE); IAC IAC stands for a literal 0xFF byte.
- A line longer than `max_line` bytes gives one `LineError(TOO_LONG)` and
  is dropped whole.
- A line that is not UTF-8 gives `LineError(INVALID_UTF8)`.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

DEFAULT_MAX_LINE = 4096

IAC = 255
SB = 250
SE = 240
WILL, WONT, DO, DONT = 251, 252, 253, 254


class LineProblem(enum.Enum):
    TOO_LONG = "too long"
    INVALID_UTF8 = "invalid UTF-8"


@dataclass(frozen=True, slots=True)
class LineError:
    problem: LineProblem
    max_line: int

    def message(self) -> str:
        if self.problem is LineProblem.TOO_LONG:
            return f"line too long (max {self.max_line} bytes)"
        return "invalid UTF-8"


class _Telnet(enum.Enum):
    DATA = 0
    IAC = 1  # saw IAC
    OPTION = 2  # saw IAC WILL/WONT/DO/DONT, the option byte follows
    SUB = 3  # inside IAC SB ... until IAC SE
    SUB_IAC = 4  # inside a sub-negotiation, saw IAC


class LineBuffer:
    """Incremental line splitter for one connection."""

    __slots__ = ("_line", "_overflow", "_telnet", "max_line")

    def __init__(self, max_line: int = DEFAULT_MAX_LINE) -> None:
        if max_line < 1:
            raise ValueError("max_line must be at least 1")
        self.max_line = max_line
        self._line: bytearray | None = None  # the start of a line split across reads
        self._overflow = False
        self._telnet = _Telnet.DATA

    def feed(self, data: bytes) -> list[str | LineError]:
        """Add received bytes; return every line they complete, in order."""
        if self._telnet is _Telnet.DATA and IAC not in data:
            return self._feed_plain(data)
        out: list[str | LineError] = []
        plain = bytearray()
        for byte in data:
            if self._telnet_byte(byte):
                plain.append(byte)
        return self._feed_plain(bytes(plain), out)

    def _telnet_byte(self, byte: int) -> bool:
        """Advance the telnet state machine; True if `byte` is payload."""
        state = self._telnet
        if state is _Telnet.DATA:
            if byte == IAC:
                self._telnet = _Telnet.IAC
                return False
            return True
        if state is _Telnet.IAC:
            if byte == IAC:  # escaped 0xFF: a data byte
                self._telnet = _Telnet.DATA
                return True
            if byte in (WILL, WONT, DO, DONT):
                self._telnet = _Telnet.OPTION
            elif byte == SB:
                self._telnet = _Telnet.SUB
            else:  # a two-byte command: NOP, AYT, IP, GA ...
                self._telnet = _Telnet.DATA
            return False
        if state is _Telnet.OPTION:
            self._telnet = _Telnet.DATA
            return False
        if state is _Telnet.SUB:
            if byte == IAC:
                self._telnet = _Telnet.SUB_IAC
            return False
        # SUB_IAC: IAC SE ends the sub-negotiation; anything else stays inside
        self._telnet = _Telnet.DATA if byte == SE else _Telnet.SUB
        return False

    def _feed_plain(
        self, data: bytes, out: list[str | LineError] | None = None
    ) -> list[str | LineError]:
        out = [] if out is None else out
        start = 0
        while True:
            end = data.find(b"\n", start)
            if end < 0:
                self._append(data[start:])
                return out
            if self._line is None and not self._overflow:  # the whole line is in this read
                self._finish_line(data[start:end], out)
            else:
                self._append(data[start:end])
                self._finish_line(self._line or b"", out)
            start = end + 1

    def _append(self, chunk: bytes) -> None:
        if self._overflow or not chunk:
            return
        held = 0 if self._line is None else len(self._line)
        # one byte of slack for a CR that the LF may yet drop
        if held + len(chunk) > self.max_line + 1:
            self._overflow = True
            self._line = None
            return
        if self._line is None:
            self._line = bytearray(chunk)
        else:
            self._line += chunk

    def _finish_line(self, line: bytes | bytearray, out: list[str | LineError]) -> None:
        if line.endswith(b"\r"):
            line = line[:-1]
        if self._overflow or len(line) > self.max_line:
            out.append(LineError(LineProblem.TOO_LONG, self.max_line))
        elif line:
            try:
                out.append(line.decode("utf-8"))
            except UnicodeDecodeError:
                out.append(LineError(LineProblem.INVALID_UTF8, self.max_line))
        self._overflow = False
        self._line = None

    @property
    def pending(self) -> int:
        """Bytes held for the line being assembled (at most max_line + 1)."""
        return 0 if self._line is None else len(self._line)
