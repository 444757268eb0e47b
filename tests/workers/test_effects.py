"""Tests for workers.effects: what handling events causes, split per gateway."""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from protocol.codec import decode
from protocol.messages import (
    Batch,
    BatchItem,
    ChatEvent,
    Close,
    Deliver,
    EventType,
    Mark,
    RoomEvent,
    SetMode,
    gateway_of,
)
from workers.effects import Effects, ToGateways

A1, A2, B1, C1 = "gwA.x1:1", "gwA.x1:2", "gwB.y2:1", "gwC.z3:1"
HELLO = ChatEvent(EventType.MESSAGE, "hello", room="#r", sender="ann", id=f"{A1}/3", ts=1.5, origin=A1)


def test_gateway_of_is_the_part_before_the_last_colon() -> None:
    assert gateway_of("gwA.x1:17") == "gwA.x1"
    assert gateway_of("host:5555:3") == "host:5555"


def test_item_helpers() -> None:
    fx = Effects()
    fx.info(A1, "pong")
    fx.error(A1, "bad")
    fx.set_json(A1)
    fx.close(A1, "quit")
    fx.deliver([], HELLO)  # no one: nothing
    fx.deliver(iter([A1, B1]), HELLO)
    assert fx.items == [
        Deliver((A1,), ChatEvent(EventType.INFO, "pong")),
        Deliver((A1,), ChatEvent(EventType.ERROR, "bad")),
        SetMode(A1, True),
        Close(A1, "quit"),
        Deliver((A1, B1), HELLO),
    ]


def test_deliver_is_split_by_gateway_keeping_order() -> None:
    fx = Effects()
    fx.mark(A1, 3)
    fx.deliver([B1, A1, C1, A2], HELLO)
    assert fx.by_gateway() == {
        "gwA.x1": [Mark(A1, 3), Deliver((A1, A2), HELLO)],
        "gwB.y2": [Mark(A1, 3), Deliver((B1,), HELLO)],
        "gwC.z3": [Mark(A1, 3), Deliver((C1,), HELLO)],
    }


def test_each_gateway_gets_its_items_in_order_after_the_mark() -> None:
    second = ChatEvent(EventType.INFO, "two")
    fx = Effects()
    fx.mark(A1, 1)
    fx.deliver([A1, B1], HELLO)
    fx.set_json(B1)
    fx.deliver([B1], second)
    fx.close(A2, "quit")
    out = fx.by_gateway()
    assert out["gwA.x1"] == [Mark(A1, 1), Deliver((A1,), HELLO), Close(A2, "quit")]
    assert out["gwB.y2"] == [Mark(A1, 1), Deliver((B1,), HELLO), SetMode(B1, True), Deliver((B1,), second)]


def test_the_origin_always_gets_its_mark() -> None:
    fx = Effects()
    fx.mark(A1, 5)  # an event with no effect for gwA: still its acknowledgement
    fx.deliver([B1], HELLO)
    fx.mark(A2, 9)  # an event with no effect at all
    assert fx.by_gateway() == {
        "gwA.x1": [Mark(A1, 5), Mark(A2, 9)],
        "gwB.y2": [Mark(A1, 5), Deliver((B1,), HELLO)],
    }


def test_mark_goes_only_to_gateways_with_items_of_that_event() -> None:
    fx = Effects()
    fx.mark(A1, 1)
    fx.deliver([B1], HELLO)
    fx.mark(B1, 7)
    fx.info(B1, "pong")
    fx.mark(C1, 2)
    fx.deliver([A1, B1], HELLO)
    assert fx.by_gateway() == {
        "gwA.x1": [Mark(A1, 1), Mark(C1, 2), Deliver((A1,), HELLO)],
        "gwB.y2": [
            Mark(A1, 1), Deliver((B1,), HELLO),
            Mark(B1, 7), Deliver((B1,), ChatEvent(EventType.INFO, "pong")),
            Mark(C1, 2), Deliver((B1,), HELLO),
        ],
        "gwC.z3": [Mark(C1, 2)],
    }


def test_a_lost_gateway_mark_is_no_acknowledgement() -> None:
    quit_ = ChatEvent(EventType.QUIT, "ann quit (connection lost)", sender="ann")
    fx = Effects()
    fx.mark("!gwD.q", 0)
    fx.deliver([A1, B1], quit_)
    fx.mark("!gwE.q", 0)  # a loss that frees nothing anyone sees
    assert fx.by_gateway() == {
        "gwA.x1": [Mark("!gwD.q", 0), Deliver((A1,), quit_)],
        "gwB.y2": [Mark("!gwD.q", 0), Deliver((B1,), quit_)],
    }
    assert "" not in fx.by_gateway()  # gateway_of('!gwE.q') is ''


def test_items_before_any_mark_go_out_unmarked() -> None:
    fx = Effects()
    fx.info(A1, "hi")
    assert fx.by_gateway() == {"gwA.x1": [Deliver((A1,), ChatEvent(EventType.INFO, "hi"))]}


def test_nothing_to_publish() -> None:
    assert Effects().by_gateway() == {}
    assert Effects().encoded() == ()


def test_encoded_round_trips_through_the_codec() -> None:
    fx = Effects()
    fx.mark(A1, 3)
    fx.deliver([A1, B1], HELLO)
    fx.set_json(A1)
    fx.close(A1, "quit")
    fx.mark("!gwD.q", 0)
    fx.deliver([B1], ChatEvent(EventType.QUIT, "bob quit", sender="bob"))
    encoded = fx.encoded()
    assert [gw for gw, _ in encoded] == list(fx.by_gateway())
    for gateway, data in encoded:
        assert decode(data) == Batch(tuple(fx.by_gateway()[gateway]))


# --- properties ------------------------------------------------------------------------

gateways = st.sampled_from(["gwA.x1", "gwB.y2", "gwC.z3"])
cids = st.builds(lambda gw, n: f"{gw}:{n}", gateways, st.integers(1, 3))
events = st.builds(ChatEvent, type=st.sampled_from(list(EventType)), text=st.text(max_size=5))
marks = st.one_of(
    st.tuples(st.just("mark"), cids, st.integers(0, 50)),
    st.tuples(st.just("mark"), gateways.map(lambda g: "!" + g), st.just(0)),
)
effects_ops = st.one_of(
    st.tuples(st.just("deliver"), st.lists(cids, max_size=4, unique=True), events),
    st.tuples(st.just("rooms"), st.lists(gateways, min_size=1, max_size=3, unique=True), st.lists(events, max_size=3)),
    st.tuples(st.just("json"), cids),
    st.tuples(st.just("close"), cids, st.text(max_size=5)),
)
# what a worker produces: events, each a Mark and its items
programs = st.lists(st.tuples(marks, st.lists(effects_ops, max_size=4)), max_size=5)


def _run(program: list) -> Effects:  # type: ignore[type-arg]
    fx = Effects()
    for (_, cid, seq), ops in program:
        fx.mark(cid, seq)
        for op in ops:
            if op[0] == "deliver":
                fx.deliver(op[1], op[2])
            elif op[0] == "rooms":  # a run's room events, to every one of the gateways
                fx.rooms(tuple(op[1])).extend(RoomEvent("#r", n, event) for n, event in enumerate(op[2]))
            elif op[0] == "json":
                fx.set_json(op[1])
            else:
                fx.close(op[1], op[2])
    return fx


def _gateways_of(item: BatchItem) -> set[str]:
    if isinstance(item, Deliver):
        return {gateway_of(c) for c in item.cids}
    assert not isinstance(item, Mark)
    return {gateway_of(item.cid)}


@settings(max_examples=200, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
@given(programs)
def test_by_gateway_properties(program: list) -> None:  # type: ignore[type-arg]
    fx = _run(program)
    out = fx.by_gateway()
    for gateway, items in out.items():
        assert items, "no empty batches"
        current: Mark | None = None
        for item in items:
            if isinstance(item, Mark):
                current = item
                continue
            assert current is not None, "an item before its event's Mark"
            if not isinstance(item, RoomEvent):  # a room event goes to the gateways named with it
                assert _gateways_of(item) == {gateway}
    # per event: the origin's acknowledgement, and the event's items where they belong
    expected: dict[str, list[BatchItem]] = {}
    for (tag, cid, seq), ops in program:
        mark = Mark(cid, seq)
        wanted: dict[str, list[BatchItem]] = {}
        if not cid.startswith("!"):
            wanted[gateway_of(cid)] = [mark]
        for item in _run([((tag, cid, seq), ops)]).items[1:]:  # the event's items, unsplit
            if isinstance(item, Deliver):
                groups: dict[str, list[str]] = {}
                for c in item.cids:
                    groups.setdefault(gateway_of(c), []).append(c)
                for gw, members in groups.items():
                    wanted.setdefault(gw, [mark]).append(Deliver(tuple(members), item.event))
            elif isinstance(item, ToGateways):
                for gw in item.gateways:
                    if item.items:
                        wanted.setdefault(gw, [mark]).extend(item.items)
            else:
                wanted.setdefault(gateway_of(item.cid), [mark]).append(item)
        for gw, items in wanted.items():
            expected.setdefault(gw, []).extend(items)
    assert out == expected
    for gateway, data in fx.encoded():
        assert decode(data) == Batch(tuple(out[gateway]))
