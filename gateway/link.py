"""The gateway's link to the broker: a part of `gateway.server.Gateway` (a mixin).

    session events --> DEALER pump (one per broker, one identity) --> broker frontend
                       [key, event, key, event, ...]: the events waiting together, up to
                       MAX_EVENTS (stack.frames) in one message; [Heartbeat] always alone
    Heartbeat <-> every broker's frontend; Fenced <-- the active broker
    pub-out --> SUB pump --> `_on_batch` (gateway.deliver), `_settle` after each pass, `_flush` after each burst

Every `heartbeat` seconds `_tick` beats every broker, sends again what the
active one left unanswered for `resend_after`, copies the gauges for a scrape
and sweeps the room table. The broker is down after `liveness` beats of
silence from the active one: the gateway then refuses clients.

Fenced: when the broker declared this instance lost (it says `Fenced`), or
pub-out skipped some of our messages (a gap in its numbering), or a worker
closes one of our connections as "gateway lost", our clients can no longer
be promised anything: each is told to reconnect and closed, and the gateway
takes a new instance name (DEALER identity, pub-out topic, connection IDs)
and serves again. `serving` is False while the broker is silent or while we
re-join: the accept loop refuses clients then, so a balancer sees us down.
After a silence, hearing the broker is not enough: its heartbeats may have
waited in the link while it was cut (the broker may have declared us lost
since). Our heartbeats are numbered, and the broker's say the last of ours it
heard: we serve again once it heard one we sent after the silence began.

A broker pair: `frontend` and `pub_out` list both brokers (comma-separated,
in the same order). The gateway keeps one DEALER per broker (one identity),
heartbeats each, and sends events only to the active one (gateway.brokers);
when another broker becomes active, every unanswered event goes to it again
(as after a broker restart). One SUB takes every broker's pub-out; each
message's numbering is the broker's epoch and a sequence number within it: a
message under an older epoch than one already taken comes from a deposed
broker and is dropped, which may lose something, so it fences us as a gap does.
"""

from __future__ import annotations

import logging
import os
import secrets
import socket
from functools import partial
from typing import TYPE_CHECKING

import trio
import zmq

from gateway.brokers import BrokerChoice
from gateway.metrics import Drop, GatewayMetrics, Gauges
from gateway.zmq_pump import ZmqPump
from protocol import codec
from protocol.errors import DecodeError
from protocol.hops import MAX_TRACKED, Hop, Sampler
from protocol.messages import GATEWAY_GONE, Fenced, Heartbeat, topic_of
from protocol.rooms import RoomTable
from stack.frames import MAX_EVENTS, MAX_JOINED_BYTES
from stack.process import set_log_instance

if TYPE_CHECKING:
    from gateway.client import Client
    from gateway.idle import IdleWatcher
    from gateway.server import GatewayConfig
    from gateway.session import Session

log = logging.getLogger("chat.gateway")

MAX_MESSAGE = 64 << 20  # largest frame taken from the broker (ZMQ_MAXMSGSIZE)


def instance_name(name: str) -> str:
    """A name unique to this run: the given --id (or gw-host-pid) plus a random tag."""
    base = name or f"gw-{socket.gethostname()}-{os.getpid()}"
    return f"{base}.{secrets.token_hex(3)}"


class BrokerLink:
    """The broker side of `Gateway`: sockets, heartbeats, broker choice, fencing, resends."""

    config: GatewayConfig
    instance: str
    metrics: GatewayMetrics
    clients: dict[str, Client]
    sessions: dict[str, Session]
    rooms: RoomTable
    _rooms_missed: int
    idle: IdleWatcher | None

    if TYPE_CHECKING:  # the rest of the gateway (gateway.server, gateway.deliver)
        @property
        def serving(self) -> bool: ...
        def _sync_accepting(self) -> None: ...
        def _is_member(self, cid: str) -> bool: ...
        def _is_busy(self, cid: str) -> bool: ...
        def _on_batch(self, frames: list[bytes]) -> None: ...
        def _settle(self) -> None: ...
        def _flush(self) -> None: ...

    def _open_link(self, ctx: zmq.Context[zmq.Socket[bytes]]) -> None:
        """The link's state, and its sockets connected under our instance name."""
        config = self.config
        self.broker_id: tuple[int, str, int] | None = None  # the active broker: (index, name, epoch)
        self.pub_epoch = 0  # the broker epoch of the last pub-out message we got
        self.pub_seq = 0  # the broker's number of the last pub-out message we got (within its epoch)
        self.broker_heard = trio.current_time()
        self._silence_logged = False  # "the broker is silent" said once per silence
        self._fenced: str | None = None  # why we were fenced, until we re-instance
        self._rejoining = False  # re-instanced, not yet heard by the broker under the new name
        self._beats_sent = 0  # our heartbeats so far: each says its number
        # after a silence: the first of our heartbeats sent during it, which the broker must say it heard
        # before we serve again (None: not waiting; Heartbeat.beat)
        self._unconfirmed_from: int | None = None
        self._fence_event = trio.Event()
        self.frontends = [endpoint.strip() for endpoint in config.frontend.split(",")]
        self.choice = BrokerChoice(len(self.frontends), config.heartbeat * config.liveness)
        self.active = 0  # the index of the broker that events go to
        self.dealers = [ctx.socket(zmq.DEALER) for _ in self.frontends]
        for dealer in self.dealers:
            dealer.setsockopt_string(zmq.IDENTITY, self.instance)
        self.sub = ctx.socket(zmq.SUB)
        self.sub.setsockopt(zmq.SUBSCRIBE, topic_of(self.instance))
        for sock in (*self.dealers, self.sub):
            sock.setsockopt(zmq.LINGER, 0)
            sock.setsockopt(zmq.RCVHWM, 100_000)
            sock.setsockopt(zmq.SNDHWM, 100_000)
            sock.setsockopt(zmq.MAXMSGSIZE, MAX_MESSAGE)
            if config.curve:
                config.curve.apply(sock)
        for dealer, endpoint in zip(self.dealers, self.frontends, strict=True):
            dealer.connect(endpoint)
        for endpoint in config.pub_out.split(","):
            self.sub.connect(endpoint.strip())
        self.to_brokers = [ZmqPump(dealer, partial(self._on_broker, i), join_at_most=MAX_EVENTS,
                                   join_bytes=MAX_JOINED_BYTES) for i, dealer in enumerate(self.dealers)]
        self.from_broker = ZmqPump(self.sub, self._on_batch, after_burst=self._flush, after_messages=self._settle)
        self.sampler = Sampler(config.hop_sample)
        self._read_at: dict[str, float] = {}  # connection -> when the lines of its next sampled event came

    # --- per-hop times of a sample of events (protocol.hops) ------------------------

    def _sample_read(self, session: Session) -> None:
        """Lines read: the first of a session's next event may start a sampled event's clock."""
        if self.sampler.every and not session.pending and session.cid not in self._read_at and self.sampler.pick():
            if len(self._read_at) >= MAX_TRACKED:  # clocks of connections that left without a next event
                del self._read_at[next(iter(self._read_at))]
            self._read_at[session.cid] = trio.current_time()

    def _sample_sent(self, cid: str, frames: list[bytes]) -> None:
        """An event goes out: if sampled, flag its key (kept for its resends) and time its wait."""
        if not self._read_at or (read_at := self._read_at.pop(cid, None)) is None:
            return
        frames[0] = codec.sampled_key(frames[0])
        self.metrics.hops.observe(Hop.WAIT, trio.current_time() - read_at)

    @property
    def to_broker(self) -> ZmqPump:
        """The link to the active broker (or to the last one that was)."""
        return self.to_brokers[self.active]

    def close(self) -> None:
        for dealer in self.dealers:
            dealer.close()
        self.sub.close()

    @property
    def broker_down(self) -> bool:
        silent = trio.current_time() - self.broker_heard
        return silent > self.config.heartbeat * self.config.liveness

    async def _tick(self) -> None:
        """Heartbeat the broker; send again what it left unanswered too long."""
        while True:
            if self.broker_down and self._unconfirmed_from is None:
                self._unconfirmed_from = self._beats_sent + 1  # the beat below goes out during the silence
            self._sync_accepting()
            self._beat_brokers()
            now = trio.current_time()
            if self.broker_down and not self._silence_logged:
                self._silence_logged = True
                log.warning("the broker is silent for %.1f s: not accepting clients", now - self.broker_heard)
            self._snapshot(self._resend_overdue(now))
            self.rooms.sweep(now)
            await trio.sleep(self.config.heartbeat)

    def _resend_overdue(self, now: float) -> int:
        """Send again every event unanswered for `resend_after` -> the events in flight. Once a
        heartbeat over every session, idle ones too: what it does for an idle one is kept small."""
        in_flight, resend_after = 0, self.config.resend_after
        for session in self.sessions.values():
            if session.in_flight is None:
                continue
            in_flight += 1
            if (frames := session.overdue(now, resend_after)) is not None:
                self.metrics.resent += 1
                self.to_broker.put_nowait(frames)
        return in_flight

    def _snapshot(self, in_flight: int) -> None:
        """Copy what a scrape shows of the loop's tables (at most one heartbeat old)."""
        metrics = self.metrics
        parked = len(self.idle) if self.idle is not None else 0
        metrics.gauges = Gauges(len(self.clients), in_flight, not self.broker_down, self.serving, parked)
        metrics.drops[Drop.OUTBOX_FULL] = self.to_broker.dropped
        metrics.drops[Drop.ROOM_CATCH_UP_MISSED] = self._rooms_missed + self.rooms.missed

    def _beat_brokers(self) -> None:
        self._beats_sent += 1
        beat = codec.encode(Heartbeat(self.instance, beat=self._beats_sent))
        for pump in self.to_brokers:
            pump.put_nowait([beat])

    def _on_broker(self, index: int, frames: list[bytes]) -> None:
        try:
            msg = codec.decode(frames[-1])
        except DecodeError as exc:
            self._count(Drop.MALFORMED, f"frontend: {exc}")
            return
        if isinstance(msg, Fenced):
            if index == self.active:  # a standby frees nobody: only the active one's word counts
                self._fence(f"the broker {msg.broker} declared {self.instance} lost")
            return
        if not isinstance(msg, Heartbeat):
            self._count(Drop.UNEXPECTED_MESSAGE, f"frontend: unexpected {type(msg).__name__}")
            return
        self._on_heartbeat(index, msg)

    def _on_heartbeat(self, index: int, msg: Heartbeat) -> None:
        now = trio.current_time()
        self.choice.heard(index, msg, now)
        if self.choice.active(now) != index:  # a standby, or a deposed broker: a sign of life only
            return
        if self._silence_logged:
            self._silence_logged = False
            log.warning("the broker is heard again after %.1f s", now - self.broker_heard)
        self.broker_heard = now
        if self._unconfirmed_from is not None and (msg.beat is None or msg.beat >= self._unconfirmed_from):
            self._unconfirmed_from = None  # it hears us now (a broker that does not number: as before)
        if self._rejoining and self._fenced is None:
            self._rejoining = False
            log.warning("re-joined as %s", self.instance)
        self._sync_accepting()
        broker = self.choice.identity(index)
        if broker != self.broker_id:
            self.active = index
            if self.broker_id is not None:
                log.warning("the broker %s (epoch %d) is active: sending unanswered events again",
                            msg.sender, msg.epoch)
                self._resend_all()
            self.broker_id = broker

    def _resend_all(self) -> None:
        now = trio.current_time()
        for session in self.sessions.values():
            frames = session.resend(now)
            if frames is not None:
                self.metrics.resent += 1
                self.to_broker.put_nowait(frames)

    def _check_sequence(self, frame: bytes) -> bool:
        """Count and log a gap in the broker's numbering, or a deposed broker's message
        (dropped: -> False): a loss must be loud."""
        epoch, seq = int.from_bytes(frame[:8], "big"), int.from_bytes(frame[8:], "big")
        if epoch < self.pub_epoch:
            self._count(Drop.STALE_BROKER, f"pub-out: epoch {epoch} after epoch {self.pub_epoch}")
            self._fence(f"a deposed broker (epoch {epoch}) published after epoch {self.pub_epoch}")
            return False
        if epoch > self.pub_epoch:  # a new active broker: its numbering starts afresh
            self.pub_epoch, self.pub_seq = epoch, 0
        if self.pub_seq and seq > self.pub_seq + 1 and seq != 1:
            missed = seq - self.pub_seq - 1
            self.metrics.drop(Drop.SEQUENCE_GAP, missed)
            log.error("missed %d message(s) from the broker (seq %d after %d)", missed, seq, self.pub_seq)
            self._fence(f"missed {missed} message(s) from the broker")
        self.pub_seq = seq
        return True

    # --- fencing -------------------------------------------------------------------

    def _fence(self, why: str) -> None:
        """We were declared lost: re-instance (once, in `_rejoin_when_fenced`)."""
        if self._fenced is not None or self._rejoining:
            log.debug("fenced again while re-joining: %s", why)
            return
        log.warning("fenced: %s", why)
        self._fenced = why
        self._sync_accepting()
        self._fence_event.set()

    async def _rejoin_when_fenced(self) -> None:
        while True:
            await self._fence_event.wait()
            self._fence_event = trio.Event()
            self._reinstance()

    def _reinstance(self) -> None:
        """Tell and close every client; take a new name, identity and topic; serve again."""
        old, self.instance = self.instance, instance_name(self.config.name)
        log.warning("closing %d client(s); %s re-joins as %s", len(self.clients), old, self.instance)
        self.metrics.fences += 1
        set_log_instance(self.instance)
        for session in self.sessions.values():  # first: a parked client may end at once, its session with it
            session.abandon()
        for client in list(self.clients.values()):
            client.close_after(client.door.end(GATEWAY_GONE), "gateway fenced")
        self._rooms_missed += self.rooms.missed
        self.rooms = RoomTable(self._is_member, self._is_busy)  # none of the old instance's connections stays
        for pump, dealer, endpoint in zip(self.to_brokers, self.dealers, self.frontends, strict=True):
            pump.clear()
            dealer.disconnect(endpoint)
            dealer.setsockopt_string(zmq.IDENTITY, self.instance)
            dealer.connect(endpoint)
        self.sub.setsockopt(zmq.UNSUBSCRIBE, topic_of(old))
        self.sub.setsockopt(zmq.SUBSCRIBE, topic_of(self.instance))
        self.pub_seq = 0
        self._rejoining = True
        self._fenced = None
        self._beat_brokers()

    def _count(self, cause: Drop, detail: str) -> None:
        """Count a dropped message by its fixed cause; the log keeps the detail."""
        log.warning("dropped (%s): %s (%d so far)", cause.value, detail, self.metrics.drop(cause))
