"""A chat delivery -> IRC lines for one `IrcConnection`, and CHATHISTORY -> `/history`.

Deliveries are rendered natively: messages and actions as PRIVMSG (CTCP
ACTION), joins, parts, quits, nick and topic changes as the commands
themselves, and replies by their `code` (`protocol.replies`) as numerics.
An info or error without a code (or with one this version does not know)
becomes a NOTICE with its text. A sender gets its own messages back only
with `echo-message`, as IRC clients expect. A room message's line depends on
the connection only through `shared_key` (the server name, `server-time`,
`message-tags`), so a gateway renders it once per key (`render_shared`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from protocol.commands import HISTORY_MAX, MESSAGE_ID_RE, ROOM_RE, TOPIC_MAX
from protocol.irc_wire import line
from protocol.messages import ChatEvent, EventType
from protocol.replies import ReplyCode as R
from protocol.replies import reply_code

if TYPE_CHECKING:  # protocol.irc imports this module
    from protocol.irc import IrcConnection

NAMES_PER_LINE = 20
VERSION = "chat-1"
USER_MODES, CHANNEL_MODES = "i", "n"  # no WHO outside shared rooms; no messages from outside a room

_SAID = frozenset({EventType.MESSAGE, EventType.ACTION, EventType.PRIVATE})


def render(conn: IrcConnection, event: ChatEvent, own_cid: str) -> bytes:
    kind = event.type
    if kind in _SAID and event.origin == own_cid and "echo-message" not in conn.caps:
        return b""
    if kind is EventType.INFO or kind is EventType.ERROR:
        return _reply(conn, event)
    draw = _EVENTS.get(kind)
    return draw(conn, event) if draw else line(conn.server, "NOTICE", conn.nick, event.text)


_SHARED = frozenset({EventType.MESSAGE, EventType.ACTION})
SharedKey = tuple[str, bool, bool]


def shared_key(conn: IrcConnection) -> SharedKey:
    """What a room message's line depends on for this connection: connections with the same key
    are shown the same line (the gateway renders it once for them all)."""
    caps = conn.caps
    return conn.server, "server-time" in caps, "message-tags" in caps


def render_shared(conn: IrcConnection, event: ChatEvent) -> bytes | None:
    """A room message as every connection with `conn`'s `shared_key` is shown it, unless it is its
    own (then `render`: echo-message decides); None: the event is rendered per connection."""
    if event.type in _SHARED and event.room:
        return _said(conn, event, event.type)
    return None


# --- what others do --------------------------------------------------------------


def _said(conn: IrcConnection, event: ChatEvent, kind: str) -> bytes:
    target = event.room or (event.to if event.type is EventType.PRIVATE else conn.nick)
    ctcp = "ACTION" if kind == EventType.ACTION else ""
    return line(conn.mask(event.sender), "PRIVMSG", target, event.text, tags=conn.tags_for(event), ctcp=ctcp)


def _message(conn: IrcConnection, event: ChatEvent) -> bytes:
    return _said(conn, event, event.type)


def _history(conn: IrcConnection, event: ChatEvent) -> bytes:
    return _said(conn, event, event.of)


def _join(conn: IrcConnection, event: ChatEvent) -> bytes:
    return line(conn.mask(event.sender), "JOIN", event.room)


def _part(conn: IrcConnection, event: ChatEvent) -> bytes:
    return line(conn.mask(event.sender), "PART", event.room)


def _quit(conn: IrcConnection, event: ChatEvent) -> bytes:
    reason = event.args[0] if event.code == R.QUIT and event.args else ""
    return line(conn.mask(event.sender), "QUIT", f"Quit: {reason}" if reason else "Quit")


def _nick(conn: IrcConnection, event: ChatEvent) -> bytes:
    return line(conn.mask(event.sender), "NICK", event.to)


def _topic(conn: IrcConnection, event: ChatEvent) -> bytes:
    topic = event.args[1] if event.code == R.TOPIC_SET and len(event.args) > 1 else event.text
    return line(conn.mask(event.sender), "TOPIC", event.room, topic)


_EVENTS: dict[EventType, Callable[[IrcConnection, ChatEvent], bytes]] = {
    EventType.MESSAGE: _message,
    EventType.ACTION: _message,
    EventType.PRIVATE: _message,
    EventType.HISTORY: _history,
    EventType.JOIN: _join,
    EventType.PART: _part,
    EventType.QUIT: _quit,
    EventType.NICK: _nick,
    EventType.TOPIC: _topic,
}


# --- replies to this connection's own lines ----------------------------------------------


def _reply(conn: IrcConnection, event: ChatEvent) -> bytes:
    code = reply_code(event.code)
    draw = _REPLIES.get(code) if code else None
    if draw is None or code is None or len(event.args) < _ARGS_NEEDED.get(code, 0):  # malformed: as free text
        return line(conn.server, "NOTICE", conn.nick, event.text)
    return draw(conn, event.args, event.text)


def _num(conn: IrcConnection, code: str, *params: str) -> bytes:
    return line(conn.server, code, conn.nick, *params)


def _welcome(conn: IrcConnection, args: tuple[str, ...], text: str) -> bytes:
    return b"" if not conn.registered else line(conn.server, "NOTICE", conn.nick, text)


def welcome(conn: IrcConnection, nick: str) -> bytes:
    """Registration done: the 001-005 burst and the MOTD."""
    conn.registered, conn.nick = True, nick
    s = conn.settings
    out = [
        _num(conn, "001", f"Welcome to the {s.network} IRC network, {nick}"),
        _num(conn, "002", f"Your host is {conn.server}, running version {VERSION}"),
        _num(conn, "003", "This server was created for chatting"),
        _num(conn, "004", conn.server, VERSION, USER_MODES, CHANNEL_MODES),
        _num(conn, "005", "CHANTYPES=#", "NICKLEN=32", "CHANNELLEN=65", "CASEMAPPING=ascii",
             f"CHANLIMIT=#:{s.max_rooms}", f"TOPICLEN={TOPIC_MAX}", "PREFIX=()",
             f"CHANMODES=,,,{CHANNEL_MODES}", f"NETWORK={s.network}", f"CHATHISTORY={HISTORY_MAX}",
             "are supported by this server"),
    ]
    return b"".join(out) + motd(conn)


def motd(conn: IrcConnection) -> bytes:
    if not conn.settings.motd:
        return _num(conn, "422", "MOTD File is missing")
    body = [_num(conn, "372", f"- {text}") for text in conn.settings.motd]
    return (_num(conn, "375", f"- {conn.server} Message of the day -") + b"".join(body)
            + _num(conn, "376", "End of /MOTD command."))


def _nick_set(conn: IrcConnection, args: tuple[str, ...], text: str) -> bytes:
    if not conn.registered:
        return welcome(conn, args[0])
    old, conn.nick = conn.nick, args[0]
    return line(conn.mask(old), "NICK", args[0])


def _nick_taken(conn: IrcConnection, args: tuple[str, ...], text: str) -> bytes:
    return _num(conn, "433", args[0], "Nickname is already in use")


def _joined(conn: IrcConnection, args: tuple[str, ...], text: str) -> bytes:
    room, topic, nicks = args[0], args[1], args[2:]
    conn.channels.add(room)
    conn.joining.discard(room)
    out = [line(conn.mask(conn.nick), "JOIN", room)]
    if topic:
        out.append(_num(conn, "332", room, topic))
    out.append(_names(conn, room, nicks))
    return b"".join(out)


def _names(conn: IrcConnection, room: str, nicks: tuple[str, ...]) -> bytes:
    out = [_num(conn, "353", "=", room, " ".join(nicks[i:i + NAMES_PER_LINE]))
           for i in range(0, len(nicks), NAMES_PER_LINE)]
    out.append(_num(conn, "366", room, "End of /NAMES list"))
    return b"".join(out)


def _parted(conn: IrcConnection, args: tuple[str, ...], text: str) -> bytes:
    conn.channels.discard(args[0])
    return line(conn.mask(conn.nick), "PART", args[0])


def _members(conn: IrcConnection, args: tuple[str, ...], text: str) -> bytes:
    room, nicks = args[0], args[1:]
    if conn.pending_who(room) == "names":
        return _names(conn, room, nicks)
    out = [_num(conn, "352", room, nick, conn.server, conn.server, nick, "H", f"0 {nick}") for nick in nicks]
    out.append(_num(conn, "315", room, "End of /WHO list"))
    return b"".join(out)


def _rooms(conn: IrcConnection, args: tuple[str, ...], text: str) -> bytes:
    listed = args[1:]
    out = [_num(conn, "321", "Channel", "Users  Name")]
    out += [_num(conn, "322", room, count, "") for room, count in zip(listed[::2], listed[1::2], strict=False)]
    if args and args[0] not in ("", "0"):
        out.append(line(conn.server, "NOTICE", conn.nick, f"... and {args[0]} more rooms"))
    out.append(_num(conn, "323", "End of /LIST"))
    return b"".join(out)


def _topic_is(conn: IrcConnection, args: tuple[str, ...], text: str) -> bytes:
    room, topic, by, at = args[0], args[1], args[2], args[3]
    if not topic:
        return _num(conn, "331", room, "No topic is set")
    out = _num(conn, "332", room, topic)
    if by:
        out += _num(conn, "333", room, conn.mask(by), str(int(_float(at))))
    return out


def _too_many_rooms(conn: IrcConnection, args: tuple[str, ...], text: str) -> bytes:
    room = args[1] if len(args) > 1 else "*"
    conn.joining.discard(room)
    return _num(conn, "405", room, "You have joined too many channels")


def _bye(conn: IrcConnection, args: tuple[str, ...], text: str) -> bytes:
    return line("", "ERROR", "Closing Link: bye")


def _session_lost(conn: IrcConnection, args: tuple[str, ...], text: str) -> bytes:
    out = [line(conn.mask(conn.nick), "PART", room, "session lost") for room in sorted(conn.channels)]
    conn.channels.clear()
    out.append(line(conn.mask(conn.nick), "NICK", args[0]))
    conn.nick = args[0]
    out.append(line(conn.server, "NOTICE", conn.nick, text))
    return b"".join(out)


def _simple(code: str, template: str, with_arg: bool = True) -> Callable[[IrcConnection, tuple[str, ...], str], bytes]:
    def draw(conn: IrcConnection, args: tuple[str, ...], text: str) -> bytes:
        if with_arg:
            return _num(conn, code, args[0] if args else "*", template)
        return _num(conn, code, template)

    return draw


def _float(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        return 0.0


_REPLIES: dict[R, Callable[[IrcConnection, tuple[str, ...], str], bytes]] = {
    R.WELCOME: _welcome,
    R.NICK_SET: _nick_set,
    R.NICK_TAKEN: _nick_taken,
    R.JOINED: _joined,
    R.JOIN_TOPIC: lambda conn, args, text: b"",  # JOINED carried it
    R.PARTED: _parted,
    R.MEMBERS: _members,
    R.ROOMS: _rooms,
    R.TOPIC_IS: _topic_is,
    R.TOO_MANY_ROOMS: _too_many_rooms,
    R.PONG: lambda conn, args, text: line(conn.server, "PONG", conn.server, conn.pending_ping()),
    R.BYE: _bye,
    R.HISTORY: lambda conn, args, text: b"",  # the messages follow; no batch without the batch cap
    R.SESSION_LOST: _session_lost,
    R.NOT_IN_ROOM: _simple("442", "You're not on that channel"),
    R.NO_SUCH_NICK: _simple("401", "No such nick/channel"),
    R.UNKNOWN_COMMAND: _simple("421", "Unknown command"),
    R.USAGE: _simple("461", "Not enough parameters"),
    R.BAD_NICK: _simple("432", "Erroneous nickname"),
    R.BAD_ROOM: _simple("403", "No such channel"),
    R.LINE_TOO_LONG: _simple("417", "Input line was too long", with_arg=False),
}


# the args a code's rendering reads (protocol.replies); an event with fewer is shown as its text
_ARGS_NEEDED = {R.NICK_SET: 1, R.NICK_TAKEN: 1, R.JOINED: 2, R.PARTED: 1, R.MEMBERS: 1, R.TOPIC_IS: 4,
                R.SESSION_LOST: 1}


# --- CHATHISTORY -> /history ------------------------------------------------------------


def chathistory_lines(params: tuple[str, ...]) -> tuple[tuple[str, ...], str]:
    """`CHATHISTORY LATEST|AFTER #room ref limit` -> (chat lines, '') or ((), what is wrong)."""
    if len(params) < 4 or params[0].upper() not in ("LATEST", "AFTER"):
        return (), "only CHATHISTORY LATEST #room */msgid=ID N and AFTER #room msgid=ID N are supported"
    sub, room, ref, limit = params[0].upper(), params[1], params[2], params[3]
    if not ROOM_RE.match(room):
        return (), "invalid channel"
    if not limit.isascii() or not limit.isdigit() or not 1 <= int(limit[:4]) <= HISTORY_MAX:
        return (), f"the limit must be 1-{HISTORY_MAX}"
    if ref == "*" and sub == "LATEST":
        return (f"/history {room} {int(limit)}",), ""
    msgid = ref[len("msgid="):] if ref.startswith("msgid=") else ""
    if not MESSAGE_ID_RE.match(msgid):
        return (), "only msgid= references to messages of this chat are supported"
    return (f"/history {room} after {msgid}",), ""
