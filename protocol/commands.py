"""A client's text line -> a `Command` value.

`parse_line(text)` is total: it returns a command, `None` for a line that
means nothing (blank), or raises `CommandError` whose text is the exact
error reply (without the leading "! "). Names are validated here, so the
workers only ever see well-formed nicks and rooms.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from protocol.errors import CommandError

NICK_RE = re.compile(r"[A-Za-z][A-Za-z0-9_-]{0,31}\Z")
ROOM_RE = re.compile(r"#[A-Za-z0-9_.-]{1,64}\Z")
HISTORY_DEFAULT = 20
HISTORY_MAX = 100
# C0 controls (but TAB) and DEL would let one user drive another's terminal
_CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")


@dataclass(frozen=True, slots=True)
class Nick:
    nick: str


@dataclass(frozen=True, slots=True)
class Join:
    room: str


@dataclass(frozen=True, slots=True)
class Part:
    room: str | None


@dataclass(frozen=True, slots=True)
class Msg:
    target: str  # a nick, or a room (starting with '#')
    text: str


@dataclass(frozen=True, slots=True)
class Me:
    text: str


@dataclass(frozen=True, slots=True)
class Who:
    room: str | None


@dataclass(frozen=True, slots=True)
class Rooms:
    pass


@dataclass(frozen=True, slots=True)
class History:
    room: str | None
    count: int


@dataclass(frozen=True, slots=True)
class Ping:
    pass


@dataclass(frozen=True, slots=True)
class Json:
    pass


@dataclass(frozen=True, slots=True)
class Quit:
    reason: str


@dataclass(frozen=True, slots=True)
class Help:
    pass


@dataclass(frozen=True, slots=True)
class Say:
    """Plain text to the current room."""

    text: str


Command = Nick | Join | Part | Msg | Me | Who | Rooms | History | Ping | Json | Quit | Help | Say

HELP_LINES = (
    "commands:",
    "/nick NAME            change your nickname",
    "/join #ROOM           join a room and make it your current room",
    "/part [#ROOM]         leave a room (default: the current one)",
    "/msg TARGET TEXT      private message to a nick, or a message to a room",
    "/me TEXT              an action in the current room",
    "/who [#ROOM]          members of a room",
    "/rooms                rooms and their member counts",
    "/history [#ROOM] [N]  the last N messages of a room (default 20, max 100)",
    "/ping                 check the server: replies pong",
    "/json                 receive JSON lines from now on",
    "/quit [REASON]        leave",
    "/help                 this list",
    "any other line is a message to your current room (// sends a line starting with /)",
)


def clean_text(text: str) -> str:
    """Text as others will see it: no terminal control characters, no edge blanks."""
    return _CONTROL.sub("", text).strip()


def check_nick(name: str) -> str:
    if not NICK_RE.match(name):
        raise CommandError(
            f"invalid nickname {name!r}: 1-32 letters, digits, _ or -, starting with a letter"
        )
    return name


def check_room(name: str) -> str:
    """A valid room name, in its canonical (lower-case) form."""
    if not ROOM_RE.match(name):
        raise CommandError(
            f"invalid room name {name!r}: # then 1-64 letters, digits, _, - or ."
        )
    return name.lower()


def _split(rest: str) -> list[str]:
    return rest.split()


def _no_args(name: str, rest: str) -> None:
    if rest:
        raise CommandError(f"usage: /{name}")


def _parse_nick(rest: str) -> Command:
    args = _split(rest)
    if len(args) != 1:
        raise CommandError("usage: /nick NAME")
    return Nick(check_nick(args[0]))


def _parse_join(rest: str) -> Command:
    args = _split(rest)
    if len(args) != 1:
        raise CommandError("usage: /join #ROOM")
    return Join(check_room(args[0]))


def _optional_room(name: str, rest: str) -> str | None:
    args = _split(rest)
    if len(args) > 1:
        raise CommandError(f"usage: /{name} [#ROOM]")
    return check_room(args[0]) if args else None


def _parse_msg(rest: str) -> Command:
    target, _, text = rest.partition(" ")
    text = clean_text(text)
    if not target or not text:
        raise CommandError("usage: /msg TARGET TEXT")
    if target.startswith("#"):
        return Msg(check_room(target), text)
    return Msg(check_nick(target), text)


def _parse_me(rest: str) -> Command:
    text = clean_text(rest)
    if not text:
        raise CommandError("usage: /me TEXT")
    return Me(text)


def _parse_history(rest: str) -> Command:
    args = _split(rest)
    room = None
    if args and args[0].startswith("#"):
        room = check_room(args.pop(0))
    count = HISTORY_DEFAULT
    if args:
        if len(args) > 1 or not re.fullmatch(r"[0-9]{1,3}", args[0]) or not 1 <= int(args[0]) <= HISTORY_MAX:
            raise CommandError(f"usage: /history [#ROOM] [N]  (N from 1 to {HISTORY_MAX})")
        count = int(args[0])
    return History(room, count)


def _parse_simple(cls: type) -> object:
    def parse(rest: str, name: str = cls.__name__.lower()) -> Command:
        _no_args(name, rest)
        return cls()  # type: ignore[no-any-return]

    return parse


_PARSERS = {
    "nick": _parse_nick,
    "join": _parse_join,
    "part": lambda rest: Part(_optional_room("part", rest)),
    "msg": _parse_msg,
    "me": _parse_me,
    "who": lambda rest: Who(_optional_room("who", rest)),
    "rooms": _parse_simple(Rooms),
    "history": _parse_history,
    "ping": _parse_simple(Ping),
    "json": _parse_simple(Json),
    "quit": lambda rest: Quit(clean_text(rest)),
    "help": _parse_simple(Help),
}


def parse_line(line: str) -> Command | None:
    """Parse one client line. Raises CommandError with the reply text."""
    if line.startswith("//"):
        text = clean_text(line[1:])
        return Say(text) if text else None
    if not line.startswith("/"):
        text = clean_text(line)
        return Say(text) if text else None
    name, _, rest = line[1:].partition(" ")
    parser = _PARSERS.get(name.lower())
    if parser is None:
        shown = clean_text(name)[:40]
        raise CommandError(f"unknown command /{shown} (try /help)")
    return parser(rest.strip())  # type: ignore[operator]
