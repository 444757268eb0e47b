"""A batch's deliveries grouped into runs (protocol.fanout) and the room table's audiences.

The property: whatever the audiences (the same tuple again, an equal tuple
that is another object, overlapping ones, a cid twice) and wherever the
settles fall, every client gets exactly what one push per delivery would
have given it, in the same order. The examples pin the grouping itself: a
room's messages in a batch are one run, two rooms' interleaved messages two.
"""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from protocol.fanout import Runs
from protocol.messages import ChatEvent, EventType, RoomEvent
from protocol.rooms import RoomTable

Run = tuple[tuple[str, ...], list[ChatEvent]]
POOL = ("a", "b", "c", "d", "e")


def _event(n: int) -> ChatEvent:
    return ChatEvent(EventType.MESSAGE, f"m{n}", room="#r")


def _recorder() -> tuple[Runs, list[Run]]:
    emitted: list[Run] = []
    return Runs(lambda cids, events: emitted.append((cids, list(events)))), emitted


def _per_client(runs: list[Run]) -> dict[str, list[str]]:
    got: dict[str, list[str]] = {}
    for cids, events in runs:
        for cid in cids:
            got.setdefault(cid, []).extend(event.text for event in events)
    return got


audiences = st.lists(st.lists(st.sampled_from(POOL), max_size=4).map(tuple), min_size=1, max_size=5)
steps = st.lists(st.one_of(st.tuples(st.just("add"), st.integers(0, 4), st.booleans()), st.just(("settle", 0, False))),
                 max_size=60)


@settings(max_examples=500, deadline=None)
@given(audiences, steps)
def test_every_client_gets_what_it_would_get_one_delivery_at_a_time(pool: list[tuple[str, ...]],
                                                                    plan: list[tuple[str, int, bool]]) -> None:
    runs, emitted = _recorder()
    naive: list[Run] = []
    for n, (op, which, copy) in enumerate(plan):
        if op == "settle":
            runs.settle()
            continue
        cids = pool[which % len(pool)]
        cids = tuple(list(cids)) if copy else cids  # an equal tuple, another object (for a non-empty one)
        runs.add(cids, _event(n))
        naive.append((cids, [_event(n)]))
    runs.settle()
    assert _per_client(emitted) == _per_client(naive)
    assert sum(len(events) for _, events in emitted) == len(naive)  # each delivery handed on once


def test_a_rooms_messages_in_a_batch_are_one_run() -> None:
    runs, emitted = _recorder()
    room = ("a", "b", "c")
    for n in range(16):
        runs.add(room, _event(n))
    assert emitted == []  # nothing handed on before the batch ends
    runs.settle()
    assert emitted == [(room, [_event(n) for n in range(16)])]


def test_two_rooms_interleaved_are_two_runs_and_a_delivery_to_a_member_between_splits_them() -> None:
    runs, emitted = _recorder()
    one, two = ("a", "b"), ("c", "d")
    for n in range(4):
        runs.add(one if n % 2 else two, _event(n))
    runs.add(("b",), _event(4))  # a private message to a member of room one: what came before goes first
    runs.add(one, _event(5))
    runs.settle()
    assert _per_client(emitted) == {"a": ["m1", "m3", "m5"], "b": ["m1", "m3", "m4", "m5"], "c": ["m0", "m2"],
                                    "d": ["m0", "m2"]}
    assert len(emitted) == 4  # one and two, the private message, one again


def test_a_rooms_audience_is_one_tuple_until_somebody_joins_or_leaves() -> None:
    table = RoomTable(lambda cid: cid.startswith("g1:"))
    join = ChatEvent(EventType.JOIN, "joined", room="#r")
    for seq, cid in enumerate(("g1:a", "g1:b", "g1:c"), 1):
        table.apply(RoomEvent("#r", seq, join, cid, 1), 0.0)
    [(first, _)] = table.apply(RoomEvent("#r", 3, _event(1)), 0.0)
    [(again, _)] = table.apply(RoomEvent("#r", 3, _event(2)), 0.0)
    assert first is again and first == ("g1:a", "g1:b", "g1:c")
    [(late, _)] = table.apply(RoomEvent("#r", 2, _event(3)), 0.0)  # committed before c joined, come late
    assert late == ("g1:a", "g1:b")
    table.apply(RoomEvent("#r", 4, ChatEvent(EventType.PART, "left", room="#r"), "g1:b", -1), 0.0)
    [(after, _)] = table.apply(RoomEvent("#r", 4, _event(4)), 0.0)
    assert after == ("g1:a", "g1:c") and after is not first
    table.forget("g1:c")
    [(gone, _)] = table.apply(RoomEvent("#r", 4, _event(5)), 0.0)
    assert gone == ("g1:a",)
