"""A worker's Close as the gateway applies it (gateway.deliver): whether a departure is still owed.

A real `Gateway` object, never served: its links to the broker are connected to
`inproc://` endpoints nobody binds, so what it would send waits in its outbox,
where the test reads it. Pub-out batches are handed to it as its SUB pump would.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable

import trio
import zmq

from gateway.server import Gateway, GatewayConfig
from gateway.session import Session
from protocol import codec
from protocol.messages import (
    GATEWAY_LOST_REASON,
    Batch,
    BatchItem,
    ChatEvent,
    Close,
    Deliver,
    Disconnected,
    EventType,
    Lines,
    Mark,
    topic_of,
)

BYE = ChatEvent(EventType.INFO, "bye")
_endpoints = itertools.count(1)


def in_gateway(ctx: zmq.Context[zmq.Socket[bytes]], test: Callable[[Gateway], None]) -> None:
    """Run `test` with a gateway (inside a Trio loop, as its methods expect)."""
    n = next(_endpoints)
    config = GatewayConfig(frontend=f"inproc://deliver-front-{n}", pub_out=f"inproc://deliver-pub-{n}")

    async def main() -> None:
        gateway = Gateway(config, ctx)
        gateway.acceptors = []  # not serving: no listeners to open or close
        try:
            test(gateway)
        finally:
            gateway.close()

    trio.run(main)


class Feed:
    """Pub-out messages for one gateway, numbered as the broker numbers them."""

    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway
        self.seq = 0

    def batch(self, *items: BatchItem) -> None:
        self.seq += 1
        numbering = (0).to_bytes(8, "big") + self.seq.to_bytes(8, "big")
        self.gateway._on_batch([topic_of(self.gateway.instance), numbering, codec.encode(Batch(items))])


def sent(gateway: Gateway) -> list[object]:
    """The events the gateway put out for the broker since the last look (its outbox, emptied)."""
    pump = gateway.to_broker
    out = [codec.decode(frames[1]) for frames in pump._outbox]
    pump.clear()
    return out


def quitting(gateway: Gateway, feed: Feed) -> Session:
    """A connection whose Connected was answered and whose /quit is in flight; its client is gone
    already (reset), so the gateway owes the chat its departure unless a worker says otherwise."""
    cid = f"{gateway.instance}:1"
    session = Session(cid, "127.0.0.1:1", trio.current_time())
    gateway.sessions[cid] = session
    feed.batch(Mark(cid, 0), Deliver((cid,), ChatEvent(EventType.INFO, "welcome")))
    session.add_lines(["/quit"])
    gateway._advance(session)
    session.leave("connection reset")  # the client went before the answer came (it is not in `clients`)
    assert sent(gateway) == [Lines(cid, 1, ("/quit",))]
    return session


def test_a_departed_close_finishes_the_session_without_a_disconnected(ctx) -> None:  # type: ignore[no-untyped-def]
    def test(gateway: Gateway) -> None:
        feed = Feed(gateway)
        session = quitting(gateway, feed)
        feed.batch(Mark(session.cid, 1), Deliver((session.cid,), BYE), Close(session.cid, "quit", departed=True))
        assert sent(gateway) == []  # the worker's departure was the last word
        assert session.finished
        assert session.cid not in gateway.sessions

    in_gateway(ctx, test)


def test_a_close_that_did_not_depart_still_leads_to_a_disconnected(ctx) -> None:  # type: ignore[no-untyped-def]
    """A Close that does not say the chat forgot the connection (an outside publisher's, or a
    /quit whose departure freed nothing) leaves the departure to the gateway, as ever."""
    def test(gateway: Gateway) -> None:
        feed = Feed(gateway)
        session = quitting(gateway, feed)
        feed.batch(Mark(session.cid, 1), Deliver((session.cid,), BYE), Close(session.cid, "quit"))
        assert sent(gateway) == [Disconnected(session.cid, 2, "connection reset")]
        assert not session.finished
        feed.batch(Mark(session.cid, 2))
        assert session.finished
        assert session.cid not in gateway.sessions

    in_gateway(ctx, test)


def test_a_replayed_departed_close_changes_nothing(ctx) -> None:  # type: ignore[no-untyped-def]
    """The same answer again (a replay after a broker failover): dropped whole, by its Mark."""
    def test(gateway: Gateway) -> None:
        feed = Feed(gateway)
        session = quitting(gateway, feed)
        answer = (Mark(session.cid, 1), Deliver((session.cid,), BYE), Close(session.cid, "quit", departed=True))
        feed.batch(*answer)
        feed.batch(*answer)
        assert sent(gateway) == []
        assert session.cid not in gateway.sessions

    in_gateway(ctx, test)


def test_a_departed_close_drops_lines_that_came_after_the_quit(ctx) -> None:  # type: ignore[no-untyped-def]
    def test(gateway: Gateway) -> None:
        feed = Feed(gateway)
        session = quitting(gateway, feed)
        session.add_lines(["typed after /quit"])
        feed.batch(Mark(session.cid, 1), Close(session.cid, "quit", departed=True))
        assert sent(gateway) == []
        assert session.pending == []

    in_gateway(ctx, test)


def test_a_gateway_lost_close_for_a_connection_gone_already_fences(ctx) -> None:  # type: ignore[no-untyped-def]
    def test(gateway: Gateway) -> None:
        feed = Feed(gateway)
        session = quitting(gateway, feed)
        feed.batch(Mark(session.cid, 1), Close(session.cid, GATEWAY_LOST_REASON, departed=True))
        assert gateway._fenced is not None
        assert sent(gateway) == []

    in_gateway(ctx, test)


def test_seen_events_keep_the_gateways_own_copy_of_a_connection_id(ctx) -> None:  # type: ignore[no-untyped-def]
    """Every Mark decodes a new copy of the ID; for our own connections `seen` keeps the one
    `clients` and the session hold already (an idle connection's memory)."""
    def test(gateway: Gateway) -> None:
        feed = Feed(gateway)
        session = quitting(gateway, feed)
        kept = [cid for cid in gateway.seen._last if cid == session.cid]
        assert len(kept) == 1 and kept[0] is session.cid

    in_gateway(ctx, test)
