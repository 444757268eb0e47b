"""Redis, and only here (with the Lua in `workers.scripts`): the keys, and one
atomic script per chat operation, as `Call`s that run alone or many to a
round trip. The rest of the worker never sees a key. Keys, under a
configurable prefix `p`:

    p guests                 counter for guest nicknames
    p nick:<lower>           -> cid holding that nickname
    p conn:<cid>             hash: nick, room (current, '' for none), gw, addr
    p conn:<cid>:rooms       set of the rooms the connection is in
    p room:<room>:members    set of cids
    p room:<room>:nicks      hash: cid -> nick, of members (`scripts.member_nicks`: older rooms lack some)
    p room:<room>:gws        hash: gateway -> how many of the members are its connections
    p room:<room>:seq        counter: each join and part of the room takes the next number (the
                             order gateways keep membership in); expires and persists with the history
    p room:<room>:history    stream, capped; an entry is one field m = '<id>\\n<from>\\n<ts>\\n<kind>\\n<text>'
                             (or, written before or for an id with a newline, fields id from text ts
                             kind: `history_entry` reads both); once the room is empty it expires
                             (history TTL), and a join makes it persist again
    p room:<room>:topic      hash: text, by (nick), ts; expires and persists with the history
    p rooms:by-size          sorted set of the rooms that have members, scored by member count
    p gw:<gateway>:conns     set of cids on that gateway
    p gwdead:<gateway>       set when a gateway was lost: it may not connect clients again
    p left:<cid>             for 2 minutes after a connection left: a late line cannot bring it back
    p res:<cid>              the results of the connection's current event (see `scripts.replayable`),
                             10 minutes after its last event, 2 minutes after it left; a line that
                             met the connection gone and registered it again records its result
                             with the new nick (`scripts.RECOVER`)

Rooms arrive canonical (lower case); nicks are ASCII, so Lua's
string.lower folds them as Python does.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any, NamedTuple

import hiredis
import redis

from workers import scripts

log = logging.getLogger("chat.store")

HISTORY_KEEP = scripts.HISTORY_KEEP
HISTORY_SCAN = 10 * HISTORY_KEEP  # entries /history after ID reads at most (trimming is approximate)
BATCH_MAX = 64  # calls run as one script at most (bounds its ARGV and what it unpacks)

Op = tuple[int, int]  # (the event's seq, the line's seq): what makes a call replayable


class SessionLost:
    """What a line's result may say of its connection's session instead of the line: `Gone`, or
    `Recovered` (one class to test results against, as cheap as testing one of them)."""

    __slots__ = ()


class Gone(SessionLost, Exception):
    """The connection is unknown to Redis: reaped, or Redis lost its data."""


class EpochFenced(redis.RedisError):
    """A script refused the dispatch's broker epoch: that broker was deposed. Nothing
    it ran after the refusal changed anything; what ran before is replayable."""


@dataclass(frozen=True, slots=True)
class Recovered(SessionLost):
    """A line that met its connection gone, after the connection was registered again as `nick`
    (`Store.recover`): `result` is the line's own result (a `Gone` if it is gone again). Its first
    run and every replay of it give the same."""

    nick: str
    result: Any


@dataclass(frozen=True, slots=True)
class Failed:
    """An operation that did not happen; `why` is the script's reason word."""

    why: str
    room: str = ""


class Call(NamedTuple):
    """One store operation, ready to run alone or in a pipeline with others (a named tuple, not a
    frozen dataclass: every line makes one, and a tuple is built twice as fast).

    `script` is a Lua source run with `args` as ARGV (by its SHA1, loaded
    on first use), or None for a plain command `args`; `parse` turns the
    reply into the operation's result.
    """

    script: str | None
    args: tuple[Any, ...]
    parse: Callable[[Any], Any]
    durable: bool = False  # a claim that must survive a failover: WAIT for replicas after it
    # > 0: the script takes many calls at once (its reply: one result per call, each for `parse`); like
    # calls next to each other in a round trip, with the same script and the same first `shared` args,
    # run as one (`_batched`): those args once, then every call's own args, in order
    shared: int = 0


@dataclass(frozen=True, slots=True)
class Durability:
    """Replication is asynchronous: a write the master acknowledged may die with it.
    A round trip with a durable call ends with `WAIT replicas timeout_ms`; fewer
    replicas than asked is logged (the write happened: it is answered anyway)."""

    replicas: int
    timeout_ms: int


def _failed_or(res: list[Any], ok: Callable[[list[Any]], Any]) -> Any:
    if res[0] == "gone":
        raise Gone()
    if res[0] != "ok":
        if res[0] == scripts.LOST:
            return _recovered(res, lambda inner: _failed_or(inner, ok))
        return Failed(res[0], res[1] if len(res) > 1 else "")
    return ok(res)


def _recovered(res: list[Any], parse: Callable[[Any], Any]) -> Recovered:
    """`{LOST, nick, result}` (`scripts.RECOVER`) -> Recovered(nick, the result parsed, or its Gone)."""
    try:
        result = parse(res[2])
    except Gone as gone:
        result = gone
    return Recovered(res[1], result)


def _op_of(call: Call) -> Op:
    """The (event, line) of a call to a replayable script: its last two args; for a group script
    (SAY, PRIVATE), its shared args end with the event and its own args start with the line."""
    if call.shared:
        return int(call.args[call.shared - 1]), int(call.args[call.shared])
    return int(call.args[-2]), int(call.args[-1])


def _nick_or_none(nick: Any) -> str | None:
    """A connect's result (`Store.connect`)."""
    return nick or None


def _recover_reply(reply: Any) -> str | None:
    """A recovery's result (`Store.recover`): as a connect's, Valkey full an error."""
    refused = _refusal(reply)
    if isinstance(refused, Exception):
        raise refused
    return _nick_or_none(reply)


def _nick_set(res: list[Any]) -> Any:
    """A /nick's result (`Store.set_nick`)."""
    return _failed_or(res, lambda r: (r[1], r[2]))


def _joined_room(res: list[Any]) -> Any:
    """A /join's result (`Store.join`); its members as their count (a result recorded before holds them all)."""
    return _failed_or(res, lambda r: (r[1], bool(r[2]), r[3] if type(r[3]) is int else len(r[3]), r[4], r[5],
                                      r[6], r[7]))


def _said(res: list[Any] | str) -> Any:
    """A room message's result (`Store.say`): 'ok' as the string '<ts>\n<seq>\n<nick>\n<room>[\n<gateway>...]'."""
    if isinstance(res, str):
        res = _said_ok(res)
    if res[0] == "ok":
        return (res[1], res[2], res[3], float(res[4]), res[5])
    if res[0] == scripts.LOST:
        return _recovered(res, _said)
    return _failed_or(res, lambda r: r)


def _private(res: list[Any] | str) -> Any:
    """A private message's result (`Store.private`): 'ok' as the string '<ts>\n<nick>\n<to cid>\n<to nick>'."""
    if isinstance(res, str):
        res = _private_ok(res)
    if res[0] == "ok":
        return (res[1], res[2], res[3], float(res[4]))
    if res[0] == scripts.LOST:
        return _recovered(res, _private)
    return _failed_or(res, lambda r: r)


def _biggest_rooms(res: list[Any]) -> tuple[list[tuple[str, int]], int]:
    total, flat = res
    rooms = [(room, int(float(n))) for room, n in zip(flat[::2], flat[1::2], strict=True)]
    return sorted(rooms, key=lambda r: (-r[1], r[0])), int(total)


def _float(text: str) -> float:
    try:
        return float(text) if text else 0.0
    except ValueError:
        return 0.0


def history_entry(fields: Mapping[str, str]) -> dict[str, str]:
    """A history entry's fields, in either layout (`scripts.HISTORY_FIELD`) -> its id, from, text, ts and
    kind (those it has)."""
    packed = fields.get(scripts.HISTORY_FIELD)
    if packed is None:
        return dict(fields)
    return dict(zip(scripts.HISTORY_PARTS, packed.split("\n", len(scripts.HISTORY_PARTS) - 1), strict=False))


def _fields(flat: list[str]) -> dict[str, str]:
    return history_entry(dict(zip(flat[::2], flat[1::2], strict=False)))


def _batched(calls: list[Call]) -> list[list[Call]]:
    """`calls` in order, each alone, but a `shared` call with the like ones next to it (at most BATCH_MAX)."""
    batches: list[list[Call]] = []
    for call in calls:
        last = batches[-1] if batches else None
        if (last is not None and call.shared and last[0].script == call.script and len(last) < BATCH_MAX
                and last[0].args[:call.shared] == call.args[:call.shared]):
            last.append(call)
        else:
            batches.append([call])
    return batches


def _joined(batch: list[Call]) -> Call:
    """The calls of a batch as one call (its reply is split by `_split`)."""
    first = batch[0]
    own = tuple(arg for call in batch for arg in call.args[first.shared:])
    return Call(first.script, first.args[:first.shared] + own, lambda reply: reply,
                durable=any(call.durable for call in batch))


def _split(batch: list[Call], reply: Any) -> list[Any]:
    """A batch's reply -> each call's result; an error of the whole batch is each call's."""
    if isinstance(reply, Exception):
        return [reply] * len(batch)
    return _each([call.parse for call in batch], reply)


def _each(parses: list[Callable[[Any], Any]], reply: Any) -> list[Any]:
    """The reply of a group script (one result per call) -> each call's result, parsed by its own."""
    if not isinstance(reply, list) or len(reply) != len(parses):
        wrong = redis.ResponseError(f"a batch of {len(parses)} calls got the reply {reply!r:.200}")
        return [wrong] * len(parses)
    return [_parsed(parse, _refusal(each)) for parse, each in zip(parses, reply, strict=True)]


class Grouped(NamedTuple):
    """The result of a run's call (`Store.say_run`, `Store.private_run`) when not every line of it
    went through as planned: each line's result, as the line's own call would have given it."""

    each: list[Any]


def _group(parse: Callable[[Any], Any], ok: Callable[[str], list[Any]], size: int, reply: Any) -> Any:
    """A run's reply -> when every line's result is 'ok', each as a list (the run's respond reads them
    all at once; `ok` makes one of an 'ok' string, once for the lines that share it), else `Grouped`:
    each line's result parsed by `parse`, as alone."""
    if type(reply) is list and len(reply) == size:
        out: list[Any] = []
        made: dict[str, list[Any]] = {}
        for each in reply:
            if type(each) is str:
                got = made.get(each)
                if got is None:
                    got = made[each] = ok(each)
                out.append(got)
            elif type(each) is list and each and each[0] == "ok":
                out.append(each)
            else:
                break
        else:
            return out
    return Grouped(_each([parse] * size, reply))


def _said_ok(res: str) -> list[Any]:
    """A room message's 'ok' string (`_said`) -> ['ok', nick, room, gateways, ts, room seq]."""
    ts, seq, nick, room, *gateways = res.split("\n")
    return ["ok", nick, room, gateways, ts, int(seq)]


def _private_ok(res: str) -> list[Any]:
    """A private message's 'ok' string (`_private`) -> ['ok', nick, to cid, to nick, ts]."""
    ts, nick, to, to_nick = res.split("\n")
    return ["ok", nick, to, to_nick, ts]


def _parsed(parse: Callable[[Any], Any], reply: Any) -> Any:
    """`parse(reply)`; a Gone or a reply that does not parse as a value (for that call's event only)."""
    if isinstance(reply, Exception):
        return reply
    try:
        return parse(reply)
    except Exception as exc:  # Gone, or a reply we did not expect
        return exc


def _refusal(result: Any) -> Any:
    """A call of a batch that Redis refused (`{'refused', why}`: Valkey full) -> the error Redis gives
    a refused script, as a value; any other result as it is."""
    if isinstance(result, list) and len(result) == 2 and result[0] == "refused":
        why = str(result[1])
        return redis.exceptions.OutOfMemoryError(why) if why.startswith("OOM") else redis.ResponseError(why)
    return result


class Store:
    """The chat state in Redis: one method per atomic operation, each a `Call`.

    `run` sends any number of calls in one round trip (a pipeline, in
    order), which is how a worker serves a whole dispatch of events at once.
    """

    def __init__(self, client: redis.Redis, prefix: str = "chat:", max_rooms: int = 50,
                 history_ttl: int = 86_400, on_round_trip: Callable[[float], None] | None = None,
                 durability: Durability | None = None) -> None:
        self._client = client
        self._durability = durability
        self._on_round_trip = on_round_trip  # gets the seconds of every round trip, failed ones too
        self._p = prefix
        self.max_rooms = max_rooms  # rooms one connection may be in
        self.history_ttl = history_ttl  # seconds an emptied room's history is kept
        self._shas: dict[str, str] = {}
        self._conn: Any = None  # the connection of the round trips (`_connection`)
        self.epoch = 0  # the broker epoch of the dispatch being served (0: a lone broker)

    def close(self) -> None:
        """Close the store's connection (the client's own pool is the client's to close)."""
        if self._conn is not None:
            self._conn.disconnect()

    # --- running calls ------------------------------------------------------------

    def _sha(self, script: str) -> str:
        sha = self._shas.get(script)
        if sha is None:
            sha = self._shas[script] = hashlib.sha1(script.encode()).hexdigest()
        return sha

    def run(self, calls: list[Call]) -> list[Any]:
        """Run calls in order in one round trip -> their results; a `Gone`, a per-call
        `redis.ResponseError` or a reply that does not parse comes back as a value.
        A lost connection raises."""
        if not calls:
            return []
        batches = _batched(calls)
        sent = [batch[0] if len(batch) == 1 and not batch[0].shared else _joined(batch) for batch in batches]
        replies = self._execute(sent)
        if any(isinstance(r, redis.exceptions.NoScriptError) for r in replies):
            self._load_scripts(sent)  # a restarted Redis forgot them; the scripts are replayable
            replies = self._execute(sent)
        if any(isinstance(r, redis.ResponseError) and str(r).startswith(scripts.FENCED) for r in replies):
            raise EpochFenced(f"broker epoch {self.epoch} is no longer the current one")
        results: list[Any] = []
        for batch, reply in zip(batches, replies, strict=True):
            results += _split(batch, reply) if batch[0].shared else [_parsed(batch[0].parse, reply)]
        return results

    def run_one(self, call: Call) -> Any:
        result = self.run([call])[0]
        if isinstance(result, Exception):
            raise result
        return result

    def _execute(self, calls: list[Call]) -> list[Any]:
        new = [call for call in calls if call.script is not None and call.script not in self._shas]
        commands = [self._command(call) for call in calls]
        wait = self._durability if any(call.durable for call in calls) else None
        if wait is not None:
            commands.append(("WAIT", wait.replicas, wait.timeout_ms))
        started = time.perf_counter()
        try:
            self._load_scripts(new)  # first use in this process: loaded before the round trip needs them
            replies = self._round_trip(commands)
        finally:
            if self._on_round_trip is not None:
                self._on_round_trip(time.perf_counter() - started)
        if wait is not None:
            self._check_replicated(replies.pop(), wait)
        return replies

    def _command(self, call: Call) -> tuple[Any, ...]:
        if call.script is None:
            return call.args
        return ("EVALSHA", self._sha(call.script), 0, self._p, *call.args, self.epoch)

    def _round_trip(self, commands: list[tuple[Any, ...]]) -> list[Any]:
        """Send `commands` (each a command name of one word, then its arguments) in one write,
        read every reply in order.

        What redis-py's pipeline does (transaction=False, raise_on_error=False) without its
        per-command bookkeeping, which cost more CPU than the round trip itself: a per-command
        error reply is a value; anything else (a lost link, a timeout) drops the connection, whose
        replies would be out of step, and raises."""
        packed = b"".join([hiredis.pack_command(command) for command in commands])  # as redis-py packs each
        conn = self._connection()
        try:
            conn.send_packed_command([packed])
            return [self._reply(conn, command[0]) for command in commands]
        except BaseException:
            conn.disconnect()  # the next round trip connects it again
            raise

    def _connection(self) -> Any:
        """The store's own connection, made as the client's pool makes them but kept out of it
        (a checkout a round trip costs more than the round trip), and checked before each round
        trip as the pool checks it: one the server closed, or with data nobody asked for, is
        connected afresh (behind Sentinel: to the master of now)."""
        conn = self._conn
        if conn is None:
            pool = self._client.connection_pool
            conn = self._conn = pool.connection_class(**pool.connection_kwargs)
        conn.connect()  # nothing while connected; after a failure dropped it, once (raises if it cannot)
        try:
            stale = conn.can_read()
        except (redis.ConnectionError, redis.TimeoutError, OSError):
            stale = True
        if stale:
            conn.disconnect()
            conn.connect()
        return conn

    def _reply(self, conn: Any, command: str) -> Any:
        try:
            reply = conn.read_response()
        except redis.ResponseError as exc:
            return exc
        if command != "EVALSHA":  # a plain command: the reply as the client would give it
            callback = self._client.response_callbacks.get(command)
            if callback is not None:
                return callback(reply)
        return reply

    @staticmethod
    def _check_replicated(reply: Any, wait: Durability) -> None:
        if isinstance(reply, Exception) or int(reply) < wait.replicas:
            log.warning("a nick claim or departure reached %s of %d replicas within %dms: "
                        "a failover now could lose it", reply, wait.replicas, wait.timeout_ms)

    def _load_scripts(self, calls: list[Call]) -> None:
        """Load the calls' scripts before they run: a pipeline whose script is missing would
        run the calls after it out of order (a retry replays what they recorded)."""
        for script in {c.script for c in calls if c.script is not None}:
            self._shas[script] = self._client.script_load(script)

    # --- the operations ----------------------------------------------------------------

    def connect(self, cid: str, gateway: str, addr: str) -> Call:
        """Register a connection under a fresh guest nick (idempotent) -> the nick, or None. The connects
        of one gateway next to each other run as one script."""
        return Call(scripts.CONNECT, (gateway, cid, addr), _nick_or_none, durable=True, shared=1)

    def recover(self, cid: str, gateway: str, met: Call) -> Call:
        """Register again a connection that the call `met` found gone (Redis forgot it), recording
        that for the line of `met` in the same script -> the new nick, or None (refused, as a
        connect is). Run then (and on any replay), that line's call gives a `Recovered`."""
        return Call(scripts.RECOVER, (cid, gateway, *_op_of(met)), _recover_reply, durable=True)

    def set_nick(self, op: Op, cid: str, nick: str) -> Call:
        """-> (old nick, cids sharing a room) or Failed('taken'). The /nick and /join lines of one event
        next to each other run as one script."""
        event, line = op
        return Call(scripts.NICK_JOIN, (cid, self.max_rooms, event, line, "nick", nick), _nick_set,
                    durable=True, shared=3)

    def join(self, op: Op, cid: str, room: str) -> Call:
        """-> (nick, newly joined, how many members, member nicks, topic, the join's room seq (0 if it
        was a member already), gateways with members) or Failed('toomany'). Grouped as `set_nick`."""
        event, line = op
        return Call(scripts.NICK_JOIN, (cid, self.max_rooms, event, line, "join", room), _joined_room, shared=3)

    def part(self, op: Op, cid: str, room: str | None) -> Call:
        """-> (nick, room left, new current room, the part's room seq, gateways with members left)."""
        return Call(scripts.PART, (cid, room or "", self.history_ttl, *op),
                    lambda r: _failed_or(r, lambda r: tuple(r[1:6])))

    def say(self, op: Op, cid: str, room: str | None, text: str, msg_id: str, ts: float, kind: str) -> Call:
        """Append to the room's history -> (nick, room, gateways with members, ts as first stored,
        the room's seq). The room messages of one event next to each other run as one script."""
        event, line = op
        where = f"{kind} {room or ''}"  # `scripts.SAY`: the id only if it is not the line's own
        if msg_id != f"{cid}/{line}":
            where += "\n" + msg_id
        return Call(scripts.SAY, (cid, HISTORY_KEEP, repr(ts), event, line, where, text), _said, shared=4)

    def say_run(self, cid: str, event: int, ts: str, lines: Sequence[tuple[int, str, str, str]]) -> Call:
        """The room messages of a run of one event's lines as one call, the same the `say` calls of the
        lines would make joined, all at `ts` (as a str) and each with its line's own message ID; each line
        (its number, room or '', text, kind). -> when every line is ok, each `['ok', nick, room, gateways,
        ts as stored, room seq]`, else `Grouped` results as `say`'s."""
        args: list[Any] = [cid, HISTORY_KEEP, ts, event]
        for seq, room, text, kind in lines:
            args += (seq, f"{kind} {room}", text)  # `where` as `say` makes it for the line's own ID
        return Call(scripts.SAY, tuple(args), partial(_group, _said, _said_ok, len(lines)))

    # Reads are replayable too: a replay must see what the first run saw, not
    # what the event's later lines have written since.

    def private(self, op: Op, cid: str, target: str, ts: float) -> Call:
        """-> (sender nick, target cid, target nick as spelled, ts as first seen). The private messages
        of one event next to each other run as one script."""
        event, line = op
        return Call(scripts.PRIVATE, (cid, repr(ts), event, line, target), _private, shared=3)

    def private_run(self, cid: str, event: int, ts: str, lines: Sequence[tuple[int, str]]) -> Call:
        """The private messages of a run of one event's lines as one call, the same the `private` calls
        of the lines would make joined, all at `ts` (as a str); each line (its number, target). -> the
        script's reply when every line is ok, each `['ok', nick, to cid, to nick, ts as first seen]`, else
        `Grouped` results as `private`'s."""
        args: list[Any] = [cid, ts, event]
        for seq, target in lines:
            args += (seq, target)
        return Call(scripts.PRIVATE, tuple(args), partial(_group, _private, _private_ok, len(lines)))

    def who(self, op: Op, cid: str, room: str | None) -> Call:
        """-> (room, member nicks)."""
        return Call(scripts.WHO, (cid, room or "", *op), lambda r: _failed_or(r, lambda r: (r[1], r[2])))

    def rooms(self, op: Op, cid: str, shown: int) -> Call:
        """-> ([(room, members)] of the `shown` biggest rooms, biggest first, then by name;
        how many rooms have members)."""
        return Call(scripts.ROOMS, (cid, shown, *op), _biggest_rooms)

    def history(self, op: Op, cid: str, room: str | None, count: int) -> Call:
        """-> (room, the room's last `count` messages oldest first, as field dicts)."""
        return Call(scripts.HISTORY, (cid, room or "", count, *op), lambda r: _failed_or(
            r, lambda r: (r[1], [_fields(fields) for _, fields in reversed(r[2])])))

    def history_after(self, op: Op, cid: str, room: str | None, after: str, count: int) -> Call:
        """-> (room, at most `count` messages after the one with id `after`, oldest first, as field
        dicts, True if some between were not kept or `after` is not kept at all)."""
        return Call(scripts.HISTORY_AFTER, (cid, room or "", after, count, HISTORY_SCAN, *op),
                    lambda r: _failed_or(r, lambda r: (r[1], [_fields(f) for _, f in reversed(r[2])],
                                                       bool(r[3]))))

    def topic(self, op: Op, cid: str, room: str | None, text: str | None, ts: float) -> Call:
        """Show (text None) or set a room's topic -> (room, topic, set by, set at, member cids: those to
        tell, on a set); Failed('notin') to set it from outside the room."""
        args = (cid, room or "", text or "", "0" if text is None else "1", repr(ts), *op)
        return Call(scripts.TOPIC, args, lambda r: _failed_or(
            r, lambda r: (r[1], r[2], r[3], _float(r[4]), r[5])))

    def leave(self, op: Op, cid: str) -> Call:
        """Forget a connection -> (its nick, cids that shared a room) or None."""
        return Call(scripts.LEAVE, (cid, self.history_ttl, *op), lambda r: (r[0], r[1]) if r else None,
                    durable=True)

    def reap(self, gateway: str, ttl: int = 86_400) -> Call:
        """Forget every connection of a lost gateway, and refuse its late connects for `ttl`
        seconds (no ghosts) -> [(nick, cids that shared a room)]."""
        return Call(scripts.REAP, ("!" + gateway, gateway, ttl, self.history_ttl, 0, 0),
                    lambda r: [(g[0], g[1]) for g in r], durable=True)


