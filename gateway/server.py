"""The gateway: TCP clients on one side, the broker on the other.

    clients --TCP--> Client.serve (reads) --> Session --event--> DEALER pump --> broker frontend
    clients <--TCP-- Client.flush (writes) <-- on_batch <-- SUB pump <-- broker pub-out

Each connection gets an ID `<instance>:<n>`, where the instance name is
unique to this run of the process, so a restarted gateway never reuses an
ID. The gateway subscribes to its own topic only. It keeps the open
connections and their sessions with the broker (`gateway.session`), and
nothing else: the chat's state is the workers'.

A connection has a task while it is busy; an idle one is parked with the
gateway's one watcher (gateway.idle), which starts a task for it again when
it wakes. Its end (`_closed`) is the same either way.

`Gateway` is one object in three modules: the broker link (gateway.link:
sockets, heartbeats, broker choice, fencing and re-instancing, resends),
the delivery of pub-out batches to clients (gateway.deliver) and, here,
the listeners, admission and each connection's life.

Clients come on a plain listener, a TLS one (`gateway.tls`), an IRC one
and a WebSocket one (which also serves the web client's page); past the
handshake a TLS client is served like any other. Each connection has a door
(`protocol.doors`): what its bytes mean and how a delivery is shown. The
broker link, the connection table, admission, flood control and the write
path are the same for every door. The listeners are open exactly while the
gateway can serve (`serving`). The PROXY protocol, when on, applies to every
listener. Everything counted goes to `GatewayMetrics` (gateway.metrics):
plain ints on the hot path, drops and refusals by a fixed cause, the detail
in the log.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import socket
import ssl
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

import trio
import zmq

from gateway import accept, tls
from gateway.client import FLOODING_REASON, Client, ClientHooks, ClientLimits
from gateway.deliver import Delivery
from gateway.idle import IdleWatcher
from gateway.link import BrokerLink, instance_name
from gateway.metrics import Drop, GatewayMetrics, Refusal
from gateway.session import SeenEvents, Session
from gateway.web import load_static
from protocol.doors import Door, IrcDoor, LineDoor, WebDoor
from protocol.fanout import Runs
from protocol.irc import IrcSettings
from protocol.proxy import Network
from protocol.rooms import RoomTable
from protocol.websocket import WebConfig
from stack.curve import ClientKeys

log = logging.getLogger("chat.gateway")

UNAVAILABLE = "service temporarily unavailable"


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
    hop_sample: int = 0  # time one event in N at every hop (protocol.hops); 0: none
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


class Gateway(BrokerLink, Delivery):
    """Listeners, admission and each connection's life; the broker link and the delivery are its bases."""

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
        self._numbers = itertools.count(1)
        self._open_link(ctx)
        self._dirty: dict[str, Client] = {}  # clients pushed to since the last flush
        self._runs = Runs(self._deliver)  # deliveries grouped by audience (gateway.deliver)
        self._nursery: trio.Nursery
        self._hooks: ClientHooks
        self.idle: IdleWatcher | None = None  # the parked clients, while serving

    def _is_member(self, cid: str) -> bool:
        """A room event's joiner or leaver that is ours to count (an open connection of ours)."""
        return cid in self.clients

    def _is_busy(self, cid: str) -> bool:
        """The connection has an event in flight (it may re-join a room it left)."""
        session = self.sessions.get(cid)
        return session is not None and session.in_flight is not None

    async def serve(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:  # type: ignore[no-untyped-def]
        """Serve until cancelled; started with {"plain" and/or "tls": (host, port)}."""
        self.max_connections = accept.connection_limit(self.config.max_connections)
        self._handling = 0  # accepted sockets open now: clients, and those still being let in
        self.acceptors: list[accept.Acceptor] = []
        self.idle = idle = IdleWatcher(self._wake)
        try:
            bound = self._open_listeners()
            async with trio.open_nursery() as nursery:
                self._nursery = nursery  # client tasks and writers run here
                self._hooks = ClientHooks(self.config.limits, nursery.start_soon, self._on_lines, self._on_eof,
                                          self._open_session, idle, on_lines_nowait=self._on_lines_nowait,
                                          on_eof_nowait=self._on_eof_nowait)
                nursery.start_soon(idle.run)
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
            for client in idle.close():
                self._closed(client, "")

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

        def on_accept(sock: socket.socket, peer: str) -> None:
            if context is None and not self.config.proxy_protocol:
                self._let_in_now(sock, peer, make_door)  # nothing to wait for: no task unless it must read
            else:
                self._nursery.start_soon(self._handle, sock, context, make_door)

        self.acceptors.append(accept.Acceptor(listener, on_accept, lambda: accept.listen(host, port, reuse)))
        return address

    # --- serving -------------------------------------------------------------

    @property
    def serving(self) -> bool:
        """Whether new clients may be accepted: the broker hears us under this name (and after a
        silence, it said it heard us since: gateway.link)."""
        return not (self.broker_down or self._fenced is not None or self._rejoining
                    or self._unconfirmed_from is not None)

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

    def _advance(self, session: Session) -> None:
        """Send the session's next event if it may go now."""
        frames = session.next_frame(trio.current_time())
        if frames is not None:
            self.metrics.events_sent += 1
            self._sample_sent(session.cid, frames)
            self.to_broker.put_nowait(frames)
        client = self.clients.get(session.cid)
        if session.finished and client is None:
            self.sessions.pop(session.cid, None)
        if client is not None:
            client.wake_reader()  # a reader held back, or a half-closed client waiting for its end

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
        # the connection is a plain non-blocking socket, or one wrapped by OpenSSL (see gateway.reader)
        self._handling += 1
        client: Client | None = None
        try:
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
            client = self._let_in(sock, peer, make_door())  # the client's from now on: `_closed` closes it
            if client is not None:
                await self._run_client(client, first)
        finally:
            if client is None:
                self._handling -= 1
                self._close_socket(sock)

    def _let_in_now(self, sock: socket.socket, peer: str, make_door: Callable[[], Door]) -> None:
        """A plain connection from `peer` (as accepted), no PROXY header to read: let it in at
        once, and park it unless its door must be read by a deadline (then it gets its task)."""
        self._handling += 1
        client: Client | None = None
        try:
            client = self._let_in(sock, peer, make_door())
        finally:
            if client is None:
                self._handling -= 1
                self._close_socket(sock)
        if client is not None and not client.park_new():
            self._nursery.start_soon(self._run_client, client)

    def _let_in(self, sock: socket.socket, peer: str, door: Door) -> Client | None:
        """Admit the connection -> its client, or None: refused (and told why)."""
        refusal = self._refusal(peer.rpartition(":")[0])
        if refusal is not None:
            self.metrics.refuse(refusal[0])
            with contextlib.suppress(OSError):  # best effort: it is being refused anyway
                sock.send(door.refuse(refusal[1]))
            return None
        return self._admit(sock, peer, door)

    def _close_socket(self, sock: socket.socket) -> None:
        if isinstance(sock, ssl.SSLSocket):
            tls.say_goodbye(sock)
        sock.close()

    async def _handshake(self, context: ssl.SSLContext, sock: socket.socket, peer: str) -> socket.socket:
        assert self.config.tls is not None
        return await tls.handshake(context, sock, self.config.tls.handshake_timeout, peer)

    def _admit(self, sock: socket.socket, peer: str, door: Door) -> Client:
        """A client of ours from now on: in the tables, and a chat connection if its door is one."""
        cid = f"{self.instance}:{next(self._numbers)}"
        client = Client(cid, sock, door, peer, self._hooks, trio.current_time() + self.config.ready_timeout)
        self.clients[cid] = client
        self.per_address[peer.rpartition(":")[0]] += 1
        self.metrics.accepted += 1
        self.metrics.accepted_by_door[door.kind] += 1
        if door.chatting:
            self._open_session(client)
        return client

    def _wake(self, client: Client) -> None:
        """A parked client woke (input, a FIN, an error) or must close: ended here if nothing is
        left to write, served here if what it sent needs no waiting (`Client.serve_nowait`),
        else in a task again."""
        if (reason := client.ended()) is not None:
            self._closed(client, reason)
            return
        rest = client.serve_nowait()
        if rest is None:
            return
        if (reason := client.ended()) is not None:  # cut, broken, or an idle client's end of input
            self._closed(client, reason)
        else:
            self._nursery.start_soon(self._run_client, client, rest[0], True, rest[1])

    async def _run_client(self, client: Client, first: bytes = b"", readable: bool = False,
                          held: list[str] | None = None) -> None:
        """Serve the client while it is busy; close it when it ends (not when it is parked)."""
        ended: str | None = ""
        try:
            ended = await client.serve(first, readable, held)
        finally:
            if ended is not None:
                self._closed(client, client.closing or ended)

    def _closed(self, client: Client, reason: str) -> None:
        """The connection ended: out of the tables, its session told, its socket closed."""
        cid, sock = client.cid, client.sock
        del self.clients[cid]
        self.rooms.forget(cid)
        if client.closing == FLOODING_REASON:
            self.metrics.drop(Drop.FLOOD_CUT)
        if client.awaited:  # a writer still waiting on it gives up (no task, no writer: nobody to tell)
            trio.lowlevel.notify_closing(sock)
        session = self.sessions.get(cid)
        if session is None or session.finished:  # never a chat connection, or its session is over already
            self.sessions.pop(cid, None)
        else:
            session.leave(reason)
            self._advance(session)
        address = client.peer.rpartition(":")[0]
        self.per_address[address] -= 1
        if not self.per_address[address]:
            del self.per_address[address]
        self._handling -= 1
        self._close_socket(sock)

    def _open_session(self, client: Client) -> None:
        """The connection is a chat connection from now on: tell the chat."""
        session = Session(client.cid, client.peer, trio.current_time())
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

    def _on_eof_nowait(self, client: Client) -> bool:
        """An idle client half-closed -> True if nothing its lines caused is on its way (no event
        in flight or waiting): it may close now, its goodbye sent; else `_on_eof` waits for them."""
        session = self.sessions.get(client.cid)
        if session is None:
            return True
        if session.in_flight is not None or session.pending:
            return False
        session.leave("")
        self._advance(session)
        return True

    async def _on_lines(self, client: Client, lines: list[str]) -> None:
        """Hand a client's lines to its session; wait while too many are pending."""
        session = self.sessions[client.cid]
        while not self._takes_lines(session):
            await client.wait_for_reader_wakeup(self.config.heartbeat)
        self._hand_on(client, session, lines)

    def _on_lines_nowait(self, client: Client, lines: list[str]) -> bool:
        """`_on_lines` if it need not wait -> False: it took nothing (no session, or a full one)."""
        session = self.sessions.get(client.cid)
        if session is None or not self._takes_lines(session):
            return False
        if lines:
            self._hand_on(client, session, lines)
        return True

    def _takes_lines(self, session: Session) -> bool:
        """Whether the session takes more lines now (while the broker is down, it refuses the rest)."""
        return len(session.pending) < self.config.limits.max_waiting_lines or self.broker_down

    def _hand_on(self, client: Client, session: Session, lines: list[str]) -> None:
        hold = self.config.limits.max_waiting_lines
        room = max(0, hold - len(session.pending))
        if len(lines) > room and self.broker_down:
            self.metrics.drop(Drop.LINES_UNAVAILABLE, len(lines) - room)
            lines = lines[:room]
            client.push(client.door.notice(UNAVAILABLE))
        self.metrics.lines_in += len(lines)
        self._sample_read(session)
        session.add_lines(lines)
        self._advance(session)
