"""The dialects the load generator speaks: our line protocol (README), IRC, and WebSocket.

`chat`: a plain line goes to the current room, `/msg NICK text` is private;
a room message arrives as `#room <nick> text`. `irc` (RFC 1459/2812 subset):
`PRIVMSG #room :text` and `PRIVMSG nick :text`, arriving as
`:nick!user@host PRIVMSG target :text`, lines ending in CRLF. Either way the
benchmark text is the last three words of the line, so the flows parse both
alike. IRC specifics the handshakes and flows need live here too: the lines
that register (NICK/USER), become an operator with relaxed flood protection
(ngIRCd: `OPER` then user mode `+F`), join, quit and answer a PING, and how to
tell an error reply. `ws`: the line protocol's commands in masked text
frames to the stack's web door (`GET /ws`), which answers in JSON mode from
the start, so a sender gets its own room and private messages back
(`Dialect.echoes`); the framing and the JSON are `bench.wsframe`'s, below
the handlers, which see the same lines as in `chat`.
"""

from __future__ import annotations

from dataclasses import dataclass

CHAT = "chat"
IRC = "irc"
WS = "ws"
DIALECTS = (CHAT, IRC, WS)
# numerics that are no error for us: 422 = no MOTD file
HARMLESS = frozenset({b"422"})
OPER_NAME = b"bench"  # matches the [Operator] of bench/irc_conf/ngircd.conf
OPER_PASSWORD = b"bench"
PING_READY = b"PING :bench-ready\r\n"  # its PONG comes once the server has handled all before it


@dataclass(frozen=True, slots=True)
class Dialect:
    name: str

    @property
    def irc(self) -> bool:
        return self.name == IRC

    @property
    def ws(self) -> bool:
        return self.name == WS

    @property
    def echoes(self) -> bool:
        """A sender receives its own messages too (JSON mode)."""
        return self.name == WS

    @property
    def end(self) -> bytes:
        """What ends a line: CRLF in IRC; nothing over WebSocket, where the frame ends it."""
        return b"\r\n" if self.irc else b"" if self.ws else b"\n"

    def to_room(self, room: str) -> bytes:
        """What precedes the text of a message to `room` (the chat protocol: the current room, nothing)."""
        return f"PRIVMSG {room} :".encode() if self.irc else b""

    def to_nick(self, nick: str) -> bytes:
        return f"PRIVMSG {nick} :".encode() if self.irc else f"/msg {nick} ".encode()


def register(nick: str) -> bytes:
    return f"NICK {nick}\r\nUSER {nick} 0 * :{nick}\r\n".encode()


def oper(nick: str) -> bytes:
    return b"OPER %s %s\r\nMODE %s +F\r\n" % (OPER_NAME, OPER_PASSWORD, nick.encode())


def join(room: str) -> bytes:
    return f"JOIN {room}\r\n".encode()


def command_of(line: bytes) -> bytes:
    """`:prefix CMD ...` or `CMD ...` -> CMD (a numeric for replies)."""
    words = line.split(b" ", 2)
    if words[0].startswith(b":"):
        return words[1] if len(words) > 1 else b""
    return words[0]


def is_error(line: bytes) -> bool:
    """An ERROR line or a 4xx/5xx numeric reply that is not harmless."""
    command = command_of(line)
    if command == b"ERROR":
        return True
    return len(command) == 3 and command[:1] in b"45" and command.isdigit() and command not in HARMLESS


def pong(line: bytes) -> bytes | None:
    """The answer to a server's PING, None for any other line."""
    if line.startswith(b"PING"):
        return b"PONG" + line[4:].rstrip(b"\r") + b"\r\n"
    return None
