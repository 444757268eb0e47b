"""A naive single-process Trio chat server: the benchmark's yardstick.

Written the way a competent developer writes a chat server on a first
day, and not made slow on purpose: one task per client, a dict of rooms,
a dict of nicks, and every line written to each receiver in turn (a lock
per client, since Trio forbids two tasks sending on one stream at once).
It speaks the subset of the protocol (README) the workloads use: the greeting that
names a guest nick, /nick, /join, /msg, /ping, /quit, and plain lines to
the current room (`#room <nick> text` for the others).

    python -m bench.baseline --port 0   ->   "chat-baseline listening on 127.0.0.1:PORT"
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import itertools
import re

import trio

NICK_RE = re.compile(r"[A-Za-z][A-Za-z0-9_-]{0,31}\Z")
ROOM_RE = re.compile(r"#[A-Za-z0-9_.-]{1,64}\Z")
MAX_LINE = 4096


class Client:
    def __init__(self, stream: trio.SocketStream, nick: str) -> None:
        self.stream = stream
        self.nick = nick
        self.rooms: set[str] = set()
        self.room: str | None = None
        self.lock = trio.Lock()

    async def send(self, line: str) -> None:
        try:
            async with self.lock:
                await self.stream.send_all((line + "\n").encode())
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass  # its own task notices and cleans up


class ChatServer:
    def __init__(self) -> None:
        self.nicks: dict[str, Client] = {}  # lower-case nick -> client
        self.rooms: dict[str, set[Client]] = {}
        self.guests = itertools.count(1)

    async def handle(self, stream: trio.SocketStream) -> None:
        nick = f"guest-{next(self.guests)}"
        client = Client(stream, nick)
        self.nicks[nick] = client
        try:
            await client.send(f"* welcome! you are {nick}: /nick NAME to change it, /join #room to talk")
            async for line in read_lines(stream):
                if not await self.on_line(client, line):
                    break
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        finally:
            await self.leave(client, f"* {client.nick} quit")
            await stream.aclose()

    async def on_line(self, client: Client, line: str) -> bool:
        """Handle one line -> False when the client quit."""
        if not line:
            return True
        if line.startswith("/") and not line.startswith("//"):
            command, _, arg = line[1:].partition(" ")
            return await self.command(client, command.lower(), arg.strip())
        if client.room is None:
            await client.send("! join a room first: /join #name")
        else:
            await self.to_room(client.room, f"{client.room} <{client.nick}> {line.removeprefix('/')}", client)
        return True

    async def command(self, client: Client, command: str, arg: str) -> bool:
        if command == "nick":
            await self.nick(client, arg)
        elif command == "join":
            await self.join(client, arg.lower())
        elif command == "msg":
            target, _, text = arg.partition(" ")
            await self.private(client, target, text)
        elif command == "ping":
            await client.send("* pong")
        elif command == "quit":
            await client.send("* bye")
            return False
        else:
            await client.send(f"! unknown command /{command} (try /help)")
        return True

    async def nick(self, client: Client, new: str) -> None:
        if not NICK_RE.match(new):
            await client.send("! a nick is 1-32 letters, digits, _ or -, starting with a letter")
        elif new.lower() in self.nicks and self.nicks[new.lower()] is not client:
            await client.send(f"! {new} is taken")
        else:
            old = client.nick
            del self.nicks[old.lower()]
            client.nick = new
            self.nicks[new.lower()] = client
            await client.send(f"* you are now {new}")
            for room in client.rooms:
                await self.to_room(room, f"* {old} is now known as {new}", client)

    async def join(self, client: Client, room: str) -> None:
        if not ROOM_RE.match(room):
            await client.send("! a room is # and 1-64 letters, digits, _ - or .")
            return
        members = self.rooms.setdefault(room, set())
        if client not in members:
            await self.to_room(room, f"* {client.nick} joined {room}", client)
            members.add(client)
            client.rooms.add(room)
        client.room = room
        await client.send(f"* you joined {room} ({len(members)} members)")

    async def private(self, client: Client, target: str, text: str) -> None:
        if target.startswith("#"):
            if target.lower() not in client.rooms:
                await client.send(f"! you are not in {target}: /join {target} first")
            else:
                await self.to_room(target.lower(), f"{target.lower()} <{client.nick}> {text}", client)
        elif (receiver := self.nicks.get(target.lower())) is None:
            await client.send(f"! no such nick: {target}")
        else:
            await receiver.send(f"*{client.nick}* {text}")

    async def to_room(self, room: str, line: str, sender: Client) -> None:
        for member in list(self.rooms.get(room, ())):
            if member is not sender:
                await member.send(line)

    async def leave(self, client: Client, line: str) -> None:
        self.nicks.pop(client.nick.lower(), None)
        for room in client.rooms:
            members = self.rooms.get(room, set())
            members.discard(client)
            if not members:
                self.rooms.pop(room, None)
        for room in client.rooms:
            await self.to_room(room, line, client)


async def read_lines(stream: trio.SocketStream):  # type: ignore[no-untyped-def]
    """Lines of at most MAX_LINE bytes, LF or CRLF, decoded; too long or bad ones are skipped."""
    buffer = b""
    while data := await stream.receive_some(65536):
        buffer += data
        *lines, buffer = buffer.split(b"\n")
        if len(buffer) > MAX_LINE:
            buffer = b""
        for raw in lines:
            if len(raw) <= MAX_LINE:
                try:
                    yield raw.rstrip(b"\r").decode()
                except UnicodeDecodeError:
                    continue


async def serve(host: str, port: int) -> None:
    server = ChatServer()
    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(functools.partial(trio.serve_tcp, host=host), server.handle, port)
        bound_host, bound_port = listeners[0].socket.getsockname()[:2]
        print(f"chat-baseline listening on {bound_host}:{bound_port}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args()
    with contextlib.suppress(KeyboardInterrupt):  # Ctrl-C is the way to stop it
        trio.run(serve, args.host, args.port)


if __name__ == "__main__":
    main()
