"""Pub-out batches to our clients: a part of `gateway.server.Gateway` (a mixin).

    SUB pump --> _on_batch --> runs (protocol.fanout) ... end of the pass --> _settle --> _deliver (render, push)
             ... end of the burst --> _flush

A pub-out message is three frames: our topic, the broker's numbering (its
epoch and a sequence number, 8 bytes each, big-endian: gateway.link checks
it) and a msgpack `Batch`. Its items apply in order: a `Mark` names the
client event the items after it answer (a replay is dropped up to the next
`Mark`); a room event updates the room table (protocol.rooms), which says
who is shown what; `Deliver`, `SetMode` and `Close` act on our connections.
The sessions answered advance after the whole batch.

Deliveries to the same audience (a room's members: the room table hands
out one tuple while nobody joins or leaves) are grouped into runs
(protocol.fanout), across the batches of one pass of the SUB pump: it hands
them over back to back, no other task runs between them, and it calls
`_settle` at the end of the pass (`_flush` settles first too). Anything
that acts on a client otherwise (a mode change, a close, what a session's
answer releases) settles the open runs before it. So the work per client is
per run, not per message nor per batch:
each event is rendered once per view that can share it (text, JSON,
WebSocket; IRC: a room message once per set of capabilities that change its
line, the rest per connection), the run's lines are joined once per view,
and each client gets one push of them (its own messages left out in text
mode). A push only queues: after a burst of pub-out messages,
one send per client that got something. A client whose output queue is
full is cut (it is not reading); a run counts as the lines it holds.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import trio

from gateway.metrics import Drop, GatewayMetrics
from protocol import codec
from protocol.doors import Door, IrcDoor, View
from protocol.errors import DecodeError
from protocol.fanout import Runs
from protocol.hops import Hop, is_sampled
from protocol.irc_render import SharedKey, render_shared, shared_key
from protocol.messages import (
    GATEWAY_LOST_REASON,
    Batch,
    ChatEvent,
    Close,
    Deliver,
    Mark,
    RoomEvent,
    SetMode,
    topic_of,
)
from protocol.render import is_own_echo, render_json, render_text
from protocol.rooms import RoomTable
from protocol.websocket import render_event

if TYPE_CHECKING:
    from gateway.client import Client
    from gateway.session import SeenEvents, Session

log = logging.getLogger("chat.gateway")

QUEUE_FULL = "output queue full: you are not reading"  # why a client is cut whose output queue is full


class Delivery:
    """The pub-out side of `Gateway`: apply each batch, render, push, flush."""

    instance: str
    clients: dict[str, Client]
    sessions: dict[str, Session]
    seen: SeenEvents
    rooms: RoomTable
    metrics: GatewayMetrics
    _dirty: dict[str, Client]
    _runs: Runs  # open across the batches of one pass of the SUB pump (`_settle` ends them)
    _flush_clock: float | None = None  # when the first batch answering a sampled event came, until the flush

    if TYPE_CHECKING:  # the rest of the gateway (gateway.server, gateway.link)
        def _check_sequence(self, frame: bytes) -> bool: ...
        def _fence(self, why: str) -> None: ...
        def _count(self, cause: Drop, detail: str) -> None: ...
        def _advance(self, session: Session) -> None: ...

    def _on_batch(self, frames: list[bytes]) -> None:
        if len(frames) != 3 or len(frames[1]) != 16:
            self._count(Drop.WRONG_FRAME_COUNT, f"pub-out: {len(frames)} frame(s)")
            return
        if frames[0] != topic_of(self.instance):  # queued for the instance we were before a fence
            self.metrics.drop(Drop.EARLIER_INSTANCE)
            return
        if not self._check_sequence(frames[1]):
            return
        try:
            batch = codec.decode(frames[2])
        except DecodeError as exc:
            self._count(Drop.MALFORMED, f"pub-out: {exc}")
            return
        if not isinstance(batch, Batch):
            self._count(Drop.UNEXPECTED_MESSAGE, f"pub-out: {type(batch).__name__}, not a batch")
            return
        skipping = False
        answered: list[Session] = []
        now = trio.current_time()
        rooms, items, runs = self.rooms, batch.items, self._runs
        add = runs.add
        last: tuple[str, ...] = ()  # the audience of the delivery before
        for index, item in enumerate(items):
            if isinstance(item, Mark):
                skipping = not self._on_mark(item, answered, now)
            elif skipping:
                continue
            elif isinstance(item, RoomEvent):
                for cids, event in rooms.apply(item, now, items, index):
                    add(cids, event)
            elif isinstance(item, Deliver):
                cids = item.cids
                if cids == last:  # the replies of an event, one after the other: one run (each decoded apart)
                    cids = last
                add(cids, item.event)
                last = cids
            elif isinstance(item, SetMode):
                runs.settle()  # what came before the change is shown the way it was asked for then
                if (client := self.clients.get(item.cid)) is not None:  # else a connection that is gone
                    client.door.set_json(item.json)
            else:
                runs.settle()
                self._on_close(item)
        for session in answered:  # after the whole batch: a Close in it stops what was pending
            if released := rooms.release(session.cid):  # held while a re-join may have been coming
                for cids, event in released:
                    runs.add(cids, event)
                runs.settle()
            self._advance(session)

    def _settle(self) -> None:
        """The SUB pump's pass over what came ends (before any other task runs): hand on the open runs."""
        self._runs.settle()

    def _on_mark(self, mark: Mark, answered: list[Session], now: float) -> bool:
        """-> False if this event was shown already (a replay)."""
        session = self.sessions.get(mark.cid)
        # our own connection: `seen` keeps the gateway's copy of its ID (the one `clients` and the
        # session hold), not one more decoded from each Mark
        if not self.seen.first_time(mark.cid if session is None else session.cid, mark.seq):
            self.metrics.drop(Drop.REPLAY_DROPPED)
            return False
        if session is not None and (in_flight := session.in_flight) is not None and session.answered(mark.seq):
            self.metrics.latency.observe(now - in_flight.first_sent)
            if is_sampled(in_flight.frames[0]):
                self._sampled_answer(now - in_flight.first_sent, now)
            answered.append(session)
        return True

    def _sampled_answer(self, round_trip: float, received: float) -> None:
        """A sampled event's answer came (protocol.hops): its round trip; its batch's flush starts."""
        self.metrics.hops.observe(Hop.ROUND_TRIP, round_trip)
        if self._flush_clock is None:
            self._flush_clock = received

    def _on_close(self, close: Close) -> None:
        """A worker closes the connection (/quit, a refused connect): lines it sent after that
        are dropped. `departed`: the chat forgot it already, so its session is over here too
        (no `Disconnected` to send), also if the client went first."""
        if close.reason == GATEWAY_LOST_REASON:  # a worker found us declared lost
            self._fence(f"a worker closed {close.cid} as {close.reason!r}")
        if (session := self.sessions.get(close.cid)) is not None:
            if close.departed:
                session.abandon()
            else:
                session.pending.clear()
        if (client := self.clients.get(close.cid)) is not None:
            client.close_after(b"", close.reason)

    def _deliver(self, cids: tuple[str, ...], events: list[ChatEvent]) -> None:
        """A run of events for the same clients (protocol.fanout): rendered once per view that
        shares renderings (IRC renders per connection), one push per client."""
        shown = _Shown(events)
        text: bytes | None = None
        senders: dict[str, set[int]] = {}
        count = len(events)
        clients, dirty, text_view = self.clients, self._dirty, View.TEXT  # locals: the hot loop
        pushed = 0
        for cid in cids:
            client = clients.get(cid)
            if client is None:
                self.metrics.drop(Drop.DELIVERY_TO_CLOSED, count)
                continue
            if client.door.view is text_view:
                if text is None:
                    text, senders = shown.text_for_all(), shown.senders
                if cid not in senders:  # the usual case: the whole run, the same bytes as every such client
                    if client.push(text, count):
                        pushed += count
                        dirty[cid] = client
                    else:
                        self._kick(client, QUEUE_FULL)
                    continue
                data, lines = shown.text_for(cid)
            else:
                data, lines = shown.for_view(client.door, cid)
            if not lines:
                continue
            if client.push(data, lines):
                pushed += lines
                dirty[cid] = client
            else:
                self._kick(client, QUEUE_FULL)
        self.metrics.deliveries += pushed

    def _flush(self) -> None:
        """After a burst of replies: one send per client that got something."""
        self._runs.settle()
        for client in self._dirty.values():
            client.flush()
        self._dirty.clear()
        if self._flush_clock is not None:
            self.metrics.hops.observe(Hop.FLUSH, trio.current_time() - self._flush_clock)
            self._flush_clock = None

    def _kick(self, client: Client, reason: str) -> None:
        log.info("closing %s: %s", client.cid, reason)
        self._dirty.pop(client.cid, None)
        self.metrics.drop(Drop.SLOW_CONSUMER_CUT)
        client.close_after(client.door.end(f"{reason}; disconnecting"), reason)


class _Shown:
    """A run's events rendered per view, each at most once, joined: what a client of that view gets."""

    __slots__ = ("_events", "_irc_lines", "_json", "_texts", "_web", "senders")

    def __init__(self, events: list[ChatEvent]) -> None:
        self._events = events
        self._texts: list[bytes] = []
        self.senders: dict[str, set[int]] = {}  # text mode: a sender -> its own messages in the run, not shown it
        self._json: tuple[bytes, int] | None = None
        self._web: tuple[bytes, int] | None = None
        self._irc_lines: dict[SharedKey, list[bytes | None]] = {}  # IRC: each event's line per shared_key

    def text_for_all(self) -> bytes:
        """Text mode, for a client that sent none of the run's messages."""
        events = self._events
        self._texts = [render_text(event) for event in events]
        for at, event in enumerate(events):
            if is_own_echo(event, event.origin):
                self.senders.setdefault(event.origin, set()).add(at)
        return b"".join(self._texts)

    def text_for(self, sender: str) -> tuple[bytes, int]:
        """Text mode, for a client that sent some of them (it is not shown its own)."""
        own = self.senders[sender]
        return b"".join([text for at, text in enumerate(self._texts) if at not in own]), len(self._texts) - len(own)

    def for_view(self, door: Door, cid: str) -> tuple[bytes, int]:
        """Any other view: JSON and WebSocket share their renderings, IRC a room message's line."""
        view = door.view
        if view is View.JSON:
            if self._json is None:
                self._json = b"".join([render_json(event) for event in self._events]), len(self._events)
            return self._json
        if view is View.WEB:
            if self._web is None:
                self._web = b"".join([render_event(event) for event in self._events]), len(self._events)
            return self._web
        if isinstance(door, IrcDoor):
            return self._irc(door, cid)
        rendered = [data for event in self._events if (data := door.render(event, cid))]
        return b"".join(rendered), len(rendered)

    def _irc(self, door: IrcDoor, cid: str) -> tuple[bytes, int]:
        """IRC: a room message once per `shared_key` (the connection's own, and every other
        event, rendered for the connection itself), in order."""
        conn = door.conn
        key = shared_key(conn)
        shared = self._irc_lines.get(key)
        if shared is None:
            shared = self._irc_lines[key] = [render_shared(conn, event) for event in self._events]
        rendered = [data for event, line in zip(self._events, shared, strict=True)
                    if (data := line if line is not None and event.origin != cid else door.render(event, cid))]
        return b"".join(rendered), len(rendered)
