"""A cluster whose gateways open every door (line, IRC, WebSocket), and an IRC
client over a real socket with deadlines, for the end-to-end tests."""

from __future__ import annotations

import re
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from tests.e2e.cluster import GATEWAY_ARGS, Cluster, start_cluster

DOOR_ARGS = ("--irc-listen", "127.0.0.1:0", "--irc-server-name", "irc.test", "--ws-listen", "127.0.0.1:0")
TIMEOUT = 10.0


@dataclass
class DoorCluster:
    cluster: Cluster
    irc_ports: list[int]
    ws_ports: list[int]

    @property
    def ports(self) -> list[int]:
        return self.cluster.ports

    def stop(self) -> None:
        self.cluster.stop()


def door_port(ready_line: str, door: str) -> int:
    match = re.search(rf" {door}=127\.0\.0\.1:(\d+)", ready_line)
    assert match, f"no {door}= in {ready_line!r}"
    return int(match.group(1))


def start_door_cluster(data_dir: Path, gateway_args: tuple[str, ...] = ()) -> DoorCluster:
    cluster = start_cluster(data_dir, workers=2, gateways=2, gateway_args=(*GATEWAY_ARGS, *DOOR_ARGS, *gateway_args))
    lines = [cluster.children[f"gw{i + 1}"].ready_line for i in range(2)]
    return DoorCluster(cluster, [door_port(ln, "irc") for ln in lines], [door_port(ln, "ws") for ln in lines])


class IrcClient:
    """Lines of IRC over a socket; `expect` waits for a line, with a deadline."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._buf = b""
        self.seen: list[str] = []
        self.closed = False

    def send(self, *lines: str) -> None:
        self.sock.sendall("".join(line + "\r\n" for line in lines).encode())

    def send_raw(self, data: bytes) -> None:
        self.sock.sendall(data)

    def read_line(self, deadline: float) -> str | None:
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
        text = raw.rstrip(b"\r").decode()
        self.seen.append(text)
        return text

    def expect(self, match: str | Callable[[str], bool], timeout: float = TIMEOUT) -> str:
        """The first line (from now) matching the regex or predicate."""
        test = (lambda ln: re.search(match, ln) is not None) if isinstance(match, str) else match
        deadline = time.monotonic() + timeout
        start = len(self.seen)
        while (got := self.read_line(deadline)) is not None:
            if test(got):
                return got
        raise AssertionError(f"no line matching {match!r}; got {self.seen[start:]}")

    def lines_until(self, match: str, timeout: float = TIMEOUT) -> list[str]:
        """Every line up to and including the first matching `match`."""
        start = len(self.seen)
        self.expect(match, timeout)
        return self.seen[start:]

    def register(self, nick: str) -> list[str]:
        """NICK and USER -> the registration burst, up to the end of the MOTD."""
        self.send(f"NICK {nick}", f"USER {nick} 0 * :{nick} test")
        return self.lines_until(r" (376|422) ")

    def sync(self, token: str = "sync") -> list[str]:
        """PING and wait for its PONG: every reply to earlier lines is in -> the lines meanwhile."""
        self.send(f"PING :{token}")
        return self.lines_until(rf"PONG \S+ :?{token}$")

    def wait_closed(self, timeout: float = TIMEOUT) -> list[str]:
        start = len(self.seen)
        deadline = time.monotonic() + timeout
        while self.read_line(deadline) is not None:
            pass
        assert self.closed, f"still open; got {self.seen[start:]}"
        return self.seen[start:]

    def close(self) -> None:
        self.sock.close()


class WsClient:
    """A WebSocket client over a real socket (wsproto, client side): lines out, JSON objects in."""

    def __init__(self, port: int, origin: str | None = None, path: str = "/ws") -> None:
        from wsproto import ConnectionType, WSConnection
        from wsproto.events import Request

        self.sock = socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT)
        self.ws = WSConnection(ConnectionType.CLIENT)
        self.port = port
        headers = [(b"Origin", origin.encode())] if origin else []
        self.sock.sendall(self.ws.send(Request(host=f"127.0.0.1:{port}", target=path, extra_headers=headers)))
        self.events: list[object] = []  # every wsproto event received
        self.objects: list[dict] = []
        self.closed = False

    def send(self, *lines: str) -> None:
        from wsproto.events import TextMessage

        self.sock.sendall(self.ws.send(TextMessage("\n".join(lines))))

    def frame(self, text: str) -> bytes:
        from wsproto.events import TextMessage

        return self.ws.send(TextMessage(text))

    def send_raw(self, data: bytes) -> None:
        self.sock.sendall(data)

    def send_frame(self, event: object) -> None:
        self.sock.sendall(self.ws.send(event))  # type: ignore[arg-type]

    def _pump(self, deadline: float) -> bool:
        """Read once -> False at the deadline or EOF."""
        import json

        from wsproto.events import TextMessage

        remaining = deadline - time.monotonic()
        if remaining <= 0 or self.closed:
            return False
        self.sock.settimeout(remaining)
        try:
            data = self.sock.recv(65536)
        except TimeoutError:
            return False
        except ConnectionResetError:
            data = b""
        self.ws.receive_data(data or None)
        for event in self.ws.events():
            self.events.append(event)
            if isinstance(event, TextMessage):
                self.objects.append(json.loads(event.data))
        if not data:
            self.closed = True
        return True

    def expect(self, match: Callable[[dict], bool], timeout: float = TIMEOUT) -> dict:
        deadline = time.monotonic() + timeout
        checked = 0
        while True:
            for obj in self.objects[checked:]:
                if match(obj):
                    return obj
            checked = len(self.objects)
            if not self._pump(deadline):
                raise AssertionError(f"no matching object; got {self.objects[-10:]}")

    def expect_event(self, kind: type, timeout: float = TIMEOUT) -> object:
        deadline = time.monotonic() + timeout
        checked = 0
        while True:
            for event in self.events[checked:]:
                if isinstance(event, kind):
                    return event
            checked = len(self.events)
            if not self._pump(deadline):
                raise AssertionError(f"no {kind.__name__}; got {self.events[-10:]}")

    def wait_closed(self, timeout: float = TIMEOUT) -> None:
        deadline = time.monotonic() + timeout
        while self._pump(deadline):
            pass
        assert self.closed, "still open"

    def close(self) -> None:
        self.sock.close()


def http_get(port: int, request: bytes, timeout: float = TIMEOUT) -> bytes:
    """Send raw bytes, read until the server closes -> everything it wrote."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(request)
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
        return b"".join(chunks)
