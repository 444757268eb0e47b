"""The IRC dialect of one connection, as a pure state machine (no I/O).

`IrcConnection.feed(data)` takes what one read returned and gives back
actions, in the order of the client's lines:

- `ToChat(lines)`: line-protocol commands for the chat (`/nick alice`,
  `/join #a`, `/msg #a text`, `/action #a text`, `/ping` ...), to be sent
  as the connection's lines like any text client's;
- `Reply(data)`: bytes to write back at once (registration, CAP, MOTD,
  local errors, and PONG while nothing went to the chat yet).

`render(event, own_cid)` turns a chat delivery into IRC lines (b"" for
nothing). The chat answers a connection's lines in their order, so the
replies that go through it keep that order; PING goes through it too
(`/ping`, answered `pong`) once the connection has sent the chat anything,
so a PONG never overtakes the replies of earlier lines. Local errors (461,
421, 432 ...) are written at once: they answer a line the chat never saw.

Registration: CAP LS/REQ/END (server-time, message-tags, echo-message;
anything else is NAKed), NICK and USER. When both are in (and CAP is done),
the nick goes to the chat as `/nick NAME`; the chat's `nick_set` reply
completes the registration (001-005, MOTD or 422), `nick_taken` gives 433
and the client may send NICK again. Before that, other commands get 451.

Replies that need to know what asked (WHO and NAMES both read `/who`) keep
a small bounded queue of pending requests, matched by room.

Limits: a line is at most 512 bytes (plus 8191 of tags once message-tags
is on); longer gives 417, invalid UTF-8 a NOTICE; text is filtered with
`protocol.commands`' filter before it reaches the chat, and every line
sent back goes through `protocol.irc_wire.line`. `lines_seen` counts the
client's lines, for the gateway's flood control.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

from protocol import irc_render
from protocol.commands import NICK_RE, ROOM_RE, TOPIC_MAX, clean_text
from protocol.irc_render import CHANNEL_MODES, USER_MODES
from protocol.irc_wire import (
    MAX_LINE,
    MAX_TAGS,
    IrcLineBuffer,
    IrcMessage,
    IrcProblem,
    escape_tag_value,
    line,
    parse,
    too_long,
)
from protocol.messages import ChatEvent

CAPS = ("server-time", "message-tags", "echo-message")
PENDING_MAX = 64  # WHO/NAMES/PING requests awaiting the chat's answer


@dataclass(frozen=True, slots=True)
class ToChat:
    lines: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Reply:
    data: bytes


Action = ToChat | Reply


@dataclass(frozen=True, slots=True)
class IrcSettings:
    server_name: str
    network: str = "chat"
    max_rooms: int = 50
    motd: tuple[str, ...] = ()


class IrcConnection:
    """One IRC client: its registration, capabilities and pending requests."""

    def __init__(self, settings: IrcSettings) -> None:
        self.settings = settings
        self.server: str = settings.server_name
        self.nick: str = "*"  # as the client knows itself: '*' until registered
        self.registered: bool = False
        self.caps: set[str] = set()
        self.channels: set[str] = set()
        self.lines_seen = 0  # the client's lines so far: the gateway's flood accounting
        self._buffer = IrcLineBuffer(MAX_LINE - 2)
        self._wanted_nick = ""
        self._user = False
        self._negotiating = False
        self._talked = False  # a line went to the chat: PONG must go through it too
        self._pings: deque[str] = deque(maxlen=PENDING_MAX)
        self._whos: deque[tuple[str, str]] = deque(maxlen=PENDING_MAX)  # (room, 'who' | 'names')
        self.away = False  # AWAY: kept locally, not shared with the chat
        self.joining: set[str] = set()  # rooms asked for and not yet answered (see `_send_to`)

    # --- input --------------------------------------------------------------------

    def feed(self, data: bytes) -> list[Action]:
        actions: list[Action] = []
        for item in self._buffer.feed(data):
            self.lines_seen += 1
            if item is IrcProblem.TOO_LONG or (isinstance(item, bytes) and too_long(item)):
                actions.append(Reply(self._num("417", "Input line was too long")))
                continue
            msg = parse(item) if isinstance(item, bytes) else item
            actions.extend(self._one(msg))
        return _merged(actions)

    def _one(self, msg: IrcMessage | IrcProblem | None) -> list[Action]:
        if msg is None:
            return []
        if msg is IrcProblem.INVALID_UTF8:
            return [Reply(self._notice("invalid UTF-8: line dropped"))]
        if isinstance(msg, IrcProblem):
            return [Reply(self._num("417", "Input line was too long"))]
        handler = _ALWAYS.get(msg.command) or (_REGISTERED if self.registered else _BEFORE).get(msg.command)
        if handler is None:
            if not self.registered and msg.command in _REGISTERED:
                return [Reply(self._num("451", "You have not registered"))]
            return [Reply(self._num("421", msg.command[:32], "Unknown command"))]
        return handler(self, msg.params)

    def to_chat(self, *lines: str) -> list[Action]:
        self._talked = True
        return [ToChat(lines)]

    # --- output helpers -----------------------------------------------------------

    def _num(self, code: str, *params: str) -> bytes:
        return line(self.server, code, self.nick, *params)

    def _notice(self, text: str) -> bytes:
        return line(self.server, "NOTICE", self.nick, text)

    def mask(self, nick: str) -> str:
        return f"{nick}!{nick}@{self.server}"

    def tags_for(self, event: ChatEvent) -> str:
        tags = []
        if "server-time" in self.caps and event.ts:
            stamp = datetime.fromtimestamp(event.ts, UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3]
            tags.append(f"time={stamp}Z")
        if "message-tags" in self.caps and event.id:
            tags.append(f"msgid={escape_tag_value(event.id)}")
        return ";".join(tags)

    def ping(self, token: str) -> bytes:
        """A server PING, for the gateway's idle check."""
        return line("", "PING", token)

    def render(self, event: ChatEvent, own_cid: str) -> bytes:
        """A delivery as IRC lines for this client (b"" for nothing); see `protocol.irc_render`."""
        return irc_render.render(self, event, own_cid)

    # --- pending requests (used by protocol.irc_render) ---------------------------

    def pending_who(self, room: str) -> str:
        """'who' or 'names': what asked for the members of `room` (oldest first)."""
        for i, (wanted, kind) in enumerate(self._whos):
            if wanted in (room, ""):
                del self._whos[i]
                return kind
        return "names"

    def pending_ping(self) -> str:
        return self._pings.popleft() if self._pings else self.server

    # --- registration -------------------------------------------------------------

    def _cap(self, params: tuple[str, ...]) -> list[Action]:
        sub = params[0].upper() if params else ""
        if sub == "LS":
            self._negotiating = not self.registered
            return [Reply(line(self.server, "CAP", self.nick, "LS", " ".join(CAPS)))]
        if sub == "LIST":
            return [Reply(line(self.server, "CAP", self.nick, "LIST", " ".join(sorted(self.caps))))]
        if sub == "REQ" and len(params) > 1:
            return self._cap_req(params[1])
        if sub == "END":
            self._negotiating = False
            return self._try_register()
        return [Reply(self._num("410", sub[:32] or "*", "Invalid CAP command"))]

    def _cap_req(self, wanted: str) -> list[Action]:
        names = wanted.split()
        if not names or any(n.lstrip("-") not in CAPS for n in names):
            return [Reply(line(self.server, "CAP", self.nick, "NAK", wanted[:400]))]
        for name in names:
            if name.startswith("-"):
                self.caps.discard(name[1:])
            else:
                self.caps.add(name)
        tags = MAX_TAGS if "message-tags" in self.caps else 0
        self._buffer.max_line = MAX_LINE - 2 + tags
        return [Reply(line(self.server, "CAP", self.nick, "ACK", " ".join(names)))]

    def _nick(self, params: tuple[str, ...]) -> list[Action]:
        if not params or not params[0]:
            return [Reply(self._num("431", "No nickname given"))]
        wanted = params[0]
        if not NICK_RE.match(wanted):
            return [Reply(self._num("432", _shown(wanted), "Erroneous nickname"))]
        if self.registered:
            return self.to_chat(f"/nick {wanted}")
        self._wanted_nick = wanted
        return self._try_register()

    def _user_cmd(self, params: tuple[str, ...]) -> list[Action]:
        if self.registered:
            return [Reply(self._num("462", "You may not reregister"))]
        if len(params) < 4:
            return [Reply(self._num("461", "USER", "Not enough parameters"))]
        self._user = True
        return self._try_register()

    def _try_register(self) -> list[Action]:
        if self.registered or self._negotiating or not self._user or not self._wanted_nick:
            return []
        return self.to_chat(f"/nick {self._wanted_nick}")

    # --- commands ------------------------------------------------------------------

    def _ping(self, params: tuple[str, ...]) -> list[Action]:
        token = params[0] if params else ""
        if not token:
            return [Reply(self._num("409", "No origin specified"))]
        if not self._talked:
            return [Reply(line(self.server, "PONG", self.server, token))]
        self._pings.append(token)
        return self.to_chat("/ping")

    def _quit(self, params: tuple[str, ...]) -> list[Action]:
        reason = clean_text(params[0]) if params else ""
        return self.to_chat(f"/quit {reason}".rstrip())

    def _join(self, params: tuple[str, ...]) -> list[Action]:
        if not params:
            return [Reply(self._num("461", "JOIN", "Not enough parameters"))]
        if params[0] == "0":  # leave every channel
            return self.to_chat(*(f"/part {room}" for room in sorted(self.channels))) if self.channels else []
        actions: list[Action] = []
        for room in params[0].split(","):
            if not ROOM_RE.match(room):
                actions.append(Reply(self._num("403", _shown(room), "No such channel")))
            else:
                if len(self.joining) < 4 * self.settings.max_rooms:
                    self.joining.add(room.lower())
                actions.extend(self.to_chat(f"/join {room}"))
        return actions

    def _part(self, params: tuple[str, ...]) -> list[Action]:
        if not params:
            return [Reply(self._num("461", "PART", "Not enough parameters"))]
        actions: list[Action] = []
        for room in params[0].split(","):
            if not ROOM_RE.match(room):
                actions.append(Reply(self._num("403", _shown(room), "No such channel")))
            else:
                actions.extend(self.to_chat(f"/part {room}"))
        return actions

    def _privmsg(self, params: tuple[str, ...], notice: bool = False) -> list[Action]:
        command = "NOTICE" if notice else "PRIVMSG"
        if not params or not params[0]:
            return [] if notice else [Reply(self._num("411", f"No recipient given ({command})"))]
        if len(params) < 2 or not params[1]:
            return [] if notice else [Reply(self._num("412", "No text to send"))]
        actions: list[Action] = []
        for target in params[0].split(",")[:4]:
            actions.extend(self._send_to(target, params[1], notice))
        return actions

    def _send_to(self, target: str, raw: str, notice: bool) -> list[Action]:
        is_room = target.startswith("#")
        if not (ROOM_RE if is_room else NICK_RE).match(target):
            return [] if notice else [Reply(self._num("401", _shown(target), "No such nick/channel"))]
        known = self.channels | self.joining
        if is_room and target.lower() not in known and len(self.joining) < 4 * self.settings.max_rooms:
            return [] if notice else [Reply(self._num("404", target, "Cannot send to channel"))]
        action = _ctcp_action(raw)
        if action is None and raw.startswith("\x01"):
            return []  # other CTCP (VERSION, PING ...): not supported, dropped
        text = clean_text(action if action is not None else raw)
        if not text:
            return []
        if action is not None:
            return self.to_chat(f"/action {target} {text}" if is_room else f"/msg {target} * {text}")
        return self.to_chat(f"/msg {target} {text}")

    def _notice_cmd(self, params: tuple[str, ...]) -> list[Action]:
        return self._privmsg(params, notice=True)

    def _members(self, params: tuple[str, ...], kind: str) -> list[Action]:
        target = params[0].split(",")[0] if params else ""
        if target and not ROOM_RE.match(target):
            end = "315" if kind == "who" else "366"
            return [Reply(self._num(end, _shown(target), f"End of /{kind.upper()} list"))]
        self._whos.append((target.lower(), kind))
        return self.to_chat(f"/who {target}".rstrip())

    def _who(self, params: tuple[str, ...]) -> list[Action]:
        return self._members(params, "who")

    def _names(self, params: tuple[str, ...]) -> list[Action]:
        return self._members(params, "names")

    def _list(self, params: tuple[str, ...]) -> list[Action]:
        return self.to_chat("/rooms")

    def _topic(self, params: tuple[str, ...]) -> list[Action]:
        if not params:
            return [Reply(self._num("461", "TOPIC", "Not enough parameters"))]
        room = params[0]
        if not ROOM_RE.match(room):
            return [Reply(self._num("403", _shown(room), "No such channel"))]
        if len(params) < 2:
            return self.to_chat(f"/topic {room}")
        text = clean_text(params[1])
        if not text:
            return [Reply(self._notice("clearing a topic is not supported"))]
        return self.to_chat(f"/topic {room} {text[:TOPIC_MAX]}")

    def _motd(self, params: tuple[str, ...]) -> list[Action]:
        return [Reply(irc_render.motd(self))]

    def _away(self, params: tuple[str, ...]) -> list[Action]:
        self.away = bool(params and params[0])
        if self.away:
            return [Reply(self._num("306", "You have been marked as being away"))]
        return [Reply(self._num("305", "You are no longer marked as being away"))]

    def _mode(self, params: tuple[str, ...]) -> list[Action]:
        if not params:
            return [Reply(self._num("461", "MODE", "Not enough parameters"))]
        target = params[0]
        if target.startswith("#"):
            if len(params) > 1 and params[1].lstrip("+") == "b":
                return [Reply(self._num("368", _shown(target), "End of channel ban list"))]
            if len(params) > 1:
                return [Reply(self._num("482", _shown(target), "Channel modes cannot be changed here"))]
            return [Reply(self._num("324", _shown(target), f"+{CHANNEL_MODES}"))]
        if target.lower() != self.nick.lower():
            return [Reply(self._num("502", "Cannot change mode for other users"))]
        return [Reply(self._num("221", f"+{USER_MODES}"))]

    def _chathistory(self, params: tuple[str, ...]) -> list[Action]:
        lines, error = irc_render.chathistory_lines(params)
        if error:
            sub = params[0].upper()[:16] if params else "*"
            return [Reply(line(self.server, "FAIL", "CHATHISTORY", "INVALID_PARAMS", sub, error))]
        return self.to_chat(*lines)

    def _pong(self, params: tuple[str, ...]) -> list[Action]:
        return []

    def _pass(self, params: tuple[str, ...]) -> list[Action]:
        return [] if not self.registered else [Reply(self._num("462", "You may not reregister"))]


def _ctcp_action(raw: str) -> str | None:
    """The text of a CTCP ACTION, or None."""
    if raw.startswith("\x01ACTION ") or raw.startswith("\x01ACTION\x01"):
        return raw[len("\x01ACTION"):].strip("\x01").strip()
    return None


def _shown(text: str) -> str:
    return clean_text(text)[:40] or "*"


def _merged(actions: list[Action]) -> list[Action]:
    """Consecutive ToChat actions become one: one event for the lines of one read."""
    out: list[Action] = []
    for action in actions:
        if isinstance(action, ToChat) and out and isinstance(out[-1], ToChat):
            out[-1] = ToChat(out[-1].lines + action.lines)
        else:
            out.append(action)
    return out


Handler = Callable[[IrcConnection, tuple[str, ...]], list[Action]]
_ALWAYS: dict[str, Handler] = {
    "CAP": IrcConnection._cap,
    "NICK": IrcConnection._nick,
    "PING": IrcConnection._ping,
    "PONG": IrcConnection._pong,
    "QUIT": IrcConnection._quit,
    "PASS": IrcConnection._pass,
}
_BEFORE: dict[str, Handler] = {"USER": IrcConnection._user_cmd}
_REGISTERED: dict[str, Handler] = {
    "USER": IrcConnection._user_cmd,
    "JOIN": IrcConnection._join,
    "PART": IrcConnection._part,
    "PRIVMSG": IrcConnection._privmsg,
    "NOTICE": IrcConnection._notice_cmd,
    "NAMES": IrcConnection._names,
    "WHO": IrcConnection._who,
    "LIST": IrcConnection._list,
    "TOPIC": IrcConnection._topic,
    "MOTD": IrcConnection._motd,
    "AWAY": IrcConnection._away,
    "MODE": IrcConnection._mode,
    "CHATHISTORY": IrcConnection._chathistory,
}
