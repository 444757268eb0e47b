"""Runs of like lines (workers.runs), against a real Valkey: one store call for a run, and the same
effects, bytes and Redis state as the lines planned one by one; a run's reply that is not what the
script returns costs its event only."""

from __future__ import annotations

from typing import Any

import hypothesis
import pytest
import redis
from hypothesis import given
from hypothesis import strategies as st

from protocol.messages import EventType, Lines, Mark
from protocol.replies import ReplyCode as R
from tests.workers.conftest import GatewaysChat, new_prefix
from tests.workers.test_logic import GW_A, GW_B, PROPS, connected, events_to, lines_to, snapshot
from workers import logic, scripts
from workers.effects import Effects
from workers.logic import INTERNAL_ERROR, UNAVAILABLE, Chat
from workers.runs import EventPlan
from workers.steps import At
from workers.store import BATCH_MAX, Call, Store

MSG = EventType.MESSAGE


class Counting(Store):
    """A store that remembers how many calls each `run` was handed."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.handed: list[int] = []

    def run(self, calls: list[Call]) -> list[Any]:
        self.handed.append(len(calls))
        return super().run(calls)


class Alone(EventPlan):
    """An event's lines each its own step, as they were before runs (their calls joined by the store)."""

    def say(self, seq: int, text: str, room: str | None = None, kind: EventType = MSG) -> None:
        self.add(self.plans.to_room(At(self.cid, self.event, seq, self.stamp.now), room, text, kind))

    def joins(self, seq: int, cmd: Any) -> bool:
        return False


def test_an_event_of_plain_lines_hands_the_store_one_call(client: redis.Redis, prefix: str) -> None:
    store = Counting(client, prefix=prefix)
    chat = Chat(store)
    a = connected(chat, f"{GW_A}:1", "alice", "#r")
    b = connected(chat, f"{GW_B}:1", "bob", "#r")
    store.handed.clear()
    a.send(*[f"line {n}" for n in range(16)])
    b.send(*[f"/msg alice {n}" for n in range(16)])
    a.send(*[f"x{n}" for n in range(BATCH_MAX + 1)])  # a run is bounded as a batch is
    assert store.handed == [1, 1, 2]


def test_a_run_of_mixed_room_lines_is_one_call_and_a_command_ends_it(client: redis.Redis, prefix: str) -> None:
    store = Counting(client, prefix=prefix)
    chat = GatewaysChat(store)
    a = connected(chat, f"{GW_A}:1", "alice", "#r")
    connected(chat, f"{GW_B}:1", "bob", "#r")
    store.handed.clear()
    fx = a.send("one", "/me two", "/msg #r three", "", "/msg bob four", "/msg bob five", "/who", "six")
    assert store.handed == [4]  # the room run, the private run, /who, the room run after it
    assert [(e.type, e.text) for e in events_to(fx, f"{GW_B}:1")] == [
        (MSG, "one"), (EventType.ACTION, "two"), (MSG, "three"), (EventType.PRIVATE, "four"),
        (EventType.PRIVATE, "five"), (MSG, "six")]


LINE_SHAPES = [
    "hello", "  padded  ", "", "   ", "//slash", "/me waves", "/me", "/msg #r to r", "/msg #t nowhere",
    "/msg #s to s", "/msg bob hi", "/msg nobody hi", "/msg BOB caps", "/msg alice self", "/action #r acts",
    "/nick ann", "/who", "/part #s", "/join #s", "bidi \u202eevil", "tab\there", "x" * 5000, "/bogus",
    "\u00e9t\u00e9 " * 300,  # longer than a quarter of the line limit in characters, not in bytes
]


def _scene(client: redis.Redis, prefix: str) -> tuple[Chat, str, int]:
    chat = Chat(Store(client, prefix=prefix))
    a = connected(chat, f"{GW_A}:1", "alice", "#r", "#s")
    connected(chat, f"{GW_B}:1", "bob", "#r", "#s")
    connected(chat, f"{GW_A}:2", "carol", "#r")
    return chat, a.cid, a.seq


def _handled(chat: Chat, cid: str, seq: int, lines: list[str], now: float) -> Effects:
    fx = Effects()
    fx.mark(cid, seq)
    fx.items += chat.handle(Lines(cid, seq, tuple(lines)), now).items
    return fx


@PROPS
@given(lines=st.lists(st.sampled_from(LINE_SHAPES), max_size=12), now=st.sampled_from([5, 5.5, 1.7e9 + 0.123456]))
def test_runs_answer_as_the_lines_one_by_one(client: redis.Redis, lines: list[str], now: float) -> None:
    twin, prefix = new_prefix(), new_prefix()
    chat, cid, seq = _scene(client, prefix)
    fx = _handled(chat, cid, seq, lines, now)
    alone_chat, alone_cid, alone_seq = _scene(client, twin)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(logic, "EventPlan", Alone)
        alone = _handled(alone_chat, alone_cid, alone_seq, lines, now)
    hypothesis.event(f"{sum(1 for i in fx.items if type(i).__name__ == 'ToGateways')} room groups")
    assert fx.by_gateway() == alone.by_gateway()
    assert fx.encoded() == alone.encoded()  # the bytes on the wire too (a ts is a float, whatever `now` was)
    assert snapshot(client, prefix, stream_ids=False) == snapshot(client, twin, stream_ids=False)


class Garbling(Store):
    """A store whose replies to `script` calls of `cid` are made by `garble` from the true ones."""

    def __init__(self, client: redis.Redis, prefix: str, script: str, cid: str, garble: Any) -> None:
        super().__init__(client, prefix=prefix)
        self.script, self.cid, self.garble, self.armed = script, cid, garble, False

    def _execute(self, calls: list[Call]) -> list[Any]:
        replies = super()._execute(calls)
        return [self.garble(reply) if self.armed and call.script == self.script and call.args[0] == self.cid
                else reply for call, reply in zip(calls, replies, strict=True)]


def _dispatch_with_garbled(client: redis.Redis, prefix: str, script: str, lines: tuple[str, ...],
                           garble: Any) -> tuple[list[Effects], str, str]:
    store = Garbling(client, prefix, script, f"{GW_A}:1", garble)
    chat = GatewaysChat(store)
    a = connected(chat, f"{GW_A}:1", "alice", "#r")
    b = connected(chat, f"{GW_B}:1", "bob", "#r")
    store.armed = True
    out = chat.handle_batch([Lines(a.cid, a.seq, lines), Lines(b.cid, b.seq, ("from bob", "/msg alice hi"))], 5.0)
    return out, a.cid, b.cid


@pytest.mark.parametrize("script,lines", [(scripts.SAY, ("one", "two")), (scripts.PRIVATE, ("/msg bob one",
                                                                                             "/msg bob two"))],
                         ids=["room", "private"])
def test_a_run_reply_of_the_wrong_length_refuses_each_line_of_it(
        client: redis.Redis, prefix: str, script: str, lines: tuple[str, ...]) -> None:
    (mine, bobs), a, _ = _dispatch_with_garbled(client, prefix, script, lines, lambda reply: reply[:1])
    assert lines_to(mine, a) == [(EventType.ERROR, UNAVAILABLE)] * 2
    assert [e.text for e in events_to(bobs, a)] == ["from bob", "hi"]  # the other event of the dispatch: as ever


@pytest.mark.parametrize("script,lines", [(scripts.SAY, ("one", "two")), (scripts.PRIVATE, ("/msg bob one",
                                                                                             "/msg bob two"))],
                         ids=["room", "private"])
def test_an_ok_of_a_shape_the_run_does_not_know_costs_its_event_only(
        client: redis.Redis, prefix: str, script: str, lines: tuple[str, ...]) -> None:
    (mine, bobs), a, _ = _dispatch_with_garbled(client, prefix, script, lines,
                                                lambda reply: [["ok"] for _ in reply])
    assert [(i.event.type, i.event.text, i.event.code) for i in mine.items] == [  # type: ignore[union-attr]
        (EventType.ERROR, INTERNAL_ERROR, R.INTERNAL_ERROR)]
    assert [e.text for e in events_to(bobs, a)] == ["from bob", "hi"]
    assert not [i for i in bobs.items if type(i).__name__ == "Deliver" and i.event.type == EventType.ERROR]


def test_a_run_meets_a_mark_for_each_event() -> None:
    """Items of a room group go after their own event's Mark to every gateway, also when the event
    before went to the same gateway (the routes remember the last gateway only within an event)."""
    from protocol.messages import ChatEvent, RoomEvent
    one = RoomEvent("#r", 1, ChatEvent(MSG, "one", room="#r"))
    two = RoomEvent("#r", 2, ChatEvent(MSG, "two", room="#r"))
    fx = Effects()
    fx.mark(f"{GW_A}:1", 3)
    fx.rooms((GW_A, GW_B)).append(one)
    fx.mark(f"{GW_B}:1", 7)
    fx.rooms((GW_A,)).append(two)
    assert fx.by_gateway() == {
        GW_A: [Mark(f"{GW_A}:1", 3), one, Mark(f"{GW_B}:1", 7), two],
        GW_B: [Mark(f"{GW_A}:1", 3), one, Mark(f"{GW_B}:1", 7)],
    }
