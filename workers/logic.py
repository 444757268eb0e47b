"""The chat itself: a client event and the store -> `Effects`.

`Chat.handle(item, now)` is the whole behaviour of PROTOCOL.md. Each
command has one small handler taking the `At` of its line (connection,
event, line number, server time) and the parsed command.

Message IDs are derived from the line's ID, `<cid>/<seq>`: the gateway
numbers every line of a connection and connection IDs are unique across
the cluster, so the ID is unique without a round trip, and the same line
handled twice (a replay after a worker died) gets the same ID. Every
state change is a replayable script (`store.replayable`), so a replay
reproduces the first run's effects instead of applying them again.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from protocol import commands as c
from protocol.errors import CommandError
from protocol.messages import (
    ChatEvent,
    Connected,
    Disconnected,
    EventType,
    GatewayLost,
    Lines,
    WorkItem,
    gateway_of,
)
from workers.effects import Effects
from workers.store import Failed, Gone, Store

NO_ROOM = "join a room first: /join #name"
SESSION_LOST = "the service lost your session (a restart): you are now {nick}; /nick and /join again"


@dataclass(frozen=True, slots=True)
class At:
    """Where a line stands: its connection, its event, its own number, the time."""

    cid: str
    event: int
    seq: int
    now: float

    @property
    def op(self) -> tuple[int, int]:
        return (self.event, self.seq)

    @property
    def mid(self) -> str:
        return f"{self.cid}/{self.seq}"


def _not_in(room: str) -> str:
    return f"you are not in {room}: /join {room} first"


def _sorted_names(nicks: list[str]) -> str:
    return ", ".join(sorted(nicks, key=str.lower))


class Chat:
    def __init__(self, store: Store) -> None:
        self.store = store
        self._commands: dict[type, Callable[[Effects, At, Any], None]] = {
            c.Nick: self._nick,
            c.Join: self._join,
            c.Part: self._part,
            c.Msg: self._msg,
            c.Me: self._me,
            c.Say: self._say,
            c.Who: self._who,
            c.Rooms: self._rooms,
            c.History: self._history,
            c.Ping: lambda fx, at, cmd: fx.info(at.cid, "pong"),
            c.Json: self._json,
            c.Help: self._help,
            c.Quit: self._quit,
        }

    def handle(self, item: WorkItem, now: float, fx: Effects | None = None) -> Effects:
        """Handle one event into `fx`: if it raises, what was done so far stays in `fx`."""
        fx = Effects() if fx is None else fx
        match item:
            case Lines(cid, seq, lines):
                self._lines(fx, cid, seq, lines, now)
            case Connected(cid, _, addr):
                self._connected(fx, cid, addr)
            case Disconnected(cid, seq, reason):
                self._leave(fx, cid, (seq, seq), reason)
            case GatewayLost(gateway):
                self.store.bury_gateway(gateway)
                for cid in self.store.gateway_conns(gateway):
                    self._leave(fx, cid, (0, 0), "connection lost")
        return fx

    def _connected(self, fx: Effects, cid: str, addr: str) -> str | None:
        nick = self.store.connect(cid, gateway_of(cid), addr)
        if nick is None:
            fx.error(cid, "this server lost its link to the service: please reconnect")
            fx.close(cid, "gateway lost")
            return None
        fx.info(cid, f"welcome! you are {nick}: /nick NAME to change it, /join #room to talk, /help for all commands")
        return nick

    def _lines(self, fx: Effects, cid: str, event: int, lines: tuple[str, ...], now: float) -> None:
        for offset, line in enumerate(lines):
            at = At(cid, event, event + offset, now)
            try:
                cmd = c.parse_line(line)
            except CommandError as exc:
                fx.error(cid, str(exc))
                continue
            if cmd is None:
                continue
            if not self._run(fx, at, cmd):
                return

    def _run(self, fx: Effects, at: At, cmd: c.Command) -> bool:
        """Run one command -> False once the connection is gone."""
        try:
            self._commands[type(cmd)](fx, at, cmd)
        except Gone:
            if isinstance(cmd, c.Quit) or not self._recover(fx, at.cid):
                return False
            self._commands[type(cmd)](fx, at, cmd)
        return not isinstance(cmd, c.Quit)

    def _recover(self, fx: Effects, cid: str) -> bool:
        """Redis forgot a live connection: register it again and say so."""
        nick = self.store.connect(cid, gateway_of(cid), "")
        if nick is None:
            fx.error(cid, "this server lost its link to the service: please reconnect")
            fx.close(cid, "gateway lost")
            return False
        fx.info(cid, SESSION_LOST.format(nick=nick))
        return True

    def _leave(self, fx: Effects, cid: str, op: tuple[int, int], reason: str) -> None:
        gone = self.store.leave(op, cid)
        if gone is None:
            return
        nick, others = gone
        text = f"{nick} quit" + (f" ({reason})" if reason else "")
        fx.deliver(others, ChatEvent(EventType.QUIT, text, sender=nick))

    def _quit(self, fx: Effects, at: At, cmd: c.Quit) -> None:
        fx.info(at.cid, "bye")
        self._leave(fx, at.cid, at.op, cmd.reason)
        fx.close(at.cid, "quit")

    def _nick(self, fx: Effects, at: At, cmd: c.Nick) -> None:
        res = self.store.set_nick(at.op, at.cid, cmd.nick)
        if isinstance(res, Failed):
            fx.error(at.cid, f"nickname {cmd.nick} is taken")
            return
        old, others = res
        fx.info(at.cid, f"you are now {cmd.nick}")
        if old != cmd.nick:
            event = ChatEvent(EventType.NICK, f"{old} is now known as {cmd.nick}", sender=old, to=cmd.nick)
            fx.deliver(others, event)

    def _join(self, fx: Effects, at: At, cmd: c.Join) -> None:
        res = self.store.join(at.op, at.cid, cmd.room)
        assert not isinstance(res, Failed)
        nick, added, members, nicks = res
        fx.info(at.cid, f"you joined {cmd.room} ({len(members)} here: {_sorted_names(nicks)})")
        if added:
            others = [m for m in members if m != at.cid]
            fx.deliver(others, ChatEvent(EventType.JOIN, f"{nick} joined {cmd.room}", room=cmd.room, sender=nick))

    def _part(self, fx: Effects, at: At, cmd: c.Part) -> None:
        res = self.store.part(at.op, at.cid, cmd.room)
        if isinstance(res, Failed):
            fx.error(at.cid, _not_in(res.room) if res.why == "notin" else "you are in no room")
            return
        nick, room, current, rest = res
        now_in = f"; your current room is {current}" if current else ""
        fx.info(at.cid, f"you left {room}{now_in}")
        fx.deliver(rest, ChatEvent(EventType.PART, f"{nick} left {room}", room=room, sender=nick))

    def _to_room(self, fx: Effects, at: At, room: str | None, text: str, kind: EventType) -> None:
        res = self.store.say(at.op, at.cid, room, text, at.mid, at.now, kind.value)
        if isinstance(res, Failed):
            fx.error(at.cid, _not_in(res.room) if res.why == "notin" else NO_ROOM)
            return
        nick, room, members, ts = res
        fx.deliver(members, ChatEvent(kind, text, room=room, sender=nick, id=at.mid, ts=ts, origin=at.cid))

    def _say(self, fx: Effects, at: At, cmd: c.Say) -> None:
        self._to_room(fx, at, None, cmd.text, EventType.MESSAGE)

    def _me(self, fx: Effects, at: At, cmd: c.Me) -> None:
        self._to_room(fx, at, None, cmd.text, EventType.ACTION)

    def _msg(self, fx: Effects, at: At, cmd: c.Msg) -> None:
        if cmd.target.startswith("#"):
            self._to_room(fx, at, cmd.target, cmd.text, EventType.MESSAGE)
            return
        res = self.store.private(at.cid, cmd.target)
        if isinstance(res, Failed):
            fx.error(at.cid, f"no such nick: {cmd.target}")
            return
        nick, to_cid, to_nick = res
        event = ChatEvent(EventType.PRIVATE, cmd.text, sender=nick, to=to_nick, id=at.mid, ts=at.now, origin=at.cid)
        fx.deliver(dict.fromkeys((to_cid, at.cid)), event)

    def _who(self, fx: Effects, at: At, cmd: c.Who) -> None:
        res = self.store.who(at.cid, cmd.room)
        if isinstance(res, Failed):
            fx.error(at.cid, "you are in no room: /who #room")
            return
        room, nicks = res
        if not nicks:
            fx.info(at.cid, f"no one is in {room}")
            return
        fx.info(at.cid, f"{room} ({len(nicks)}): {_sorted_names(nicks)}")

    def _rooms(self, fx: Effects, at: At, cmd: c.Rooms) -> None:
        rooms = self.store.rooms()
        if not rooms:
            fx.info(at.cid, "no rooms yet: /join #name opens one")
            return
        fx.info(at.cid, "rooms: " + ", ".join(f"{room} ({n})" for room, n in rooms))

    def _history(self, fx: Effects, at: At, cmd: c.History) -> None:
        room = cmd.room or self.store.current_room(at.cid)
        if not room:
            fx.error(at.cid, "you are in no room: /history #room [N]")
            return
        entries = self.store.history(room, cmd.count)
        fx.info(at.cid, f"history of {room}: {len(entries)} message{'s' * (len(entries) != 1)}")
        for e in entries:
            event = ChatEvent(
                EventType.HISTORY, e.get("text", ""), room=room, sender=e.get("from", ""),
                id=e.get("id", ""), ts=_float(e.get("ts", "0")), of=e.get("kind", "message"),
            )
            fx.deliver((at.cid,), event)

    def _json(self, fx: Effects, at: At, cmd: c.Json) -> None:
        fx.set_json(at.cid)
        fx.info(at.cid, "json mode on")

    def _help(self, fx: Effects, at: At, cmd: c.Help) -> None:
        for line in c.HELP_LINES:
            fx.info(at.cid, line)


def _float(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        return 0.0
