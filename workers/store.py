"""Redis, and only here: the keys, and one Lua script per chat operation.

Every operation is one atomic script (one round trip): the rest of the
worker never sees a key. Keys, under a configurable prefix `p`:

    p guests                 counter for guest nicknames
    p nick:<lower>           -> cid holding that nickname
    p conn:<cid>             hash: nick, room (current, '' for none), gw, addr, seq
    p conn:<cid>:rooms       set of the rooms the connection is in
    p room:<room>:members    set of cids
    p room:<room>:history    stream, capped, fields id from text ts kind
    p rooms                  set of rooms that have members
    p gw:<gateway>:conns     set of cids on that gateway
    p gwdead:<gateway>       set when a gateway was lost: it may not connect clients again
    p res:<cid>              the results of the connection's current event (see `replayable`)

Rooms arrive canonical (lower case); nicks are ASCII, so Lua's
string.lower folds them as Python does.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import redis

RESULT_TTL = 3600  # seconds a connection's last results are kept for replays
HISTORY_KEEP = 100  # at least; the stream is trimmed approximately

_CONNECT = """
local p, cid, gw, addr = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local ck = p..'conn:'..cid
local nick = redis.call('HGET', ck, 'nick')
if nick then return nick end
if redis.call('EXISTS', p..'gwdead:'..gw) == 1 then return false end
for _ = 1, 50 do
  nick = 'guest-'..redis.call('INCR', p..'guests')
  if redis.call('SET', p..'nick:'..nick, cid, 'NX') then
    redis.call('HSET', ck, 'nick', nick, 'room', '', 'gw', gw, 'addr', addr)
    redis.call('SADD', p..'gw:'..gw..':conns', cid)
    return nick
  end
end
return false
"""

_NICK = """
local p, cid, new = ARGV[1], ARGV[2], ARGV[3]
local ck = p..'conn:'..cid
local old = redis.call('HGET', ck, 'nick')
if not old then return {'gone'} end
local key = p..'nick:'..string.lower(new)
local holder = redis.call('GET', key)
if holder and holder ~= cid then return {'taken'} end
local old_key = p..'nick:'..string.lower(old)
if old_key ~= key and redis.call('GET', old_key) == cid then redis.call('DEL', old_key) end
redis.call('SET', key, cid)
redis.call('HSET', ck, 'nick', new)
local seen, out = {}, {}
for _, room in ipairs(redis.call('SMEMBERS', ck..':rooms')) do
  for _, m in ipairs(redis.call('SMEMBERS', p..'room:'..room..':members')) do
    if m ~= cid and not seen[m] then seen[m] = true; out[#out + 1] = m end
  end
end
return {'ok', old, out}
"""

_JOIN = """
local p, cid, room = ARGV[1], ARGV[2], ARGV[3]
local ck = p..'conn:'..cid
local nick = redis.call('HGET', ck, 'nick')
if not nick then return {'gone'} end
local mk = p..'room:'..room..':members'
local added = redis.call('SADD', mk, cid)
redis.call('SADD', ck..':rooms', room)
redis.call('HSET', ck, 'room', room)
redis.call('SADD', p..'rooms', room)
local members = redis.call('SMEMBERS', mk)
local nicks = {}
for i, m in ipairs(members) do nicks[i] = redis.call('HGET', p..'conn:'..m, 'nick') or '?' end
return {'ok', nick, added, members, nicks}
"""

_PART = """
local p, cid, room = ARGV[1], ARGV[2], ARGV[3]
local ck = p..'conn:'..cid
local nick, current = unpack(redis.call('HMGET', ck, 'nick', 'room'))
if not nick then return {'gone'} end
if room == '' then room = current end
if room == '' then return {'noroom'} end
local mk = p..'room:'..room..':members'
if redis.call('SREM', mk, cid) == 0 then return {'notin', room} end
redis.call('SREM', ck..':rooms', room)
if current == room then
  current = redis.call('SRANDMEMBER', ck..':rooms') or ''
  redis.call('HSET', ck, 'room', current)
end
local rest = redis.call('SMEMBERS', mk)
if #rest == 0 then redis.call('SREM', p..'rooms', room) end
return {'ok', nick, room, current, rest}
"""

_SAY = """
local p, cid, room, text, id, ts, kind, keep = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5], ARGV[6], ARGV[7], ARGV[8]
local ck = p..'conn:'..cid
local nick, current = unpack(redis.call('HMGET', ck, 'nick', 'room'))
if not nick then return {'gone'} end
if room == '' then room = current end
if room == '' then return {'noroom'} end
local mk = p..'room:'..room..':members'
if redis.call('SISMEMBER', mk, cid) == 0 then return {'notin', room} end
redis.call('XADD', p..'room:'..room..':history', 'MAXLEN', '~', keep, '*',
           'id', id, 'from', nick, 'text', text, 'ts', ts, 'kind', kind)
return {'ok', nick, room, redis.call('SMEMBERS', mk), ts}
"""

_PRIVATE = """
local p, cid, target = ARGV[1], ARGV[2], ARGV[3]
local nick = redis.call('HGET', p..'conn:'..cid, 'nick')
if not nick then return {'gone'} end
local to = redis.call('GET', p..'nick:'..string.lower(target))
if not to then return {'nonick'} end
local to_nick = redis.call('HGET', p..'conn:'..to, 'nick')
if not to_nick then return {'nonick'} end
return {'ok', nick, to, to_nick}
"""

_WHO = """
local p, cid, room = ARGV[1], ARGV[2], ARGV[3]
if room == '' then room = redis.call('HGET', p..'conn:'..cid, 'room') or '' end
if room == '' then return {'noroom'} end
local nicks = {}
for _, m in ipairs(redis.call('SMEMBERS', p..'room:'..room..':members')) do
  nicks[#nicks + 1] = redis.call('HGET', p..'conn:'..m, 'nick') or '?'
end
return {'ok', room, nicks}
"""

_ROOMS = """
local p = ARGV[1]
local out = {}
for _, room in ipairs(redis.call('SMEMBERS', p..'rooms')) do
  out[#out + 1] = room
  out[#out + 1] = redis.call('SCARD', p..'room:'..room..':members')
end
return out
"""

_CURRENT_ROOM = """
local p, cid = ARGV[1], ARGV[2]
return redis.call('HGET', p..'conn:'..cid, 'room') or ''
"""

_LEAVE = """
local p, cid = ARGV[1], ARGV[2]
local ck = p..'conn:'..cid
local nick, gw = unpack(redis.call('HMGET', ck, 'nick', 'gw'))
if not nick then return false end
local seen, out = {}, {}
for _, room in ipairs(redis.call('SMEMBERS', ck..':rooms')) do
  local mk = p..'room:'..room..':members'
  redis.call('SREM', mk, cid)
  local rest = redis.call('SMEMBERS', mk)
  if #rest == 0 then redis.call('SREM', p..'rooms', room) end
  for _, m in ipairs(rest) do
    if not seen[m] then seen[m] = true; out[#out + 1] = m end
  end
end
local nk = p..'nick:'..string.lower(nick)
if redis.call('GET', nk) == cid then redis.call('DEL', nk) end
redis.call('DEL', ck, ck..':rooms')
redis.call('SREM', p..'gw:'..gw..':conns', cid)
return {nick, out}
"""


_REPLAYABLE = """
local rk = p..'res:'..cid
local event, line = ARGV[#ARGV - 1], ARGV[#ARGV]
if redis.call('HGET', rk, 'event') == event then
  local hit = redis.call('HGET', rk, line)
  if hit then return cjson.decode(hit) end
else
  redis.call('DEL', rk)
  redis.call('HSET', rk, 'event', event)
end
local result = op()
if type(result) ~= 'table' or result[1] ~= 'gone' then
  redis.call('HSET', rk, line, cjson.encode(result))
  redis.call('EXPIRE', rk, RESULT_TTL)
end
return result
"""


def replayable(script: str) -> str:
    """Make a mutating script idempotent per line of a connection.

    The script's first line binds ARGV (p and cid first); the rest becomes
    `op()`. Its result is kept under `p res:<cid>`, field = the line's number,
    for the connection's current event only (one event of a connection is
    in flight at a time, so only that one can be replayed). Run again for
    the same line, as when the broker gives a dead worker's event to
    another, the script returns the first result and changes nothing: the
    replay publishes exactly what the first run would have.
    """
    first, _, body = script.strip().partition("\n")
    return f"{first}\nlocal function op()\n{body}\nend\n" + _REPLAYABLE.replace(
        "RESULT_TTL", str(RESULT_TTL)
    )


Op = tuple[int, int]  # (the event's seq, the line's seq): what makes a call replayable


class Gone(Exception):
    """The connection is unknown to Redis: reaped, or Redis lost its data."""


@dataclass(frozen=True, slots=True)
class Failed:
    """An operation that did not happen; `why` is the script's reason word."""

    why: str
    room: str = ""


class Store:
    """The chat state in Redis, one method per atomic operation."""

    def __init__(self, client: redis.Redis, prefix: str = "chat:") -> None:
        self._client = client
        self._p = prefix
        reg = client.register_script
        self._connect = reg(_CONNECT)
        self._nick = reg(replayable(_NICK))
        self._join = reg(replayable(_JOIN))
        self._part = reg(replayable(_PART))
        self._say = reg(replayable(_SAY))
        self._private = reg(_PRIVATE)
        self._who = reg(_WHO)
        self._rooms = reg(_ROOMS)
        self._current_room = reg(_CURRENT_ROOM)
        self._leave = reg(replayable(_LEAVE))

    def _run(self, script: Any, *args: object) -> Any:
        result = script(args=[self._p, *args])
        if result == ["gone"]:
            raise Gone(str(args[0]))
        return result

    def connect(self, cid: str, gateway: str, addr: str) -> str | None:
        """Register a connection under a fresh guest nick (idempotent)."""
        nick = self._run(self._connect, cid, gateway, addr)
        return nick or None

    def set_nick(self, op: Op, cid: str, nick: str) -> Failed | tuple[str, list[str]]:
        """-> (old nick, cids sharing a room) or Failed('taken' | 'gone')."""
        res = self._run(self._nick, cid, nick, *op)
        return (res[1], res[2]) if res[0] == "ok" else Failed(res[0])

    def join(self, op: Op, cid: str, room: str) -> Failed | tuple[str, bool, list[str], list[str]]:
        """-> (nick, newly joined, member cids, member nicks)."""
        res = self._run(self._join, cid, room, *op)
        return (res[1], bool(res[2]), res[3], res[4]) if res[0] == "ok" else Failed(res[0])

    def part(self, op: Op, cid: str, room: str | None) -> Failed | tuple[str, str, str, list[str]]:
        """-> (nick, room left, new current room, remaining member cids)."""
        res = self._run(self._part, cid, room or "", *op)
        if res[0] != "ok":
            return Failed(res[0], res[1] if len(res) > 1 else "")
        return res[1], res[2], res[3], res[4]

    def say(
        self, op: Op, cid: str, room: str | None, text: str, msg_id: str, ts: float, kind: str
    ) -> Failed | tuple[str, str, list[str], float]:
        """Append to the room's history -> (nick, room, member cids, ts as first stored)."""
        res = self._run(self._say, cid, room or "", text, msg_id, repr(ts), kind, HISTORY_KEEP, *op)
        if res[0] != "ok":
            return Failed(res[0], res[1] if len(res) > 1 else "")
        return res[1], res[2], res[3], float(res[4])

    def private(self, cid: str, target: str) -> Failed | tuple[str, str, str]:
        """-> (sender nick, target cid, target nick as spelled)."""
        res = self._run(self._private, cid, target)
        return (res[1], res[2], res[3]) if res[0] == "ok" else Failed(res[0])

    def who(self, cid: str, room: str | None) -> Failed | tuple[str, list[str]]:
        res = self._run(self._who, cid, room or "")
        return (res[1], res[2]) if res[0] == "ok" else Failed(res[0])

    def rooms(self) -> list[tuple[str, int]]:
        flat = self._run(self._rooms)
        return sorted(zip(flat[::2], flat[1::2], strict=True))

    def current_room(self, cid: str) -> str:
        return str(self._run(self._current_room, cid))

    def history(self, room: str, count: int) -> list[dict[str, str]]:
        """The room's last `count` messages, oldest first."""
        key = f"{self._p}room:{room}:history"
        entries: list[tuple[str, dict[str, str]]] = self._client.xrevrange(key, count=count)  # type: ignore[assignment]
        return [fields for _, fields in reversed(entries)]

    def leave(self, op: Op, cid: str) -> tuple[str, list[str]] | None:
        """Forget a connection -> (its nick, cids that shared a room) or None."""
        res = self._run(self._leave, cid, *op)
        return (res[0], res[1]) if res else None

    def gateway_conns(self, gateway: str) -> list[str]:
        members: set[str] = self._client.smembers(f"{self._p}gw:{gateway}:conns")  # type: ignore[assignment]
        return sorted(members)

    def bury_gateway(self, gateway: str, ttl: int = 86_400) -> None:
        """A lost gateway stays lost: its late connects are refused (no ghosts)."""
        self._client.set(f"{self._p}gwdead:{gateway}", 1, ex=ttl)
