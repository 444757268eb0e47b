"""A client's text line -> a `Command` value.

`parse_line(text)` is total: it returns a command, `None` for a line that
means nothing (blank), or raises `CommandError` whose text is the exact
error reply (without the leading "! "). Names are validated here, so the
workers only ever see well-formed nicks and rooms.

Arguments are separated by ASCII spaces and tabs only: `str.split()` would
also split on U+0085, U+2028, U+3000 ..., so `/nick evil<U+0085>` would pass
as `evil`. Such a name is one argument here, and refused as invalid.

Untrusted text is made safe to show with the characters of `UNSAFE`:
`clean_text` removes them from message text (messages, /me, /msg, /quit
reasons), `shown` from an unknown command name echoed back, and `quoted`
echoes an invalid nick or room as a Python literal, which escapes them.
`protocol.render` applies the same set again to every line it sends. The set:

- C0 controls except TAB (U+0000-U+0008, U+000A-U+001F), DEL (U+007F) and
  C1 controls (U+0080-U+009F): ESC/CSI sequences, NEL, OSC drive terminals;
- line and paragraph separators U+2028, U+2029 (line splitters break on them);
- bidi controls: embeddings and overrides U+202A-U+202E, isolates
  U+2066-U+2069, marks LRM U+200E, RLM U+200F, ALM U+061C (they reorder text);
- invisible format characters with no use in chat text: ZERO WIDTH SPACE
  U+200B, WORD JOINER and the invisible operators U+2060-U+2064, the BOM /
  ZERO WIDTH NO-BREAK SPACE U+FEFF, the deprecated format controls
  U+206A-U+206F, interlinear annotation U+FFF9-U+FFFB;
- lone surrogates U+D800-U+DFFF (never valid UTF-8; they cannot be encoded).

Kept on purpose: TAB; ZWNJ U+200C and ZWJ U+200D (emoji sequences, Persian
and Indic scripts need them); soft hyphen, variation selectors and tag
characters (emoji flags); other letters that merely look alike. None of them
moves a cursor, ends a line or reorders text.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from protocol.errors import CommandError
from protocol.messages import quick
from protocol.replies import ReplyCode

_NICK = r"[A-Za-z][A-Za-z0-9_-]{0,31}"
NICK_RE = re.compile(_NICK + r"\Z")
ROOM_RE = re.compile(r"#[A-Za-z0-9_.-]{1,64}\Z")
HISTORY_DEFAULT = 20
HISTORY_MAX = 100
TOPIC_MAX = 300  # characters of a room topic, after filtering
# a message id as the chat makes them, `<cid>/<seq>` (opaque to clients, but bounded and plain)
MESSAGE_ID_RE = re.compile(r"[A-Za-z0-9_.:!-]{1,160}/[0-9]{1,20}\Z")
SHOWN_MAX = 40  # characters of an unknown command name shown back
QUOTED_MAX = 80  # characters of an invalid name shown back (a room name is up to 65)
# what one user could use to drive another's terminal or reorder its text (see above)
UNSAFE = re.compile(
    r"[\x00-\x08\x0a-\x1f\x7f-\x9f"  # C0 but TAB, DEL, C1
    r"\u2028\u2029"  # line and paragraph separators
    r"\u202a-\u202e\u2066-\u2069\u200e\u200f\u061c"  # bidi controls
    r"\u200b\u2060-\u2064\ufeff\u206a-\u206f\ufff9-\ufffb"  # invisible format characters
    r"\ud800-\udfff]"  # lone surrogates
)


@dataclass(frozen=True, slots=True)
class Nick:
    nick: str


@dataclass(frozen=True, slots=True)
class Join:
    room: str


@dataclass(frozen=True, slots=True)
class Part:
    room: str | None


@quick
@dataclass(frozen=True, slots=True)
class Msg:
    target: str  # a nick, or a room (starting with '#')
    text: str


@quick
@dataclass(frozen=True, slots=True)
class Me:
    text: str
    room: str | None = None  # None: the current room


@dataclass(frozen=True, slots=True)
class Who:
    room: str | None


@dataclass(frozen=True, slots=True)
class Rooms:
    pass


@quick
@dataclass(frozen=True, slots=True)
class History:
    room: str | None
    count: int
    after: str = ""  # a message id: the messages after it instead of the last `count`


@quick
@dataclass(frozen=True, slots=True)
class Topic:
    room: str | None
    text: str | None  # None: show the topic


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


Command = Nick | Join | Part | Msg | Me | Who | Rooms | History | Topic | Ping | Json | Quit | Help | Say

HELP_LINES = (
    "commands:",
    "/nick NAME            change your nickname",
    "/join #ROOM           join a room and make it your current room",
    "/part [#ROOM]         leave a room (default: the current one)",
    "/msg TARGET TEXT      private message to a nick, or a message to a room",
    "/me TEXT              an action in the current room",
    "/action #ROOM TEXT    an action in a room you are in",
    "/who [#ROOM]          members of a room",
    "/rooms                rooms and their member counts",
    "/history [#ROOM] [N]  the last N messages of a room (default 20, max 100)",
    "/history [#ROOM] after ID  the messages of a room after the message ID",
    "/topic [#ROOM] [TEXT] show a room's topic, or set it",
    "/ping                 check the server: replies pong",
    "/json                 receive JSON lines from now on",
    "/quit [REASON]        leave",
    "/help                 this list",
    "any other line is a message to your current room (// sends a line starting with /)",
)


def strip_unsafe(text: str) -> str:
    """`text` without the characters of `UNSAFE`."""
    if text.isprintable():  # the common case, at C speed: every UNSAFE character is unprintable
        return text
    return UNSAFE.sub("", text)


def clean_text(text: str) -> str:
    """Text as others will see it: no unsafe characters, no edge blanks."""
    return strip_unsafe(text).strip()


def shown(text: str) -> str:
    """Untrusted text echoed bare in a reply: safe and at most SHOWN_MAX characters."""
    return strip_unsafe(text)[:SHOWN_MAX]


def quoted(text: str) -> str:
    """Untrusted text echoed as a Python literal: repr escapes every unsafe character."""
    if len(text) > QUOTED_MAX:
        return f"{text[:QUOTED_MAX]!r}..."
    return repr(text)


def check_nick(name: str) -> str:
    if not NICK_RE.match(name):
        raise CommandError(
            f"invalid nickname {quoted(name)}: 1-32 letters, digits, _ or -, starting with a letter",
            ReplyCode.BAD_NICK, (name,),
        )
    return name


def check_room(name: str) -> str:
    """A valid room name, in its canonical (lower-case) form."""
    if not ROOM_RE.match(name):
        raise CommandError(
            f"invalid room name {quoted(name)}: # then 1-64 letters, digits, _, - or .",
            ReplyCode.BAD_ROOM, (name,),
        )
    return name.lower()


def _split(rest: str) -> list[str]:
    return [arg for arg in rest.replace("\t", " ").split(" ") if arg]


def _first_word(text: str) -> tuple[str, str]:
    """(the text up to the first ASCII blank, the rest without edge ASCII blanks)."""
    if "\t" not in text:  # the common case, in fewer steps
        first, _, rest = text.partition(" ")
        return first, rest.strip(" ")
    cut, tab = text.find(" "), text.find("\t")
    if cut < 0 or 0 <= tab < cut:
        cut = tab
    if cut < 0:
        return text, ""
    return text[:cut], text[cut:].strip(" \t")


def _usage(name: str, text: str) -> CommandError:
    return CommandError(f"usage: {text}", ReplyCode.USAGE, (name,))


def _no_args(name: str, rest: str) -> None:
    if rest:
        raise _usage(name, f"/{name}")


def _parse_nick(rest: str) -> Command:
    args = _split(rest)
    if len(args) != 1:
        raise _usage("nick", "/nick NAME")
    return Nick(check_nick(args[0]))


def _parse_join(rest: str) -> Command:
    args = _split(rest)
    if len(args) != 1:
        raise _usage("join", "/join #ROOM")
    return Join(check_room(args[0]))


def _optional_room(name: str, rest: str) -> str | None:
    args = _split(rest)
    if len(args) > 1:
        raise _usage(name, f"/{name} [#ROOM]")
    return check_room(args[0]) if args else None


def _parse_msg(rest: str) -> Command:
    target, text = _first_word(rest)
    text = clean_text(text)
    if not target or not text:
        raise _usage("msg", "/msg TARGET TEXT")
    if target.startswith("#"):
        return Msg(check_room(target), text)
    return Msg(check_nick(target), text)


def _parse_me(rest: str) -> Command:
    text = clean_text(rest)
    if not text:
        raise _usage("me", "/me TEXT")
    return Me(text)


def _parse_action(rest: str) -> Command:
    room, text = _first_word(rest)
    text = clean_text(text)
    if not room or not text:
        raise _usage("action", "/action #ROOM TEXT")
    return Me(text, check_room(room))


def _parse_history(rest: str) -> Command:
    args = _split(rest)
    room = None
    if args and args[0].startswith("#"):
        room = check_room(args.pop(0))
    count = HISTORY_DEFAULT
    if args and args[0].lower() == "after":
        if len(args) != 2 or not MESSAGE_ID_RE.match(args[1]):
            raise _usage("history", "/history [#ROOM] after ID  (ID: a message id, as in JSON mode)")
        return History(room, HISTORY_MAX, args[1])
    if args:
        if len(args) > 1 or not re.fullmatch(r"[0-9]{1,3}", args[0]) or not 1 <= int(args[0]) <= HISTORY_MAX:
            raise _usage("history", f"/history [#ROOM] [N]  (N from 1 to {HISTORY_MAX})")
        count = int(args[0])
    return History(room, count)


def _parse_topic(rest: str) -> Command:
    first, text = _first_word(rest)
    room = None
    if first.startswith("#"):
        room = check_room(first)
    else:
        text = rest
    text = clean_text(text)
    if not text:
        return Topic(room, None)
    if len(text) > TOPIC_MAX:
        raise CommandError(f"topic too long (max {TOPIC_MAX} characters)", ReplyCode.BAD_ARGUMENT, ("topic",))
    return Topic(room, text)


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
    "action": _parse_action,
    "who": lambda rest: Who(_optional_room("who", rest)),
    "rooms": _parse_simple(Rooms),
    "history": _parse_history,
    "topic": _parse_topic,
    "ping": _parse_simple(Ping),
    "json": _parse_simple(Json),
    "quit": lambda rest: Quit(clean_text(rest)),
    "help": _parse_simple(Help),
}


# `/msg NICK TEXT` with plain spaces: a private message in its usual shape, read in one match (a third
# less work than the general path). Any other shape (a tab, a room, an invalid nick, no text) goes the
# general way, which says what is wrong.
_PRIVATE = re.compile(rf"/[Mm][Ss][Gg] +({_NICK}) +(.*)", re.DOTALL)


def parse_line(line: str) -> Command | None:
    """Parse one client line. Raises CommandError with the reply text."""
    if not line.startswith("/"):
        text = clean_text(line)
        return Say(text) if text else None
    if line.startswith("//"):
        text = clean_text(line[1:])
        return Say(text) if text else None
    private = _PRIVATE.fullmatch(line)
    if private is not None and (text := clean_text(private[2])):
        return Msg(private[1], text)
    return _parse_command(line[1:])


def _parse_command(text: str) -> Command | None:
    """A line starting with one '/', without it: the general path."""
    name, rest = _first_word(text)
    parser = _PARSERS.get(name.lower())
    if parser is None:
        raise CommandError(f"unknown command /{shown(name)} (try /help)", ReplyCode.UNKNOWN_COMMAND, (shown(name),))
    return parser(rest)  # type: ignore[operator]
