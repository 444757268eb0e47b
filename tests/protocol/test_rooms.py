"""The gateway's room table (protocol.rooms): who gets a room event.

The property test plays the real race: connections on two gateways join,
part and talk; Redis commits their events in one order (the room's seq),
pub-out publishes each connection's events in order but different
connections' in any order, and a connection's next event is committed only
after its previous one was published (one event in flight). Every member
must get every event committed while it was a member, once, and any two
members must see the events they share in the same order. A member that
parts may also be shown events committed after its part that came before
the part itself, as over the network: always before it is told "you left".
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from hypothesis import given, settings
from hypothesis import strategies as st

from protocol.messages import ChatEvent, EventType, RoomEvent, gateway_of
from protocol.rooms import RoomTable

GATEWAYS = ("g1", "g2")
CIDS = tuple(f"g{1 + i % 2}:{i}" for i in range(6))
ROOM = "#r"


def _event(text: str, kind: EventType = EventType.MESSAGE) -> ChatEvent:
    return ChatEvent(kind, text, room=ROOM)


@dataclass
class Model:
    """Redis's side: commit order, the room's seq, members and gateways with members."""

    seq: int = 0
    said: int = 0
    members: set[str] = field(default_factory=set)
    on: Counter[str] = field(default_factory=Counter)  # gateway -> members there
    expected: dict[str, set[str]] = field(default_factory=dict)  # event text -> who must get it
    parts: dict[str, list[int]] = field(default_factory=dict)  # cid -> the seqs of its parts
    seq_of: dict[str, int] = field(default_factory=dict)  # message text -> the room seq it was said at

    def gateways(self) -> list[str]:
        return [g for g in GATEWAYS if self.on[g] > 0]

    def commit(self, cid: str, op: str) -> tuple[list[str], RoomEvent] | None:
        gw = gateway_of(cid)
        if op == "join" and cid not in self.members:
            self.seq += 1
            self.members.add(cid)
            self.on[gw] += 1
            text = f"join{self.seq}"
            self.expected[text] = self.members - {cid}
            return [gw, *self.gateways()], RoomEvent(ROOM, self.seq, _event(text, EventType.JOIN), cid, 1)
        if op == "part" and cid in self.members:
            self.seq += 1
            self.members.discard(cid)
            self.on[gw] -= 1
            self.parts.setdefault(cid, []).append(self.seq)
            text = f"part{self.seq}"
            self.expected[text] = set(self.members)
            return [gw, *self.gateways()], RoomEvent(ROOM, self.seq, _event(text, EventType.PART), cid, -1)
        if op == "say" and cid in self.members:
            self.said += 1
            text = f"msg{self.said}"
            self.seq_of[text] = self.seq
            self.expected[text] = set(self.members)
            return self.gateways(), RoomEvent(ROOM, self.seq, _event(text))
        return None


class Gateways:
    """The gateways' side: a table each, fed batches in pub-out order."""

    def __init__(self) -> None:
        self.in_flight: dict[str, list[tuple[list[str], RoomEvent]]] = {}  # committed, not yet published
        self.tables = {g: RoomTable(lambda cid, g=g: gateway_of(cid) == g,  # type: ignore[misc]
                                    lambda cid: cid in self.in_flight) for g in GATEWAYS}
        self.got: dict[str, list[str]] = {cid: [] for cid in CIDS}

    def answer(self, cid: str) -> None:
        """Publish the connection's event: its gateway takes its acknowledgement first."""
        self.publish(self.in_flight.pop(cid))
        for cids, event in self.tables[gateway_of(cid)].release(cid):
            for each in cids:
                self.got[each].append(event.text)

    def publish(self, items: list[tuple[list[str], RoomEvent]], now: float = 0.0) -> None:
        for gateway, table in self.tables.items():
            batch = [item for gateways, item in items if gateway in gateways]
            for index, item in enumerate(batch):
                if item.change < 0 and gateway_of(item.member) == gateway:  # "you left", before the part
                    self.got[item.member].append(f"left{item.seq}")
                for cids, event in table.apply(item, now, batch, index):
                    for cid in cids:
                        self.got[cid].append(event.text)


@st.composite
def runs(draw: st.DrawFn) -> tuple[Model, Gateways]:
    model, gateways = Model(), Gateways()
    in_flight = gateways.in_flight
    for _ in range(draw(st.integers(1, 60))):
        idle = [cid for cid in CIDS if cid not in in_flight]
        if idle and (not in_flight or draw(st.booleans())):
            cid = draw(st.sampled_from(idle))
            ops = draw(st.lists(st.sampled_from(["join", "part", "say", "say"]), min_size=1, max_size=3))
            in_flight[cid] = [made for op in ops if (made := model.commit(cid, op)) is not None]
        else:
            gateways.answer(draw(st.sampled_from(sorted(in_flight))))
    while in_flight:
        gateways.answer(draw(st.sampled_from(sorted(in_flight))))
    return model, gateways


@settings(max_examples=400, deadline=None)
@given(runs())
def test_every_member_gets_what_was_committed_while_it_was_in_once_in_one_order(run: tuple[Model, Gateways]) -> None:
    model, gateways = run
    shown: dict[str, list[str]] = {}
    for cid, got in gateways.got.items():
        assert len(got) == len(set(got)), f"{cid} got something twice: {got}"
        wanted = {text for text, who in model.expected.items() if cid in who}
        assert wanted <= set(got), f"{cid}: missing {wanted - set(got)}"
        for extra in set(got) - wanted - {f"left{seq}" for seq in model.parts.get(cid, [])}:
            assert _after_a_part_before_its_notice(extra, got, model.parts.get(cid, []), model), (cid, extra, got)
        shown[cid] = [text for text in got if not text.startswith("left")]
    for a in CIDS:
        for b in CIDS:
            shared = set(shown[a]) & set(shown[b])
            assert [t for t in shown[a] if t in shared] == [t for t in shown[b] if t in shared]


def _after_a_part_before_its_notice(extra: str, got: list[str], parts: list[int], model: Model) -> bool:
    """`extra` was committed after one of the connection's parts, and shown before that part was."""
    seq = int(extra.removeprefix("msg").removeprefix("join").removeprefix("part")) if extra[0] != "m" else None
    committed = model.seq_of[extra] if seq is None else seq
    return any(committed >= part and got.index(extra) < got.index(f"left{part}") for part in parts
               if f"left{part}" in got)


def _table() -> RoomTable:
    return RoomTable(lambda cid: cid.startswith("g1:"), ring=4, keep=10.0)


def test_a_message_committed_after_a_join_but_published_before_it_reaches_the_joiner() -> None:
    table = _table()
    assert table.apply(RoomEvent(ROOM, 1, _event("a joined"), "g1:a", 1), 0.0) == []
    early = RoomEvent(ROOM, 2, _event("hi b"))  # committed after b's join (seq 2), published first
    assert table.apply(early, 0.0) == [(("g1:a",), early.event)]
    join = RoomEvent(ROOM, 2, _event("b joined"), "g1:b", 1)
    assert table.apply(join, 0.0) == [(("g1:b",), early.event), (("g1:a",), join.event)]
    assert table.members(ROOM) == {"g1:a", "g1:b"}


def test_a_part_in_the_same_batch_bounds_what_the_joiner_is_owed() -> None:
    table = _table()
    after_part = RoomEvent(ROOM, 2, _event("after the part"))
    table.apply(RoomEvent(ROOM, 0, _event("x joined"), "g1:x", 1), 0.0)
    table.apply(after_part, 0.0)  # to x; committed after b's join (1) and part (2)
    batch = [RoomEvent(ROOM, 1, _event("b joined"), "g1:b", 1), RoomEvent(ROOM, 2, _event("b left"), "g1:b", -1)]
    shown = [d for i, item in enumerate(batch) for d in table.apply(item, 0.0, batch, i)]
    assert all("g1:b" not in cids for cids, _ in shown)


def test_a_message_committed_before_a_part_but_published_after_it_still_reaches_the_parted() -> None:
    table = _table()
    table.apply(RoomEvent(ROOM, 1, _event("a joined"), "g1:a", 1), 0.0)
    table.apply(RoomEvent(ROOM, 2, _event("a left"), "g1:a", -1), 1.0)
    late = RoomEvent(ROOM, 1, _event("said before the part"))
    assert table.apply(late, 2.0) == [(("g1:a",), late.event)]
    assert table.apply(RoomEvent(ROOM, 2, _event("said after")), 2.0) == []
    table.sweep(20.0)  # past `keep`: the former member and the empty room are let go
    assert len(table) == 0


def test_only_the_gateways_own_connections_are_counted_members() -> None:
    table = _table()
    table.apply(RoomEvent(ROOM, 1, _event("z joined"), "g2:z", 1), 0.0)
    assert table.members(ROOM) == set()


def test_a_closed_connection_is_nobodys_member() -> None:
    table = _table()
    table.apply(RoomEvent(ROOM, 1, _event("a joined"), "g1:a", 1), 0.0)
    table.forget("g1:a")
    assert table.apply(RoomEvent(ROOM, 1, _event("hi")), 0.0) == []


def test_a_join_later_than_the_ring_is_long_is_counted() -> None:
    table = _table()
    table.apply(RoomEvent(ROOM, 1, _event("a joined"), "g1:a", 1), 0.0)
    for n in range(6):  # committed after b's join at 2, all published before it: the ring keeps 4
        table.apply(RoomEvent(ROOM, 2, _event(f"m{n}")), 0.0)
    owed = table.apply(RoomEvent(ROOM, 2, _event("b joined"), "g1:b", 1), 0.0)
    assert [e.text for cids, e in owed if cids == ("g1:b",)] == ["m2", "m3", "m4", "m5"]
    assert table.missed == 1


def test_a_rejoin_owed_an_event_older_than_one_it_is_owed_as_a_former_member_gets_both_in_order() -> None:
    busy = {"g1:a"}  # its re-join is on its way
    table = RoomTable(lambda cid: cid.startswith("g1:"), lambda cid: cid in busy)
    table.apply(RoomEvent(ROOM, 1, _event("a joined"), "g1:a", 1), 0.0)
    table.apply(RoomEvent(ROOM, 2, _event("a left"), "g1:a", -1), 0.0)
    newer = RoomEvent(ROOM, 3, _event("said after a joined again"))  # committed after the re-join at 3
    older = RoomEvent(ROOM, 1, _event("said before a left"))  # published late
    table.apply(RoomEvent(ROOM, 0, _event("x joined"), "g1:x", 1), 0.0)
    assert table.apply(newer, 0.0) == [(("g1:x",), newer.event)]
    assert table.apply(older, 0.0) == [(("g1:x",), older.event)]  # a's is held: its re-join may be coming
    shown = table.apply(RoomEvent(ROOM, 3, _event("a joined"), "g1:a", 1), 0.0)
    assert shown[:2] == [(("g1:a",), newer.event), (("g1:a",), older.event)]
    busy.clear()
    assert table.release("g1:a") == []


def test_what_a_busy_former_member_is_held_comes_when_its_event_is_answered() -> None:
    busy = {"g1:a"}
    table = RoomTable(lambda cid: cid.startswith("g1:"), lambda cid: cid in busy)
    table.apply(RoomEvent(ROOM, 1, _event("a joined"), "g1:a", 1), 0.0)
    table.apply(RoomEvent(ROOM, 3, _event("a left"), "g1:a", -1), 0.0)
    late = [RoomEvent(ROOM, 1, _event("one")), RoomEvent(ROOM, 2, _event("two"))]
    for item in late:
        assert table.apply(item, 0.0) == []
    busy.clear()
    assert table.release("g1:a") == [(("g1:a",), late[0].event), (("g1:a",), late[1].event)]
    assert table.release("g1:a") == []


def test_what_comes_for_a_former_member_after_its_held_events_waits_behind_them() -> None:
    busy = {"g1:a"}
    table = RoomTable(lambda cid: cid.startswith("g1:"), lambda cid: cid in busy)
    table.apply(RoomEvent(ROOM, 1, _event("a joined"), "g1:a", 1), 0.0)
    table.apply(RoomEvent(ROOM, 3, _event("a left"), "g1:a", -1), 0.0)
    one, two = RoomEvent(ROOM, 1, _event("one")), RoomEvent(ROOM, 2, _event("two"))
    assert table.apply(one, 0.0) == []
    busy.clear()  # its event answered, in the batch that brings `two` too: released after the batch
    assert table.apply(two, 0.0) == []
    assert table.release("g1:a") == [(("g1:a",), one.event), (("g1:a",), two.event)]


def test_what_two_former_memberships_were_held_comes_in_the_order_it_came() -> None:
    """a was a member twice, [2, 4) and [5, 7); b's join at 3 and c's at 6 reach the gateway late,
    c's first. Held while a's re-join was coming, they reach a in that order, as they reached x."""
    busy = {"g1:a"}  # its re-join is on its way
    table = RoomTable(lambda cid: cid.startswith("g1:"), lambda cid: cid in busy)
    table.apply(RoomEvent(ROOM, 1, _event("x joined"), "g1:x", 1), 0.0)
    for seq, change in ((2, 1), (4, -1), (5, 1), (7, -1)):
        table.apply(RoomEvent(ROOM, seq, _event(f"a {seq}"), "g1:a", change), 0.0)
    c_joined = RoomEvent(ROOM, 6, _event("c joined"), "g2:c", 1)  # owed to a as a member of [5, 7)
    b_joined = RoomEvent(ROOM, 3, _event("b joined"), "g2:b", 1)  # owed to a as a member of [2, 4)
    assert table.apply(c_joined, 0.0) == [(("g1:x",), c_joined.event)]
    assert table.apply(b_joined, 0.0) == [(("g1:x",), b_joined.event)]
    shown = table.apply(RoomEvent(ROOM, 8, _event("a joined"), "g1:a", 1), 0.0)
    assert shown[:2] == [(("g1:a",), c_joined.event), (("g1:a",), b_joined.event)]
