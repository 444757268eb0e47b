"""A gateway's table of its own connections' rooms: who gets a `RoomEvent`.

A worker sends a room's message once to each gateway that has members in
it; the gateway expands it to its members with this table. The table is
kept from the `RoomEvent`s themselves (a join or part of one of its
connections rides on the room event that announces it), so it needs no
other source and nothing to rebuild it: a connection's memberships die
with it, and a new gateway instance has no connections.

Pub-out delivers the events of one connection in order, but not the events
of different connections in Redis's commit order: two workers may publish
in either order. So membership is decided by Redis's order, not by arrival:
every join and part of a room takes the next number of the room's sequence
in the same script, and a message carries the room's current number. A
connection that joined at `j` and parted at `p` (or not yet) is a member
for exactly the events numbered `j <= seq < p`, whatever order they arrive
in:

- an event that arrives before the join that entitles a member to it waits
  in the room's ring (the last `ring` events of the room) and is shown to
  the joiner as the join arrives (up to the connection's part, when the
  same batch carries it too: the one event in flight per connection means
  a later part comes in a later batch);
- an event committed before a part that arrives after it still reaches the
  parted connection, kept as a former member for `keep` seconds;
- an event committed after a part that arrives before it is shown to the
  parting connection (it is still a member here): before its "you left",
  as a chat over a network may, and never twice if it joins again.

A connection that parted and is joining again must not be shown an event
owed to it as a former member (committed before its part, published late)
before one that came earlier and that its re-join will entitle it to: while
a former member has an event in flight (`busy`: its re-join may be in it),
what it is owed as such is held, and shown when that event is answered
(`release`), or with what its re-join is owed, in the order they came.

Events are shown in the order they arrive, the one order pub-out gives
every gateway. A late join that a ring too short may have cost something is counted in
`missed`, never silent. Pure: time comes in as a value.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from protocol.messages import ChatEvent, RoomEvent

RING = 128  # room events kept for a join that arrives after them
KEEP = 30.0  # seconds a parted member, or a room without members, is kept for late events
MAX_FORMER = 1024  # parted members kept a room (the oldest go first)
NEVER = 1 << 62  # the part of a member that has not parted

Delivery = tuple[tuple[str, ...], ChatEvent]


@dataclass(slots=True)
class _Former:
    cid: str
    joined: int
    parted: int
    at: float
    shown: range  # the ring positions of the events that came while it was a member (it was shown them)
    held: list[tuple[int, ChatEvent]] = field(default_factory=list)  # (ring position, event) owed, held


@dataclass(slots=True)
class _Room:
    members: dict[str, int] = field(default_factory=dict)  # cid -> the seq it joined at
    since: dict[str, int] = field(default_factory=dict)  # cid -> the ring position its join came at
    former: deque[_Former] = field(default_factory=deque)
    ring: deque[RoomEvent] = field(default_factory=deque)
    pushed: int = 0  # events that went into the ring so far: the next one's position
    top: int = -1  # the highest seq that went into it
    evicted: int = -1  # the highest seq the ring let go
    last: float = 0.0  # when an event last came
    everyone: tuple[str, ...] | None = None  # the members, one tuple while none joins or leaves
    latest: int = -1  # the highest seq a member joined at (at least)

    def idle(self) -> bool:
        return not self.members and not self.former

    def audience(self, seq: int, member: str) -> tuple[str, ...]:
        """The members shown an event numbered `seq` that `member` caused: in the usual case
        (all joined by then, `member` none of them) the same tuple for every event, so that a
        gateway can tell an audience it has seen from its identity (gateway.deliver)."""
        members = self.members
        if seq >= self.latest and member not in members:
            if self.everyone is None:
                self.everyone = tuple(members)
            return self.everyone
        return tuple([cid for cid, joined in members.items() if joined <= seq and cid != member])

    def changed(self) -> None:
        """A member joined or left: the next audience is a new tuple."""
        self.everyone = None


class RoomTable:
    def __init__(self, is_local: Callable[[str], bool], busy: Callable[[str], bool] = lambda cid: False,
                 ring: int = RING, keep: float = KEEP, max_former: int = MAX_FORMER) -> None:
        self._is_local = is_local
        self._busy = busy  # the connection has an event in flight
        self._ring = ring
        self._keep = keep
        self._max_former = max_former
        self._rooms: dict[str, _Room] = {}
        self._rooms_of: dict[str, set[str]] = {}  # cid -> rooms it is in
        self.missed = 0  # late joins that may have missed events the ring had let go
        self._holding: dict[str, set[str]] = {}  # cid -> rooms where it has events held

    def __len__(self) -> int:
        return len(self._rooms)

    def members(self, room: str) -> set[str]:
        known = self._rooms.get(room)
        return set() if known is None else set(known.members)

    def apply(self, item: RoomEvent, now: float, batch: Sequence[object] = (), index: int = 0) -> list[Delivery]:
        """Take one room event, `batch[index]` -> what to show to whom, in order."""
        room = self._rooms.get(item.room)
        if room is None:
            room = self._rooms[item.room] = _Room()
        room.last = now
        if not item.change and not item.member and not room.former and item.seq >= room.latest:
            return self._message(room, item)
        out: list[Delivery] = []
        if item.change and self._is_local(item.member):
            if item.change > 0:
                out += self._joined(room, item, batch, index)
            else:
                self._parted(room, item, now)
        seq, member = item.seq, item.member
        to = room.audience(seq, member)
        if room.former and (former := self._to_former(room, seq, member, item.event, item.room)):
            to += tuple(former)
        self._keep_in_ring(room, item)
        if to:
            out.append((to, item.event))
        return out

    def _message(self, room: _Room, item: RoomEvent) -> list[Delivery]:
        """`apply` in the usual case, a message that every member joined before and no former member
        is owed: the room's one tuple of members, and the ring (as `audience`, `_keep_in_ring` do)."""
        to = room.everyone
        if to is None:
            to = room.everyone = tuple(room.members)
        ring = room.ring
        ring.append(item)
        room.pushed += 1
        if item.seq > room.top:
            room.top = item.seq
        if len(ring) > self._ring and (evicted := ring.popleft().seq) > room.evicted:
            room.evicted = evicted
        return [(to, item.event)] if to else []

    def _to_former(self, room: _Room, seq: int, member: str, event: ChatEvent, name: str) -> list[str]:
        """Parted members owed an event committed before they parted: now, or held while busy."""
        out = []
        for f in room.former:
            if f.joined <= seq < f.parted and f.cid != member:
                # a re-join of it may be on its way; or some are held already: they come first
                if f.held or (f.cid not in room.members and self._busy(f.cid)):
                    f.held.append((room.pushed, event))
                    self._holding.setdefault(f.cid, set()).add(name)
                else:
                    out.append(f.cid)
        return out

    def _joined(self, room: _Room, item: RoomEvent, batch: Sequence[object], index: int) -> list[Delivery]:
        """A member from `item.seq`: and what came before its join that it is owed."""
        cid, joined = item.member, item.seq
        room.members[cid] = joined
        room.latest = max(room.latest, joined)
        room.changed()
        room.since[cid] = room.pushed
        self._rooms_of.setdefault(cid, set()).add(item.room)
        if room.top < joined:  # the usual case: nothing committed after the join came before it
            return [((cid,), event) for _, event in self._unhold(room, cid)]
        parted = _part_in(batch, index, item)
        if room.evicted >= joined:  # the ring let go of something it may have been owed
            self.missed += 1
        # shown already: what came while a part of it was on its way (a part and a join in one batch)
        shown = [f.shown for f in room.former if f.cid == cid]
        first = room.pushed - len(room.ring)
        owed = [(at, kept.event) for at, kept in enumerate(room.ring, first)
                if joined <= kept.seq < parted and kept.member != cid and not any(at in r for r in shown)]
        owed += self._unhold(room, cid)  # owed as a former member, held: in the order they all came
        owed.sort(key=lambda pair: pair[0])
        return [((cid,), event) for _, event in owed]

    @staticmethod
    def _unhold(room: _Room, cid: str) -> list[tuple[int, ChatEvent]]:
        """What `cid` was held as a former member of the room, in the order it came (one list per
        part of it: the events of two of them interleave)."""
        out: list[tuple[int, ChatEvent]] = []
        for f in room.former:
            if f.cid == cid and f.held:
                out += f.held
                f.held = []
        out.sort(key=lambda pair: pair[0])
        return out

    def release(self, cid: str) -> list[Delivery]:
        """Its event was answered: what it was held as a former member, in the order it came."""
        out: list[Delivery] = []
        for name in self._holding.pop(cid, ()):
            room = self._rooms.get(name)
            if room is not None:
                out += [((cid,), event) for _, event in self._unhold(room, cid)]
        return out

    def _parted(self, room: _Room, item: RoomEvent, now: float) -> None:
        joined = room.members.pop(item.member, None)
        if joined is None:
            return
        room.changed()
        since = room.since.pop(item.member, room.pushed)
        self._rooms_of.get(item.member, set()).discard(item.room)
        room.former.append(_Former(item.member, joined, item.seq, now, range(since, room.pushed)))
        if len(room.former) > self._max_former:
            room.former.popleft()

    def _keep_in_ring(self, room: _Room, item: RoomEvent) -> None:
        room.ring.append(item)
        room.pushed += 1
        room.top = max(room.top, item.seq)
        if len(room.ring) > self._ring:
            room.evicted = max(room.evicted, room.ring.popleft().seq)

    def forget(self, cid: str) -> None:
        """The connection closed: it is nobody's member any more."""
        self._holding.pop(cid, None)
        for name in self._rooms_of.pop(cid, ()):
            room = self._rooms.get(name)
            if room is None:
                continue
            room.members.pop(cid, None)
            room.since.pop(cid, None)
            room.changed()

    def sweep(self, now: float) -> None:
        """Let go of parted members and member-less rooms older than `keep` seconds."""
        horizon = now - self._keep
        for name in [name for name, room in self._rooms.items() if self._expire(room, horizon)]:
            del self._rooms[name]

    def _expire(self, room: _Room, horizon: float) -> bool:
        while room.former and room.former[0].at < horizon:
            room.former.popleft()
        return room.idle() and room.last < horizon


def _part_in(batch: Sequence[object], index: int, join: RoomEvent) -> int:
    """The seq of the joiner's part of the room later in the same batch (a big number if none)."""
    for later in batch[index + 1:]:
        if (type(later) is RoomEvent and later.change < 0 and later.member == join.member
                and later.room == join.room):
            return later.seq
    return NEVER
