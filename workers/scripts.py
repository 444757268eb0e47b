"""The Lua side of the store: one script per chat operation, each atomic.

Every script takes the key prefix and the connection ID as ARGV[1] and
ARGV[2] and builds its keys from them (so Redis Cluster is not supported as
written: the keys are not declared). `replayable` wraps a script so that
running it again for the same line of a connection returns the first
result and changes nothing. The module exports the scripts ready to run.
"""

from __future__ import annotations

RESULT_TTL = 600  # seconds a connection's last results are kept for replays
GONE_TTL = 120  # after it left: only its departure can still be replayed
HISTORY_KEEP = 100  # at least; the stream is trimmed approximately
# A room's history entry is one field, HISTORY_FIELD = '<id>\n<from>\n<ts>\n<kind>\n<text>' (text last: it
# may hold anything), or, when an id, nick or kind holds a newline and in entries written before, the fields
# id, from, text, ts, kind. Every reader reads both (`workers.store.history_entry`).
HISTORY_FIELD = "m"
HISTORY_PARTS = ("id", "from", "ts", "kind", "text")  # HISTORY_FIELD's parts, in order

# Connects: the consecutive ones of one gateway run as one call (ARGV: p, gateway, then per connection:
# its cid, its address) -> one result per connection, in order: its guest nick, false (refused: its
# gateway was lost, or it left already) or {'refused', why} (Valkey full: its first write refused). Each is
# idempotent on its own: a connection registered already gets its nick again and nothing changes.
CONNECT_FIELDS = 2  # ARGV a connection takes
_CONNECT_FN = """
local function connect(p, gw, dead, cid, addr)
  local ck = p..'conn:'..cid
  local nick = redis.call('HGET', ck, 'nick')
  if nick then return nick end
  if dead or redis.call('EXISTS', p..'left:'..cid) == 1 then return false end
  for _ = 1, 50 do
    local n = redis.pcall('INCR', p..'guests')
    if type(n) == 'table' and n.err then return {'refused', n.err} end
    nick = 'guest-'..n
    if redis.call('SET', p..'nick:'..nick, cid, 'NX') then
      redis.call('HSET', ck, 'nick', nick, 'room', '', 'gw', gw, 'addr', addr)
      redis.call('SADD', p..'gw:'..gw..':conns', cid)
      return nick
    end
  end
  return false
end
"""
_CONNECT_SRC = """
local p, gw = ARGV[1], ARGV[2]
local dead = redis.call('EXISTS', p..'gwdead:'..gw) == 1
""" + _CONNECT_FN + """
local out = {}
for i = 3, #ARGV, CONNECT_FIELDS do out[#out + 1] = connect(p, gw, dead, ARGV[i], ARGV[i + 1]) end
return out
""".replace("CONNECT_FIELDS", str(CONNECT_FIELDS))

# A session recovery, recorded. A line that met its connection gone (Redis forgot it: it came back empty)
# registers it again (ARGV: p, cid, gateway, event, line), as a connect would (-> its guest nick, false or
# {'refused', why}), and in the same script records under `p res:<cid>`, field = that line's number, the
# mark {lost = nick}. The line's script, run then, finds the mark, runs, and records {lost = nick, result =
# its result}; on this run and on any replay it returns {LOST, nick, its result}, so the replay says what
# the first run said ("you are now guest-N") at the same place, whatever the grouping of the lines and
# wherever the first run died. Run again for a line marked already, it returns the nick of the mark.
LOST = "!lost"  # never a nick nor a status word
_RECOVER_SRC = """
local p, cid, gw, event, line = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5]
local rk = p..'res:'..cid
local current = redis.call('HGET', rk, 'event') == event
local hit = current and redis.call('HGET', rk, line)
if hit and string.byte(hit) ~= RECORD_REF then  -- not the record of a line that ran (`shared`)
  local rec = cjson.decode(hit)
  if type(rec) == 'table' and rec.lost then return rec.lost end
end
""" + _CONNECT_FN + """
local nick = connect(p, gw, redis.call('EXISTS', p..'gwdead:'..gw) == 1, cid, '')
if type(nick) ~= 'string' or hit then return nick end
if not current then
  redis.call('DEL', rk)
  redis.call('HSET', rk, 'event', event)
end
redis.call('HSET', rk, line, cjson.encode({lost = nick}))
redis.call('EXPIRE', rk, RESULT_TTL)
return nick
"""

# A room's member nicks: `p room:<room>:nicks` (cid -> nick) holds a member's nick from its join on, and every
# part, departure and nick change keeps it so; it only ever holds members, so with as many fields as the room
# has members it is the listing (one HVALS, no look-up per member). A room whose members joined before the
# hash was kept (older data) lacks some: they are read from their connections, as before, and, where the
# script may grow the state (`fill`: a join), written in, so the next listing is one call again.
_MEMBER_NICKS_FN = """
local function member_nicks(p, rp, size, fill)
  local nk = rp..':nicks'
  local nicks = redis.call('HVALS', nk)
  if #nicks == size then return nicks end
  nicks = {}
  for i, m in ipairs(redis.call('SMEMBERS', rp..':members')) do
    local nick = redis.call('HGET', p..'conn:'..m, 'nick')
    nicks[i] = nick or '?'
    if nick and fill then redis.call('HSET', nk, m, nick) end
  end
  return nicks
end
"""

# /nick and /join: functions of the connection (p, cid) and the line's argument, for the NICK_JOIN group
_NICK_FN = """
local function nick(p, cid, new)
  local ck = p..'conn:'..cid
  local old, current = unpack(redis.call('HMGET', ck, 'nick', 'room'))
  if not old then return {'gone'} end
  local key = p..'nick:'..string.lower(new)
  local holder = redis.call('GET', key)
  if holder and holder ~= cid then return {'taken'} end
  local old_key = p..'nick:'..string.lower(old)
  if old_key ~= key and redis.call('GET', old_key) == cid then redis.call('DEL', old_key) end
  redis.call('SET', key, cid)
  redis.call('HSET', ck, 'nick', new)
  local seen, out = {}, {}
  -- no current room: in no room at all (a part makes another of its rooms current)
  for _, room in ipairs(current ~= '' and redis.call('SMEMBERS', ck..':rooms') or {}) do
    redis.call('HSET', p..'room:'..room..':nicks', cid, new)
    for _, m in ipairs(redis.call('SMEMBERS', p..'room:'..room..':members')) do
      if m ~= cid and not seen[m] then seen[m] = true; out[#out + 1] = m end
    end
  end
  return {'ok', old, out}
end
"""

# p rooms:by-size: a sorted set of the rooms that have members, scored by their member count
_JOIN_FN = """
local function join(p, cid, room, max_rooms)
  local ck = p..'conn:'..cid
  local nick, gw = unpack(redis.call('HMGET', ck, 'nick', 'gw'))
  if not nick then return {'gone'} end
  local rp = p..'room:'..room
  local mk = rp..':members'
  if redis.call('SCARD', ck..':rooms') >= max_rooms and redis.call('SISMEMBER', mk, cid) == 0 then
    return {'toomany', room}
  end
  local added = redis.call('SADD', mk, cid)
  redis.call('HSET', rp..':nicks', cid, nick)
  redis.call('SADD', ck..':rooms', room)
  redis.call('HSET', ck, 'room', room)
  local size = redis.call('SCARD', mk)
  redis.call('ZADD', p..'rooms:by-size', size, room)
  if size == 1 then  -- the room was empty: its history, topic and seq were set to expire (`resized`)
    redis.call('PERSIST', rp..':history')
    redis.call('PERSIST', rp..':topic')
    redis.call('PERSIST', rp..':seq')
  end
  local gk, seq = rp..':gws', 0
  if added == 1 then
    redis.call('HINCRBY', gk, gw, 1)
    seq = redis.call('INCR', rp..':seq')
  end
  return {'ok', nick, added, size, member_nicks(p, rp, size, true), redis.call('HGET', rp..':topic', 'text') or '',
          seq, redis.call('HKEYS', gk)}
end
"""

# the connection, its nick and current room, and the room meant (ARGV room, or the current one)
_ROOM_OF = """
local ck = p..'conn:'..cid
local nick, current, gw = unpack(redis.call('HMGET', ck, 'nick', 'room', 'gw'))
if not nick then return {'gone'} end
if room == '' then room = current end
if room == '' then return {'noroom'} end
local mk = p..'room:'..room..':members'
local gk, sk = p..'room:'..room..':gws', p..'room:'..room..':seq'
"""

# after a member left `room`: its size in p rooms:by-size, or, emptied, out of it, its history and
# topic to expire
_RESIZE_FN = """
local function resized(p, room, rest, ttl)
  if #rest == 0 then
    redis.call('ZREM', p..'rooms:by-size', room)
    redis.call('EXPIRE', p..'room:'..room..':history', ttl)
    redis.call('EXPIRE', p..'room:'..room..':topic', ttl)
    redis.call('EXPIRE', p..'room:'..room..':seq', ttl)
  else
    redis.call('ZADD', p..'rooms:by-size', #rest, room)
  end
end
-- a member on gateway gw left the room: one fewer there (p room:<room>:gws counts them per gateway)
local function gateway_left(p, room, gw)
  local gk = p..'room:'..room..':gws'
  if redis.call('HINCRBY', gk, gw, -1) <= 0 then redis.call('HDEL', gk, gw) end
end
"""

_PART_SRC = """
local p, cid, room, ttl = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
""" + _RESIZE_FN + _ROOM_OF + """if redis.call('SREM', mk, cid) == 0 then return {'notin', room} end
redis.call('HDEL', p..'room:'..room..':nicks', cid)
redis.call('SREM', ck..':rooms', room)
if current == room then
  current = redis.call('SRANDMEMBER', ck..':rooms') or ''
  redis.call('HSET', ck, 'room', current)
end
local rest = redis.call('SMEMBERS', mk)
resized(p, room, rest, ttl)
gateway_left(p, room, gw)
return {'ok', nick, room, current, redis.call('INCR', sk), redis.call('HKEYS', gk)}
"""

_WHO_SRC = """
local p, cid, room = ARGV[1], ARGV[2], ARGV[3]
""" + _MEMBER_NICKS_FN + """if room == '' then room = redis.call('HGET', p..'conn:'..cid, 'room') or '' end
if room == '' then return {'noroom'} end
local rp = p..'room:'..room
return {'ok', room, member_nicks(p, rp, redis.call('SCARD', rp..':members'), false)}
"""

_ROOMS_SRC = """
local p, cid, shown = ARGV[1], ARGV[2], tonumber(ARGV[3])
local key = p..'rooms:by-size'
return {redis.call('ZCARD', key), redis.call('ZREVRANGE', key, 0, shown - 1, 'WITHSCORES')}
"""

_HISTORY_SRC = """
local p, cid, room, count = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
if room == '' then room = redis.call('HGET', p..'conn:'..cid, 'room') or '' end
if room == '' then return {'noroom'} end
return {'ok', room, redis.call('XREVRANGE', p..'room:'..room..':history', '+', '-', 'COUNT', count)}
"""

# entries of the room's history after the one whose id is `after` (in either layout: HISTORY_FIELD), newest
# first, at most `count` of them (scanning at most `scan`); gap 1 when `after` is not kept or more came since
_HISTORY_AFTER_SRC = """
local p, cid, room, after, count, scan = ARGV[1], ARGV[2], ARGV[3], ARGV[4], tonumber(ARGV[5]), ARGV[6]
if room == '' then room = redis.call('HGET', p..'conn:'..cid, 'room') or '' end
if room == '' then return {'noroom'} end
local out, newer, gap = {}, 0, 1
for _, entry in ipairs(redis.call('XREVRANGE', p..'room:'..room..':history', '+', '-', 'COUNT', scan)) do
  local fields, id = entry[2], nil
  if fields[1] == 'HISTORY_FIELD' then id = string.match(fields[2], '^[^\\n]*')
  else for i = 1, #fields - 1, 2 do if fields[i] == 'id' then id = fields[i + 1]; break end end end
  if id == after then
    if newer <= count then gap = 0 end
    break
  end
  newer = newer + 1
  if newer <= count then out[newer] = entry end
end
return {'ok', room, out, gap}
""".replace("HISTORY_FIELD", HISTORY_FIELD)

# show (set '0') or set (set '1', members only) a room's topic; the room's members get a set topic
_TOPIC_SRC = """
local p, cid, room, text, set, ts = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5], ARGV[6]
""" + _ROOM_OF + """local tk = p..'room:'..room..':topic'
if set == '1' then
  if redis.call('SISMEMBER', mk, cid) == 0 then return {'notin', room} end
  redis.call('HSET', tk, 'text', text, 'by', nick, 'ts', ts)
  return {'ok', room, text, nick, ts, redis.call('SMEMBERS', mk)}
end
local t = redis.call('HMGET', tk, 'text', 'by', 'ts')
return {'ok', room, t[1] or '', t[2] or '', t[3] or '', {}}
"""

_LEAVE_FN = _RESIZE_FN + """
local function leave(p, cid, ttl)
  local ck = p..'conn:'..cid
  local nick, gw = unpack(redis.call('HMGET', ck, 'nick', 'gw'))
  if not nick then return false end
  local seen, out = {}, {}
  for _, room in ipairs(redis.call('SMEMBERS', ck..':rooms')) do
    local mk = p..'room:'..room..':members'
    redis.call('SREM', mk, cid)
    redis.call('HDEL', p..'room:'..room..':nicks', cid)
    local rest = redis.call('SMEMBERS', mk)
    resized(p, room, rest, ttl)
    gateway_left(p, room, gw)
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

_LEAVE_SRC = """
local p, cid, ttl = ARGV[1], ARGV[2], ARGV[3]
""" + _LEAVE_FN + """
return leave(p, cid, ttl)
"""

# cid is '!<gateway>': the reap's results are kept (and replayed) under that name
_REAP_SRC = """
local p, cid, gw, ttl, history_ttl = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5]
""" + _LEAVE_FN + """
redis.call('SET', p..'gwdead:'..gw, 1, 'EX', ttl)
local out = {}
for _, c in ipairs(redis.call('SMEMBERS', p..'gw:'..gw..':conns')) do
  local gone = leave(p, c, history_ttl)
  if gone then out[#out + 1] = gone end
end
return out
"""


# Valkey refuses a script's first deny-oom write (SET, SADD, XADD, HSET ...) when it
# is over maxmemory, but once a script has written anything (even a DEL or an
# EXPIRE) it lets the rest through, so that a script never stops half-way.
# GUARD is therefore the first write: `HSET` for the operations that grow the
# state (refused whole when Valkey is full: the sender is told), a `DEL` of an
# earlier event's results or an `EXPIRE` for the reads and the departures
# (served when full: they only keep their result, which expires, or they free
# memory). A replay of a recorded result returns before it, so it is always
# served.
_REPLAYABLE = """
local rk = p..'res:'..cid
local event, line = ARGV[#ARGV - 1], ARGV[#ARGV]
local seen = redis.call('HMGET', rk, 'event', line)
local current = seen[1] == event
local lost = false  -- a recovery (RECOVER) registered the connection again as this nick, for this line
if current and seen[2] then
  local rec = cjson.decode(seen[2])
  if type(rec) ~= 'table' or not rec.lost then return rec end
  if rec.result ~= nil then return {LOST, rec.lost, rec.result} end
  lost = rec.lost
end
GUARD
local result = op()
if type(result) ~= 'table' or result[1] ~= 'gone' then
  local rec = cjson.encode(lost and {lost = lost, result = result} or result)
KEEP
end
if lost then return {LOST, lost, result} end
return result
"""
# GUARD, then after the op what keeps its result (an earlier event's results were deleted after the guard)
_GROWS = ("redis.call('HSET', rk, 'event', event)\nif not current then redis.call('DEL', rk) end",
          """  redis.call('HSET', rk, line, rec, 'event', event)
  if not current then redis.call('EXPIRE', rk, RESULT_TTL) end""")
_SERVED_WHEN_FULL = ("if current then redis.call('EXPIRE', rk, RESULT_TTL) else redis.call('DEL', rk) end",
                     _GROWS[1])


def replayable(script: str, ttl: int = RESULT_TTL, grows: bool = True) -> str:
    """Make a mutating script idempotent per line of a connection.

    The script's first line binds ARGV (p and cid first); the rest becomes
    `op()`. Its result is kept under `p res:<cid>`, field = the line's number,
    for the connection's current event only (one event of a connection is
    in flight at a time, so only that one can be replayed). Run again for
    the same line, as when the broker gives a dead worker's event to
    another, the script returns the first result and changes nothing: the
    replay publishes exactly what the first run would have. The results
    expire `ttl` seconds after the event's first: a replay comes within seconds.

    `grows`: the script adds state, so a full Valkey (maxmemory, noeviction)
    refuses it whole with an OOM error; otherwise (reads, departures) it is
    served also when Valkey is full.
    """
    first, _, body = script.strip().partition("\n")
    guard, keep = _GROWS if grows else _SERVED_WHEN_FULL
    wrapper = _REPLAYABLE.replace("GUARD", guard).replace("KEEP", keep)
    wrapper = wrapper.replace("RESULT_TTL", str(ttl)).replace("LOST", repr(LOST))
    return f"{first}\nlocal function op()\n{body}\nend\n" + wrapper


# The start of a group script (SAY, PRIVATE): after `p, cid, event` are bound, each line's number (its
# first ARGV, from FIRST on, FIELDS apart) and what was recorded for it in this event: `out[n]` holds the
# recorded results, `todo` the lines still to run; a group all recorded returns at once (a replay).
# `lost[n]`: the line is marked by a recovery (RECOVER) and still to run: it records and returns its
# result with the nick, as `replayable` does.
# A line's 'ok' result is a string, '<ts>' then what the lines of a room (SAY) or a target (PRIVATE)
# share, each part after a newline (`joined`): a string is the cheapest reply there is. It is recorded in
# two parts, so that what the lines share is written once: `shared(rest)` keeps the rest under field
# 'r<h>' (h: the start of its SHA1, so that the records are the same however the lines were grouped) and
# each line keeps 'r<h>|<its ts>'. The other results are cjson, as `replayable` records.
_GROUP_RECORDED = """local rk = p..'res:'..cid
local lines, out, todo, lost, count = {}, {}, {}, {}, 0
for i = FIRST, #ARGV, FIELDS do count = count + 1; lines[count] = ARGV[i] end
local kept = redis.call('HGET', rk, 'event')  -- the event whose results are kept (nil: none are)
local current = kept == event
if current then
  local hits, refs, shared = redis.call('HMGET', rk, unpack(lines)), {}, {}
  for n = 1, #lines do
    local ref = hits[n] and string.match(hits[n], '^(r[^|]*)|')
    if ref and not shared[ref] then shared[ref] = true; refs[#refs + 1] = ref end
  end
  if #refs > 0 then
    for i, rest in ipairs(redis.call('HMGET', rk, unpack(refs))) do shared[refs[i]] = rest end
  end
  for n = 1, #lines do
    local hit, ref, ts = hits[n], nil, nil
    if hit then ref, ts = string.match(hit, '^(r[^|]*)|(.*)$') end
    if ref then
      out[n] = ts..shared[ref]
    elseif hit then
      local rec = cjson.decode(hit)
      if not rec.lost then out[n] = rec
      elseif rec.result then out[n] = {LOST, rec.lost, rec.result}
      else lost[n] = rec.lost end
    end
  end
end
local left = 0
for n = 1, count do if not out[n] then left = left + 1; todo[left] = n end end
if left == 0 then return out end
local record, recorded = {}, 0  -- field, value, ... for HSET
-- `parts` each after a newline, or nil if one holds a newline (a gateway may name itself anything)
local function joined(parts)
  for _, part in ipairs(parts) do if string.find(part, '\\n', 1, true) then return nil end end
  if #parts == 0 then return '' end
  return '\\n'..table.concat(parts, '\\n')
end
-- keep `rest` (what a line's 'ok' result holds after its ts) for the lines that share it -> what each of
-- them keeps, before its ts
local function shared(rest)
  local ref = 'r'..string.sub(redis.sha1hex(rest), 1, 16)
  record[recorded + 1], record[recorded + 2], recorded = ref, rest, recorded + 2
  return ref..'|'
end
-- line n's result `res`; `rec` its record ('r<n>|<ts>', or nil: cjson of `res`)
local function result(n, res, rec)
  if lost[n] then
    res = {LOST, lost[n], res}
    rec = cjson.encode({lost = lost[n], result = res[3]})
  end
  out[n] = res
  record[recorded + 1], record[recorded + 2], recorded = lines[n], rec or cjson.encode(res), recorded + 2
end
-- keep the records, the event's first with the event number (the results of an earlier event gone; none
-- kept before: nothing to delete but the guard's own field, which the records write again)
local function keep_records()
  if not current then
    if kept then redis.call('DEL', rk) end
    record[recorded + 1], record[recorded + 2], recorded = 'event', event, recorded + 2
  end
  redis.call('HSET', rk, unpack(record))
  redis.call('EXPIRE', rk, RESULT_TTL)
end
"""


def _group_recorded(first: int, fields: int) -> str:
    """`_GROUP_RECORDED` for lines whose numbers are ARGV[first], ARGV[first + fields], ..."""
    return (_GROUP_RECORDED.replace("FIRST", str(first)).replace("FIELDS", str(fields)).replace("LOST", repr(LOST))
            .replace("RESULT_TTL", str(RESULT_TTL)))


# Room messages (plain text, /me, /msg #room): the consecutive ones of one event run as one call, in
# order (ARGV: p, cid, history keep, ts, event, then per line: its number, where, text; where: '<kind>
# <room>' (room '' for the current one), then '\n<id>' unless its id is '<cid>/<number>') -> one result per
# line. Replayable as `replayable` makes a script, per line: each line's result is kept under `p res:<cid>`,
# field = its number, as a single line's would be, so a replay that groups the lines otherwise (or one by
# one) returns each line's first result and writes nothing again. One connection lookup, one membership
# check, member gateways and seq read per room, one XADD per line, one XTRIM per room. The first write is
# the `grows` guard; a full Valkey refuses it, and with it each line not yet recorded ({'refused', why}),
# while the recorded ones are still replayed. What the lines of a room share (nick, room, gateways, seq) is
# recorded once (`shared`).
SAY_FIELDS = 3  # ARGV a line takes
_SAY_SRC = """
local p, cid, keep, ts, event = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5]
""" + _group_recorded(6, SAY_FIELDS) + """local full = redis.pcall('HSET', rk, 'event', event)
if type(full) == 'table' and full.err then
  for _, n in ipairs(todo) do out[n] = {'refused', full.err} end
  return out
end
local nick, here = unpack(redis.call('HMGET', p..'conn:'..cid, 'nick', 'room'))
if not nick then
  if not current then redis.call('DEL', rk) end
  for _, n in ipairs(todo) do out[n] = lost[n] and {LOST, lost[n], {'gone'}} or {'gone'} end
  return out
end
local call, argv = redis.call, ARGV
-- a room's part of its lines' results (its history key, their 'ok' result and its record: the ts is the
-- call's), or the refusal of its lines
local rooms, written = {['']= {refused = {'noroom'}}}, {}
local function room_of(room)
  local rp = p..'room:'..room
  if call('SISMEMBER', rp..':members', cid) == 0 then return {refused = {'notin', room}} end
  local gws, seq = call('HKEYS', rp..':gws'), call('GET', rp..':seq') or '0'
  written[#written + 1] = rp..':history'
  local rest = joined({nick, room}) and joined(gws)
  if rest then
    rest = '\\n'..seq..'\\n'..nick..'\\n'..room..rest
    return {history = rp..':history', res = ts..rest, rec = shared(rest)..ts}
  end
  return {history = rp..':history', res = {'ok', nick, room, gws, ts, tonumber(seq)}}
end
-- a line's where: its kind, its room (nil: the current one) and its id ('': '<cid>/<number>')
-- `after`: what follows a line's id in its history entry, up to its text (nil: the entry is stored in the
-- older layout, as one whose id, nick or kind holds a newline must be; an id of '' is '<cid>/<number>')
local places = {}
local function place_of(where)
  local kind, room, id = string.match(where, '^([^ ]*) ([^\\n]*)\\n?(.*)$')
  kind, id = kind or '', id or ''
  local after = '\\n'..nick..'\\n'..ts..'\\n'..kind..'\\n'
  if string.find(nick..kind..(id ~= '' and id or cid), '\\n', 1, true) then after = nil end
  return {kind = kind, room = room ~= '' and room or nil, id = id, after = after}
end
for _, n in ipairs(todo) do
  local i = SAY_FIELDS * n + 3
  local where = argv[i + 1]
  local place = places[where]
  if not place then place = place_of(where); places[where] = place end
  local room = place.room or here
  local r = rooms[room]
  if not r then r = room_of(room); rooms[room] = r end
  local history = r.history
  if history then
    local id = place.id
    if id == '' then id = cid..'/'..lines[n] end
    local after = place.after
    if after then
      call('XADD', history, '*', 'HISTORY_FIELD', id..after..argv[i + 2])
    else
      call('XADD', history, '*', 'id', id, 'from', nick, 'text', argv[i + 2], 'ts', ts, 'kind', place.kind)
    end
    if r.rec and not lost[n] then  -- the common case, inline
      out[n] = r.res
      record[recorded + 1], record[recorded + 2], recorded = lines[n], r.rec, recorded + 2
    else
      result(n, r.res, r.rec)
    end
  else
    result(n, r.refused)
  end
end
for _, history in ipairs(written) do call('XTRIM', history, 'MAXLEN', '~', keep) end
keep_records()
return out
""".replace("SAY_FIELDS", str(SAY_FIELDS)).replace("LOST", repr(LOST)).replace("HISTORY_FIELD", HISTORY_FIELD)


# Private messages (/msg NICK text): the consecutive ones of one event run as one call, in order (ARGV: p,
# cid, ts, event, then per line: its number, target nick) -> one result per line ('ok' as the string
# '<ts>\n<nick>\n<to cid>\n<to nick as spelled>' (`joined`), {'nonick'} or {'gone'}). Replayable per line
# as SAY is: each line's result is kept under `p res:<cid>`, field = its number, as `replayable` keeps a
# single line's, so however a replay groups the lines each gets its first result. Nothing is stored but
# the results: it is served when Valkey is full (its first write is the EXPIRE of
# `replayable(grows=False)`, or the DEL of an earlier event's results, neither refused). One lookup of the
# sender, one of each target nick, recorded once (`shared`).
PRIVATE_FIELDS = 2  # ARGV a line takes
_PRIVATE_SRC = """
local p, cid, ts, event = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
""" + _group_recorded(5, PRIVATE_FIELDS) + """if current then redis.call('EXPIRE', rk, RESULT_TTL) end
local nick = redis.call('HGET', p..'conn:'..cid, 'nick')
if not nick then
  for _, n in ipairs(todo) do out[n] = lost[n] and {LOST, lost[n], {'gone'}} or {'gone'} end
  return out
end
local found = {}
-- the target nick's part of its lines' results (their 'ok' result and its record: the ts is the call's),
-- or their refusal
local function target_of(target)
  local holder = redis.call('GET', p..'nick:'..target)
  local to_nick = holder and redis.call('HGET', p..'conn:'..holder, 'nick')
  if not to_nick then return {res = {'nonick'}} end
  local rest = joined({nick, holder, to_nick})
  if rest then return {res = ts..rest, rec = shared(rest)..ts} end
  return {res = {'ok', nick, holder, to_nick, ts}}
end
for _, n in ipairs(todo) do
  local target = string.lower(ARGV[PRIVATE_FIELDS * n + 4])
  local to = found[target]
  if not to then to = target_of(target); found[target] = to end
  result(n, to.res, to.rec)
end
keep_records()
return out
""".replace("PRIVATE_FIELDS", str(PRIVATE_FIELDS)).replace("RESULT_TTL", str(RESULT_TTL)).replace("LOST", repr(LOST))


# /nick and /join lines: the consecutive ones of one event run as one call, in order (ARGV: p, cid, max rooms,
# event, then per line: its number, 'nick' or 'join', the nick or the room) -> one result per line, each as the
# line's own script would give it (W5's registration, a /nick and a /join in one event, is one call). Replayable
# per line as `replayable` makes a script: each line's result is kept under `p res:<cid>`, field = its number
# (a 'gone' is not kept), so a replay that groups the lines otherwise (or one by one) returns each line's first
# result and changes nothing. Both grow the state: the first write is the `grows` guard, which a full Valkey
# refuses, and with it each line not yet recorded ({'refused', why}), while the recorded ones are replayed.
NICK_JOIN_FIELDS = 3  # ARGV a line takes
_NICK_JOIN_SRC = """
local p, cid, max_rooms, event = ARGV[1], ARGV[2], tonumber(ARGV[3]), ARGV[4]
""" + _group_recorded(5, NICK_JOIN_FIELDS) + """local full = redis.pcall('HSET', rk, 'event', event)
if type(full) == 'table' and full.err then
  for _, n in ipairs(todo) do out[n] = {'refused', full.err} end
  return out
end
""" + _MEMBER_NICKS_FN + _NICK_FN + _JOIN_FN + """
for _, n in ipairs(todo) do
  local i = NICK_JOIN_FIELDS * n + 2
  local arg, res = ARGV[i + 2], nil
  if ARGV[i + 1] == 'nick' then res = nick(p, cid, arg) else res = join(p, cid, arg, max_rooms) end
  if res[1] == 'gone' then  -- kept nowhere, as `replayable` keeps nothing of a 'gone'
    out[n] = lost[n] and {LOST, lost[n], res} or res
  else
    result(n, res)
  end
end
if recorded > 0 then keep_records() elseif not current then redis.call('DEL', rk) end
return out
""".replace("NICK_JOIN_FIELDS", str(NICK_JOIN_FIELDS)).replace("LOST", repr(LOST))


# The broker pair's fence (broker.lease): every script takes the epoch of the
# dispatch it serves as its last ARGV, and takes it off before anything else
# reads ARGV. Under an epoch that is no longer `p broker:epoch` it changes
# nothing and fails with FENCED; epoch 0 (a lone broker) is never checked.
FENCED = "FENCED"
_FENCE = f"""
local fence = table.remove(ARGV)
if fence ~= '0' and redis.call('GET', ARGV[1]..'broker:epoch') ~= fence then
  return redis.error_reply('{FENCED} the broker epoch moved on from '..fence)
end
"""


def fenced(script: str) -> str:
    """`script` refused under a stale broker epoch (its last ARGV), one GET a run."""
    return _FENCE + script


NICK_JOIN = fenced(_NICK_JOIN_SRC)  # replayable per line, as above
PART = fenced(replayable(_PART_SRC, grows=False))  # it frees memory
SAY = fenced(_SAY_SRC)  # replayable per line, as above
LEAVE = fenced(replayable(_LEAVE_SRC, GONE_TTL, grows=False))
REAP = fenced(replayable(_REAP_SRC, GONE_TTL, grows=False))
PRIVATE = fenced(_PRIVATE_SRC)  # a delivery, nothing stored; replayable per line, as above
WHO = fenced(replayable(_WHO_SRC, grows=False))
ROOMS = fenced(replayable(_ROOMS_SRC, grows=False))
HISTORY = fenced(replayable(_HISTORY_SRC, grows=False))
HISTORY_AFTER = fenced(replayable(_HISTORY_AFTER_SRC, grows=False))
TOPIC = fenced(replayable(_TOPIC_SRC))  # a set adds state (a show too is refused when Valkey is full)
CONNECT = fenced(_CONNECT_SRC)
RECOVER = fenced(_RECOVER_SRC.replace("RESULT_TTL", str(RESULT_TTL)).replace("RECORD_REF", str(ord("r"))))
