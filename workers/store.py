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
    p left:<cid>             for 2 minutes after a connection left: a late line cannot bring it back
    p res:<cid>              the results of the connection's current event (see `replayable`),
                             10 minutes after its last event, 2 minutes after it left

Rooms arrive canonical (lower case); nicks are ASCII, so Lua's
string.lower folds them as Python does.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import redis

RESULT_TTL = 600  # seconds a connection's last results are kept for replays
GONE_TTL = 120  # after it left: only its departure can still be replayed
HISTORY_KEEP = 100  # at least; the stream is trimmed approximately

_CONNECT = """
local p, cid, gw, addr = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local ck = p..'conn:'..cid
local nick = redis.call('HGET', ck, 'nick')
if nick then return nick end
if redis.call('EXISTS', p..'gwdead:'..gw) == 1 or redis.call('EXISTS', p..'left:'..cid) == 1 then
  return false
end
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
local p, cid, target, ts = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local nick = redis.call('HGET', p..'conn:'..cid, 'nick')
if not nick then return {'gone'} end
local to = redis.call('GET', p..'nick:'..string.lower(target))
if not to then return {'nonick'} end
local to_nick = redis.call('HGET', p..'conn:'..to, 'nick')
if not to_nick then return {'nonick'} end
return {'ok', nick, to, to_nick, ts}
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
local p, cid = ARGV[1], ARGV[2]
local out = {}
for _, room in ipairs(redis.call('SMEMBERS', p..'rooms')) do
  out[#out + 1] = room
  out[#out + 1] = redis.call('SCARD', p..'room:'..room..':members')
end
return out
"""

_HISTORY = """
local p, cid, room, count = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
if room == '' then room = redis.call('HGET', p..'conn:'..cid, 'room') or '' end
if room == '' then return {'noroom'} end
return {'ok', room, redis.call('XREVRANGE', p..'room:'..room..':history', '+', '-', 'COUNT', count)}
"""

_LEAVE_FN = """
local function leave(p, cid)
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
  redis.call('SET', p..'left:'..cid, 1, 'EX', 120)
  return {nick, out}
end
"""

_LEAVE = """
local p, cid = ARGV[1], ARGV[2]
""" + _LEAVE_FN + """
return leave(p, cid)
"""

# cid is '!<gateway>': the reap's results are kept (and replayed) under that name
_REAP = """
local p, cid, gw, ttl = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
""" + _LEAVE_FN + """
redis.call('SET', p..'gwdead:'..gw, 1, 'EX', ttl)
local out = {}
for _, c in ipairs(redis.call('SMEMBERS', p..'gw:'..gw..':conns')) do
  local gone = leave(p, c)
  if gone then out[#out + 1] = gone end
end
return out
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


def replayable(script: str, ttl: int = RESULT_TTL) -> str:
    """Make a mutating script idempotent per line of a connection.

    The script's first line binds ARGV (p and cid first); the rest becomes
    `op()`. Its result is kept under `p res:<cid>`, field = the line's number,
    for the connection's current event only (one event of a connection is
    in flight at a time, so only that one can be replayed). Run again for
    the same line, as when the broker gives a dead worker's event to
    another, the script returns the first result and changes nothing: the
    replay publishes exactly what the first run would have. The results
    expire `ttl` seconds after the last change: a replay comes within seconds.
    """
    first, _, body = script.strip().partition("\n")
    return f"{first}\nlocal function op()\n{body}\nend\n" + _REPLAYABLE.replace(
        "RESULT_TTL", str(ttl)
    )


Op = tuple[int, int]  # (the event's seq, the line's seq): what makes a call replayable


class Gone(Exception):
    """The connection is unknown to Redis: reaped, or Redis lost its data."""


@dataclass(frozen=True, slots=True)
class Failed:
    """An operation that did not happen; `why` is the script's reason word."""

    why: str
    room: str = ""


@dataclass(frozen=True, slots=True)
class Call:
    """One store operation, ready to run alone or in a pipeline with others.

    `script` is a Lua source run with `args` as ARGV (by its SHA1, loaded
    on first use), or None for a plain command `args`; `parse` turns the
    reply into the operation's result.
    """

    script: str | None
    args: tuple[Any, ...]
    parse: Callable[[Any], Any]


def _failed_or(res: list[Any], ok: Callable[[list[Any]], Any]) -> Any:
    if res[0] == "gone":
        raise Gone()
    if res[0] != "ok":
        return Failed(res[0], res[1] if len(res) > 1 else "")
    return ok(res)


def _fields(flat: list[str]) -> dict[str, str]:
    return dict(zip(flat[::2], flat[1::2], strict=False))


class Store:
    """The chat state in Redis: one method per atomic operation, each a `Call`.

    `run` sends any number of calls in one round trip (a pipeline, in
    order), which is how a worker serves a whole dispatch of events at once.
    """

    def __init__(self, client: redis.Redis, prefix: str = "chat:") -> None:
        self._client = client
        self._p = prefix
        self._shas: dict[str, str] = {}

    # --- running calls ------------------------------------------------------------

    def _sha(self, script: str) -> str:
        sha = self._shas.get(script)
        if sha is None:
            sha = self._shas[script] = hashlib.sha1(script.encode()).hexdigest()
        return sha

    def run(self, calls: list[Call]) -> list[Any]:
        """Run calls in order in one round trip -> their results; a `Gone` or a
        per-call `redis.ResponseError` comes back as a value. A lost connection raises."""
        if not calls:
            return []
        replies = self._execute(calls)
        if any(isinstance(r, redis.exceptions.NoScriptError) for r in replies):
            self._load_scripts(calls)  # a restarted Redis forgot them; the scripts are replayable
            replies = self._execute(calls)
        return [self._parse(call, reply) for call, reply in zip(calls, replies, strict=True)]

    def run_one(self, call: Call) -> Any:
        result = self.run([call])[0]
        if isinstance(result, Exception):
            raise result
        return result

    def _execute(self, calls: list[Call]) -> list[Any]:
        pipe = self._client.pipeline(transaction=False)
        for call in calls:
            if call.script is None:
                pipe.execute_command(*call.args)
            else:
                pipe.evalsha(self._sha(call.script), 0, self._p, *call.args)
        return pipe.execute(raise_on_error=False)

    def _load_scripts(self, calls: list[Call]) -> None:
        for script in {c.script for c in calls if c.script is not None}:
            self._client.script_load(script)

    @staticmethod
    def _parse(call: Call, reply: Any) -> Any:
        if isinstance(reply, Exception):
            return reply
        try:
            return call.parse(reply)
        except Gone as gone:
            return gone

    # --- the operations ----------------------------------------------------------------

    def connect(self, cid: str, gateway: str, addr: str) -> Call:
        """Register a connection under a fresh guest nick (idempotent) -> the nick, or None."""
        return Call(_CONNECT, (cid, gateway, addr), lambda nick: nick or None)

    def set_nick(self, op: Op, cid: str, nick: str) -> Call:
        """-> (old nick, cids sharing a room) or Failed('taken')."""
        return Call(_R_NICK, (cid, nick, *op), lambda r: _failed_or(r, lambda r: (r[1], r[2])))

    def join(self, op: Op, cid: str, room: str) -> Call:
        """-> (nick, newly joined, member cids, member nicks)."""
        return Call(_R_JOIN, (cid, room, *op), lambda r: _failed_or(r, lambda r: (r[1], bool(r[2]), r[3], r[4])))

    def part(self, op: Op, cid: str, room: str | None) -> Call:
        """-> (nick, room left, new current room, remaining member cids)."""
        return Call(_R_PART, (cid, room or "", *op), lambda r: _failed_or(r, lambda r: tuple(r[1:5])))

    def say(self, op: Op, cid: str, room: str | None, text: str, msg_id: str, ts: float, kind: str) -> Call:
        """Append to the room's history -> (nick, room, member cids, ts as first stored)."""
        args = (cid, room or "", text, msg_id, repr(ts), kind, HISTORY_KEEP, *op)
        return Call(_R_SAY, args, lambda r: _failed_or(r, lambda r: (r[1], r[2], r[3], float(r[4]))))

    # Reads are replayable too: a replay must see what the first run saw, not
    # what the event's later lines have written since.

    def private(self, op: Op, cid: str, target: str, ts: float) -> Call:
        """-> (sender nick, target cid, target nick as spelled, ts as first seen)."""
        return Call(_R_PRIVATE, (cid, target, repr(ts), *op),
                    lambda r: _failed_or(r, lambda r: (r[1], r[2], r[3], float(r[4]))))

    def who(self, op: Op, cid: str, room: str | None) -> Call:
        """-> (room, member nicks)."""
        return Call(_R_WHO, (cid, room or "", *op), lambda r: _failed_or(r, lambda r: (r[1], r[2])))

    def rooms(self, op: Op, cid: str) -> Call:
        """-> [(room, members)], sorted."""
        return Call(_R_ROOMS, (cid, *op), lambda flat: sorted(zip(flat[::2], flat[1::2], strict=True)))

    def history(self, op: Op, cid: str, room: str | None, count: int) -> Call:
        """-> (room, the room's last `count` messages oldest first, as field dicts)."""
        return Call(_R_HISTORY, (cid, room or "", count, *op), lambda r: _failed_or(
            r, lambda r: (r[1], [_fields(fields) for _, fields in reversed(r[2])])))

    def leave(self, op: Op, cid: str) -> Call:
        """Forget a connection -> (its nick, cids that shared a room) or None."""
        return Call(_R_LEAVE, (cid, *op), lambda r: (r[0], r[1]) if r else None)

    def reap(self, gateway: str, ttl: int = 86_400) -> Call:
        """Forget every connection of a lost gateway, and refuse its late connects for `ttl`
        seconds (no ghosts) -> [(nick, cids that shared a room)]."""
        return Call(_R_REAP, ("!" + gateway, gateway, ttl, 0, 0), lambda r: [(g[0], g[1]) for g in r])


_R_NICK = replayable(_NICK)
_R_JOIN = replayable(_JOIN)
_R_PART = replayable(_PART)
_R_SAY = replayable(_SAY)
_R_LEAVE = replayable(_LEAVE, GONE_TTL)
_R_REAP = replayable(_REAP, GONE_TTL)
_R_PRIVATE = replayable(_PRIVATE)
_R_WHO = replayable(_WHO)
_R_ROOMS = replayable(_ROOMS)
_R_HISTORY = replayable(_HISTORY)
