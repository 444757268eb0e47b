"""codec.encode_batches: the same bytes as encoding each gateway's Batch alone, items shared or not."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from protocol.codec import decode, encode, encode_batches
from protocol.messages import Batch, BatchItem, ChatEvent, Deliver, EventType, Mark, RoomEvent
from tests.protocol.test_codec import FAST, batch_items

Items = list[BatchItem]


@FAST
@given(st.lists(st.lists(batch_items, max_size=5), max_size=4), st.data())
def test_property_each_gateway_gets_what_encoding_its_batch_alone_makes(lists: list[Items], data: st.DataObject) -> None:
    shared = [item for items in lists for item in items]
    batches = [(f"gw{n}", items + (data.draw(st.lists(st.sampled_from(shared), max_size=3)) if shared else []))
               for n, items in enumerate(lists)]  # some items in several batches, as a room event is
    assert encode_batches(batches) == tuple((gw, encode(Batch(tuple(items)))) for gw, items in batches)


def test_a_room_event_and_an_event_of_split_deliveries_are_the_same_in_every_batch() -> None:
    event = ChatEvent(EventType.PRIVATE, "hi", sender="ann", to="bob", id="gwA:1/3", ts=5.0, origin="gwA:1")
    room = RoomEvent("#r", 7, ChatEvent(EventType.MESSAGE, "all", room="#r", sender="ann", ts=5.0))
    batches = [("gwA", [Mark("gwA:1", 3), Deliver(("gwA:1",), event), room]), ("gwB", [Deliver(("gwB:2",), event), room])]
    out = encode_batches(batches)
    assert [gw for gw, _ in out] == ["gwA", "gwB"]
    assert [decode(frame) for _, frame in out] == [Batch(tuple(items)) for _, items in batches]
    assert encode_batches([]) == ()
