"""A line-oriented TCP client for the end-to-end tests: real sockets, deadlines."""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Callable

DEFAULT_TIMEOUT = 10.0


class ChatClient:
    def __init__(self, port: int, host: str = "127.0.0.1", greet: bool = True, source: str = "") -> None:
        self.sock = socket.create_connection((host, port), timeout=DEFAULT_TIMEOUT,
                                             source_address=(source, 0) if source else None)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._buf = b""
        self.seen: list[str] = []
        self.closed = False
        self.greeting = self.expect(lambda line: line.startswith("* ")) if greet else ""

    @property
    def guest_nick(self) -> str:
        words = [w.strip(":,.!") for w in self.greeting.split()]
        return next(w for w in words if w.startswith("guest-"))

    def send(self, *lines: str) -> None:
        self.sock.sendall("".join(line + "\n" for line in lines).encode())

    def join(self, room: str) -> str:
        """/join in text mode, waiting for the reply -> the reply line."""
        self.send(f"/join {room}")
        return self.expect(lambda line: line.startswith("* you joined"))

    def send_raw(self, data: bytes) -> None:
        self.sock.sendall(data)

    def read_line(self, deadline: float) -> str | None:
        """The next line, or None at the deadline or EOF."""
        while b"\n" not in self._buf:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or self.closed:
                return None
            self.sock.settimeout(remaining)
            try:
                data = self.sock.recv(65536)
            except TimeoutError:
                return None
            except ConnectionResetError:
                data = b""
            if not data:
                self.closed = True
                return None
            self._buf += data
        raw, _, self._buf = self._buf.partition(b"\n")
        line = raw.decode()
        self.seen.append(line)
        return line

    def expect(self, match: str | Callable[[str], bool], timeout: float = DEFAULT_TIMEOUT) -> str:
        """Read until a line matches (equal to a str, or a predicate); skipped lines are kept in `seen`."""
        test = (lambda line: line == match) if isinstance(match, str) else match
        deadline = time.monotonic() + timeout
        start = len(self.seen)
        while True:
            line = self.read_line(deadline)
            if line is None:
                raise AssertionError(f"no line matching {match!r}; got {self.seen[start:]!r}")
            if test(line):
                return line

    def sync(self, timeout: float = DEFAULT_TIMEOUT) -> list[str]:
        """Send /ping; -> the lines that came before the pong (our earlier replies all do)."""
        start = len(self.seen)
        self.send("/ping")
        pong = "* pong"
        self.expect(lambda line: line == pong or line.startswith('{"type": "info", "text": "pong"'), timeout)
        return self.seen[start:-1]

    def expect_json(self, match: Callable[[dict], bool], timeout: float = DEFAULT_TIMEOUT) -> dict:
        line = self.expect(lambda line: line.startswith("{") and match(json.loads(line)), timeout)
        return json.loads(line)

    def wait_closed(self, timeout: float = DEFAULT_TIMEOUT) -> list[str]:
        """Read until the server closes the connection; -> the lines read."""
        start = len(self.seen)
        deadline = time.monotonic() + timeout
        while not self.closed:
            if self.read_line(deadline) is None and not self.closed:
                raise AssertionError(f"connection still open; got {self.seen[start:]!r}")
        return self.seen[start:]

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> ChatClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def connect_when_open(port: int, timeout: float = DEFAULT_TIMEOUT) -> ChatClient:
    """A client of a gateway whose client port may still be closed (it closes it while it
    cannot serve, and reopens it once the broker hears it again): connects are retried
    while they are refused, until `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return ChatClient(port)
        except ConnectionRefusedError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)  # poll interval while the port is closed
