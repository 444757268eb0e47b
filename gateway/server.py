"""The gateway: TCP clients on one side, the broker on the other.

    clients --TCP--> Client.serve (reads) --> Session --event--> DEALER pump --> broker frontend
    clients <--TCP-- Client.flush (writes) <-- on_batch <-- SUB pump <-- broker pub-out

Each connection gets an ID `<instance>:<n>`, where the instance name is
unique to this run of the process, so a restarted gateway never reuses an
ID. The gateway subscribes to its own topic only. It keeps the open
connections and their sessions with the broker (`gateway.session`), and
nothing else: the chat's state is the workers'.

Fenced: when the broker declared this instance lost (it says `Fenced`), or
pub-out skipped some of our messages (a gap in its numbering), or a worker
closes one of our connections as "gateway lost", our clients can no longer
be promised anything: each is told to reconnect and closed, and the gateway
takes a new instance name (DEALER identity, pub-out topic, connection IDs)
and serves again. `serving` is False while the broker is silent or while we
re-join: the accept loop refuses clients then, so a balancer sees us down.

A broker pair: `frontend` and `pub_out` list both brokers (comma-separated,
in the same order). The gateway keeps one DEALER per broker (one identity),
heartbeats each, and sends events only to the active one (gateway.brokers);
when another broker becomes active, every unanswered event goes to it again
(as after a broker restart). One SUB takes every broker's pub-out; each
message's numbering is the broker's epoch and a sequence number within it: a
message under an older epoch than one already taken comes from a deposed
broker and is dropped, which may lose something, so it fences us as a gap does.

Clients come on a plain listener, a TLS one (`gateway.tls`), an IRC one
and a WebSocket one (which also serves the web client's page); past the
handshake a TLS client is served like any other. Each connection has a door
(`protocol.doors`): what its bytes mean and how a delivery is shown. The
broker link, the connection table, admission, flood control and the write
path are the same for every door; a delivery is rendered once per view
that can share it (text, JSON, WebSocket), an IRC connection renders its
own. The PROXY protocol, when on, applies to every listener. Everything counted
goes to `GatewayMetrics` (gateway.metrics): plain ints on the hot path,
drops and refusals by a fixed cause, the detail in the log.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import os
import secrets
import socket
import ssl
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial

import trio
import zmq

from gateway import accept, tls
from gateway.brokers import BrokerChoice
from gateway.client import FLOODING_REASON, Client, ClientLimits
from gateway.metrics import Drop, GatewayMetrics, Gauges, Refusal
from gateway.session import SeenEvents, Session
from gateway.web import load_static
from gateway.zmq_pump import ZmqPump
from protocol import codec
from protocol.doors import Door, IrcDoor, LineDoor, View, WebDoor
from protocol.errors import DecodeError
from protocol.irc import IrcSettings
from protocol.messages import (
    GATEWAY_GONE,
    GATEWAY_LOST_REASON,
    Batch,
    ChatEvent,
    Close,
    Deliver,
    Fenced,
    Heartbeat,
    Mark,
    RoomEvent,
    SetMode,
    gateway_of,
    topic_of,
)
from protocol.proxy import Network
from protocol.render import is_own_echo, render_json, render_text
from protocol.rooms import RoomTable
from protocol.websocket import WebConfig, render_event
from stack.curve import ClientKeys
from stack.process import set_log_instance

log = logging.getLogger("chat.gateway")

UNAVAILABLE = "service temporarily unavailable"
MAX_MESSAGE = 64 << 20  # largest frame taken from the broker (ZMQ_MAXMSGSIZE)


@dataclass(frozen=True, slots=True)
class IrcDoorConfig:
    host: str
    port: int
    server_name: str


@dataclass(frozen=True, slots=True)
class WebDoorConfig:
    host: str
    port: int
    origins: frozenset[str] = frozenset()  # allowed besides the page's own host


@dataclass(frozen=True, slots=True)
class GatewayConfig:
    host: str = "0.0.0.0"
    port: int = 7000
    frontend: str = "tcp://127.0.0.1:5555"
    pub_out: str = "tcp://127.0.0.1:5558"
    name: str = ""
    heartbeat: float = 1.0
    liveness: int = 3
    resend_after: float = 5.0
    max_connections: int = 20_000  # 0: no limit
    max_per_address: int = 256  # 0: no limit
    proxy_protocol: bool = False  # behind HAProxy `send-proxy(-v2)`: the client's address comes first
    trusted_proxies: tuple[Network, ...] = ()  # with proxy_protocol: the only peers accepted
    reuse_port: bool = False  # SO_REUSEPORT: several gateway processes on one port
    plain: bool = True  # serve plain TCP on host:port (False: TLS only)
    tls: tls.TlsConfig | None = None  # serve TLS too (or only)
    half_close_wait: float = 10.0  # how long a half-closed client's last replies may take
    limits: ClientLimits = field(default_factory=ClientLimits)
    irc: IrcDoorConfig | None = None  # serve IRC clients too
    web: WebDoorConfig | None = None  # serve the web client and WebSocket too
    ready_timeout: float = 30.0  # seconds to register (IRC) or upgrade (WebSocket) before a cut
    curve: ClientKeys | None = None  # None: plain links


def instance_name(name: str) -> str:
    """A name unique to this run: the given --id (or gw-host-pid) plus a random tag."""
    base = name or f"gw-{socket.gethostname()}-{os.getpid()}"
    return f"{base}.{secrets.token_hex(3)}"


class Gateway:
    def __init__(self, config: GatewayConfig, ctx: zmq.Context[zmq.Socket[bytes]]) -> None:
        self.config = config
        self.instance = instance_name(config.name)
        self.clients: dict[str, Client] = {}
        self.sessions: dict[str, Session] = {}
        self.seen = SeenEvents()
        self.rooms = RoomTable(self._is_member, self._is_busy)  # our connections' rooms, from the room events
        self._rooms_missed = 0  # what the tables of earlier instances counted
        self.metrics = GatewayMetrics()
        self.per_address: Counter[str] = Counter()
        self.broker_id: tuple[int, str, int] | None = None  # the active broker: (index, name, epoch)
        self.pub_epoch = 0  # the broker epoch of the last pub-out message we got
        self.pub_seq = 0  # the broker's number of the last pub-out message we got (within its epoch)
        self.broker_heard = trio.current_time()
        self._silence_logged = False  # "the broker is silent" said once per silence
        self._fenced: str | None = None  # why we were fenced, until we re-instance
        self._rejoining = False  # re-instanced, not yet heard by the broker under the new name
        self._fence_event = trio.Event()
        self._numbers = itertools.count(1)
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
        self.to_brokers = [ZmqPump(dealer, partial(self._on_broker, i)) for i, dealer in enumerate(self.dealers)]
        self.from_broker = ZmqPump(self.sub, self._on_batch, after_burst=self._flush)
        self._dirty: dict[str, Client] = {}  # clients pushed to since the last flush
        self._peers: dict[str, str] = {}  # connection -> the client's address, for its session
        self._nursery: trio.Nursery

    def _is_member(self, cid: str) -> bool:
        """A room event's joiner or leaver that is ours to count (an open connection of ours)."""
        return cid in self.clients

    def _is_busy(self, cid: str) -> bool:
        """The connection has an event in flight (it may re-join a room it left)."""
        session = self.sessions.get(cid)
        return session is not None and session.in_flight is not None

    @property
    def to_broker(self) -> ZmqPump:
        """The link to the active broker (or to the last one that was)."""
        return self.to_brokers[self.active]

    def close(self) -> None:
        for dealer in self.dealers:
            dealer.close()
        self.sub.close()

    async def serve(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:  # type: ignore[no-untyped-def]
        """Serve until cancelled; started with {"plain" and/or "tls": (host, port)}."""
        self.max_connections = accept.connection_limit(self.config.max_connections)
        self._handling = 0  # accepted sockets open now: clients, and those still being let in
        self.acceptors: list[accept.Acceptor] = []
        try:
            bound = self._open_listeners()
            async with trio.open_nursery() as nursery:
                self._nursery = nursery  # client tasks and writers run here
                for pump in self.to_brokers:
                    nursery.start_soon(pump.run)
                nursery.start_soon(self.from_broker.run)
                nursery.start_soon(self._tick)
                nursery.start_soon(self._rejoin_when_fenced)
                for acceptor in self.acceptors:
                    nursery.start_soon(acceptor.run)
                task_status.started(bound)
        finally:
            for acceptor in self.acceptors:
                acceptor.close()

    def _open_listeners(self) -> dict[str, tuple[str, int]]:
        config = self.config
        bound: dict[str, tuple[str, int]] = {}
        max_line = config.limits.max_line
        if config.plain:
            bound["plain"] = self._add_listener(config.host, config.port, None, lambda: LineDoor(max_line))
        if config.tls is not None:
            context = tls.server_context(config.tls.cert, config.tls.key)
            bound["tls"] = self._add_listener(config.tls.host, config.tls.port, context, lambda: LineDoor(max_line))
        if (irc := config.irc) is not None:
            settings = IrcSettings(irc.server_name)
            bound["irc"] = self._add_listener(irc.host, irc.port, None, lambda: IrcDoor(settings))
        if (web := config.web) is not None:
            web_config = WebConfig(static=load_static(), origins=web.origins, max_line=max_line)
            bound["ws"] = self._add_listener(web.host, web.port, None, lambda: WebDoor(web_config))
        return bound

    def _add_listener(self, host: str, port: int, context: ssl.SSLContext | None,
                      make_door: Callable[[], Door]) -> tuple[str, int]:
        reuse = self.config.reuse_port
        listener = accept.listen(host, port, reuse)
        address = listener.getsockname()[:2]
        port = address[1]  # the same port again when the listener reopens

        def on_accept(sock: socket.socket) -> None:
            self._nursery.start_soon(self._handle, sock, context, make_door)

        self.acceptors.append(accept.Acceptor(listener, on_accept, lambda: accept.listen(host, port, reuse)))
        return address

    # --- the broker side ------------------------------------------------------

    @property
    def broker_down(self) -> bool:
        silent = trio.current_time() - self.broker_heard
        return silent > self.config.heartbeat * self.config.liveness

    @property
    def serving(self) -> bool:
        """Whether new clients may be accepted: the broker hears us under this name."""
        return not (self.broker_down or self._fenced is not None or self._rejoining)

    def _sync_accepting(self) -> None:
        """Keep the client port open exactly while we can serve: a balancer's health
        check then tells the truth, and clients go to a gateway that can serve them."""
        if self.serving:
            reopened = [acceptor.open() for acceptor in self.acceptors if not acceptor.accepting]
            if reopened and all(reopened):
                log.warning("serving again: accepting clients")
        elif any(acceptor.listener is not None for acceptor in self.acceptors):
            for acceptor in self.acceptors:
                acceptor.close()
            log.warning("cannot serve: client port closed until the broker hears us")

    async def _tick(self) -> None:
        """Heartbeat the broker; send again what it left unanswered too long."""
        while True:
            self._sync_accepting()
            self._beat_brokers()
            now = trio.current_time()
            if self.broker_down and not self._silence_logged:
                self._silence_logged = True
                log.warning("the broker is silent for %.1f s: not accepting clients", now - self.broker_heard)
            in_flight = 0
            for session in self.sessions.values():
                in_flight += session.in_flight is not None
                frames = session.overdue(now, self.config.resend_after)
                if frames is not None:
                    self.metrics.resent += 1
                    self.to_broker.put_nowait(frames)
            self._snapshot(in_flight)
            self.rooms.sweep(now)
            await trio.sleep(self.config.heartbeat)

    def _snapshot(self, in_flight: int) -> None:
        """Copy what a scrape shows of the loop's tables (at most one heartbeat old)."""
        metrics = self.metrics
        metrics.gauges = Gauges(len(self.clients), in_flight, not self.broker_down, self.serving)
        metrics.drops[Drop.OUTBOX_FULL] = self.to_broker.dropped
        metrics.drops[Drop.ROOM_CATCH_UP_MISSED] = self._rooms_missed + self.rooms.missed

    def _beat_brokers(self) -> None:
        beat = codec.encode(Heartbeat(self.instance))
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

    def _advance(self, session: Session) -> None:
        """Send the session's next event if it may go now."""
        frames = session.next_frame(trio.current_time())
        if frames is not None:
            self.metrics.events_sent += 1
            self.to_broker.put_nowait(frames)
        client = self.clients.get(session.cid)
        if session.finished and client is None:
            self.sessions.pop(session.cid, None)
        if client is not None:
            client.wake_reader()  # a reader held back, or a half-closed client waiting for its end

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
        rooms, items = self.rooms, batch.items
        for index, item in enumerate(items):
            if isinstance(item, Mark):
                skipping = not self._on_mark(item, answered, now)
            elif skipping:
                continue
            elif isinstance(item, RoomEvent):
                for cids, event in rooms.apply(item, now, items, index):
                    self._deliver(cids, event)
            elif isinstance(item, Deliver):
                self._deliver(item.cids, item.event)
            elif (client := self.clients.get(item.cid)) is None:
                continue  # a SetMode or Close for a connection that is gone
            elif isinstance(item, SetMode):
                client.door.set_json(item.json)
            else:
                self._on_close(client, item)
        for session in answered:  # after the whole batch: a Close in it stops what was pending
            for cids, event in rooms.release(session.cid):  # held while a re-join may have been coming
                self._deliver(cids, event)
            self._advance(session)

    def _on_mark(self, mark: Mark, answered: list[Session], now: float) -> bool:
        """-> False if this event was shown already (a replay)."""
        if not self.seen.first_time(mark.cid, mark.seq):
            self.metrics.drop(Drop.REPLAY_DROPPED)
            return False
        if gateway_of(mark.cid) == self.instance:
            session = self.sessions.get(mark.cid)
            if session is not None and (in_flight := session.in_flight) is not None and session.answered(mark.seq):
                self.metrics.latency.observe(now - in_flight.first_sent)
                answered.append(session)
        return True

    def _on_close(self, client: Client, close: Close) -> None:
        if close.reason == GATEWAY_LOST_REASON:  # a worker found us declared lost
            self._fence(f"a worker closed {close.cid} as {close.reason!r}")
        self._close(client, close.reason)

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
        for client in list(self.clients.values()):
            client.close_after(client.door.end(GATEWAY_GONE), "gateway fenced")
        for session in self.sessions.values():
            session.abandon()
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

    def _close(self, client: Client, reason: str) -> None:
        """The worker closes the connection (/quit): lines it sent after that are dropped."""
        client.close_after(b"", reason)
        if (session := self.sessions.get(client.cid)) is not None:
            session.pending.clear()

    def _deliver(self, cids: tuple[str, ...], event: ChatEvent) -> None:
        """Render once per view that shares renderings (IRC renders per connection)."""
        text: bytes | None = None
        as_json: bytes | None = None
        framed: bytes | None = None
        clients, text_view, json_view, web_view = self.clients, View.TEXT, View.JSON, View.WEB  # locals: the hot loop
        for cid in cids:
            client = clients.get(cid)
            if client is None:
                self.metrics.drop(Drop.DELIVERY_TO_CLOSED)
                continue
            view = client.door.view
            if view is text_view:
                if is_own_echo(event, cid):
                    continue
                text = text or render_text(event)
                data = text
            elif view is json_view:
                as_json = as_json or render_json(event)
                data = as_json
            elif view is web_view:
                framed = framed or render_event(event)
                data = framed
            else:
                data = client.door.render(event, cid)
                if not data:
                    continue
            if client.push(data):
                self.metrics.deliveries += 1
                self._dirty[cid] = client
            else:
                self._kick(client, "output queue full: you are not reading")

    def _flush(self) -> None:
        """After a burst of replies: one send per client that got something."""
        for client in self._dirty.values():
            client.flush()
        self._dirty.clear()

    def _kick(self, client: Client, reason: str) -> None:
        log.info("closing %s: %s", client.cid, reason)
        self._dirty.pop(client.cid, None)
        self.metrics.drop(Drop.SLOW_CONSUMER_CUT)
        client.close_after(client.door.end(f"{reason}; disconnecting"), reason)

    def _count(self, cause: Drop, detail: str) -> None:
        """Count a dropped message by its fixed cause; the log keeps the detail."""
        log.warning("dropped (%s): %s (%d so far)", cause.value, detail, self.metrics.drop(cause))

    # --- the client side ------------------------------------------------------------

    def _refusal(self, address: str) -> tuple[Refusal, str] | None:
        config = self.config
        if self.max_connections and self._handling > self.max_connections:
            return Refusal.SERVER_FULL, f"server full ({self.max_connections} connections): try again later"
        if config.max_per_address and self.per_address[address] >= config.max_per_address:
            return Refusal.PER_ADDRESS, f"too many connections from your address (max {config.max_per_address})"
        return None

    async def _handle(self, sock: socket.socket, context: ssl.SSLContext | None,
                      make_door: Callable[[], Door]) -> None:
        # the connection is a plain non-blocking socket, or one wrapped by OpenSSL (see gateway.client)
        self._handling += 1
        try:
            accept.keep_alive(sock)
            try:
                peer, first = await accept.client_address(sock, self.config.proxy_protocol,
                                                          self.config.trusted_proxies, exact=context is not None)
                if context is not None:
                    sock = await self._handshake(context, sock, peer)
            except accept.HealthCheck:
                self.metrics.health_checks += 1
                return
            except accept.NoClient as exc:
                self.metrics.refuse(exc.cause)
                return
            except accept.Refused as exc:
                self.metrics.refuse(exc.cause)  # by cause: the peer and the detail are in the log
                log.warning("refused: %s", exc)
                return
            address = peer.rpartition(":")[0]
            door = make_door()
            refusal = self._refusal(address)
            if refusal is not None:
                self.metrics.refuse(refusal[0])
                with contextlib.suppress(OSError):  # best effort: it is being refused anyway
                    sock.send(door.refuse(refusal[1]))
                return
            self.per_address[address] += 1
            try:
                await self._serve_client(sock, peer, first, door)
            finally:
                self.per_address[address] -= 1
                if not self.per_address[address]:
                    del self.per_address[address]
        finally:
            self._handling -= 1
            if context is not None:
                tls.say_goodbye(sock)
            sock.close()

    async def _handshake(self, context: ssl.SSLContext, sock: socket.socket, peer: str) -> socket.socket:
        assert self.config.tls is not None
        return await tls.handshake(context, sock, self.config.tls.handshake_timeout, peer)

    async def _serve_client(self, sock: socket.socket, peer: str, first: bytes, door: Door) -> None:
        cid = f"{self.instance}:{next(self._numbers)}"
        client = Client(cid, sock, door, self.config.limits, self._nursery.start_soon)
        self.clients[cid] = client
        self.metrics.accepted += 1
        self.metrics.accepted_by_door[door.kind] += 1
        self._peers[cid] = peer
        if door.chatting:
            self._open_session(client)
        deadline = trio.current_time() + self.config.ready_timeout
        ended = ""
        try:
            ended = await client.serve(self._on_lines, first, self._on_eof, self._open_session, deadline)
        finally:
            del self.clients[cid]
            self.rooms.forget(cid)
            self._peers.pop(cid, None)
            if client.closing == FLOODING_REASON:
                self.metrics.drop(Drop.FLOOD_CUT)
            trio.lowlevel.notify_closing(sock)  # a writer still waiting on it gives up
            session = self.sessions.get(cid)
            if session is None or session.finished:  # never a chat connection, or its session is over already
                self.sessions.pop(cid, None)
            else:
                session.leave(client.closing or ended)
                self._advance(session)

    def _open_session(self, client: Client) -> None:
        """The connection is a chat connection from now on: tell the chat."""
        session = Session(client.cid, self._peers.get(client.cid, "?"), trio.current_time())
        self.sessions[client.cid] = session
        self.metrics.events_sent += 1
        assert session.in_flight is not None
        self.to_broker.put_nowait(session.in_flight.frames)

    async def _on_eof(self, client: Client) -> None:
        """The client half-closed: it may still read. Say goodbye for it, and let
        out what its lines cause until the broker answers (`half_close_wait` at most)."""
        session = self.sessions.get(client.cid)
        if session is None:
            return
        session.leave("")
        self._advance(session)
        with trio.move_on_after(self.config.half_close_wait):
            while not session.finished and client.closing is None:
                await client.wait_for_reader_wakeup(self.config.heartbeat)

    async def _on_lines(self, client: Client, lines: list[str]) -> None:
        """Hand a client's lines to its session; wait while too many are pending."""
        session = self.sessions[client.cid]
        hold = self.config.limits.max_waiting_lines
        while len(session.pending) >= hold and not self.broker_down:
            await client.wait_for_reader_wakeup(self.config.heartbeat)
        room = max(0, hold - len(session.pending))
        if len(lines) > room and self.broker_down:
            self.metrics.drop(Drop.LINES_UNAVAILABLE, len(lines) - room)
            lines = lines[:room]
            client.push(client.door.notice(UNAVAILABLE))
        self.metrics.lines_in += len(lines)
        session.add_lines(lines)
        self._advance(session)
