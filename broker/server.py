"""The broker's poll loop: four sockets, one thread.

    frontend  ROUTER  <- gateways' DEALERs: [gateway, key, event, key, event, ...]  and [gateway, Heartbeat]
    backend   ROUTER  <- workers' DEALERs:  [worker, Ready | Heartbeat]
                                            [worker, Done, topic, batch, topic, batch, ...]
                      -> [worker, Heartbeat, key, event, key, event, ...] | [worker, Heartbeat]
    pub-out   XPUB    -> gateways' SUBs:    [topic "<gateway>:", seq, Batch]
    pub-in    XSUB    <- other publishers' [topic, Batch], forwarded to pub-out

The broker routes on the small frames (an event's key, a Done's topics) and
passes event bodies and batches through unread (protocol.codec): a gateway's
event is checked against it by its key, and by the worker against its body.

A gateway's message carries one event ([gateway, key, event], the common case)
or up to MAX_EVENTS (stack.frames) that waited in its outbox together: any odd
count of frames from 3 to 1 + 2 * MAX_EVENTS. Each event is checked on its own
(its key, its connection ID's gateway, a fenced sender, a standby broker): a bad
one costs that event only. An even count beyond [gateway, Heartbeat], or more
events than the bound, is refused whole (`wrong_frame_count`): no gateway sends it.

broker.sockets binds the four sockets; broker.publisher runs pub-out (which
subscriptions count, the `seq` numbering after the broker's epoch, full pipes).

A broker pair (HA mode, `lease`): only the one holding the lease (broker.pair
keeps it) serves: takes events, dispatches, publishes, forwards pub-in and
reaps; it checks its role before each of these. Stepping down forgets
everything (a new name, queue and peers: to the peers it is a new broker);
on acquiring, the broker gives every peer a fresh window and heartbeats them
at once.

A fenced gateway instance that speaks again is answered `Fenced` (at most
once a heartbeat) and its events are ignored; it re-joins under a new name.
A broker that hears no peer at all within the liveness window suspects its
own link and reaps nobody; when peers are heard again, the silent ones get
a fresh window first.

Everything the loop does is counted in `BrokerMetrics` (broker.metrics): plain
ints on the hot path, the queue's and peers' sizes copied once a heartbeat; every
drop or refusal under one fixed `Drop` cause.

A `Done` is published on pub-out before its events are marked finished, and
all of it goes out before any other reply: every gateway sees replies in
one order, the broker's. Messages are drained in bursts before dispatching,
so under load one dispatch carries many events (adaptive batching).
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import secrets
import time

import zmq

from broker.config import BrokerConfig
from broker.hops import BrokerHops
from broker.lease import Lease
from broker.liveness import Fence, LinkWatch, Liveness
from broker.metrics import BrokerMetrics, Drop, Gauges
from broker.pair import LeaseKeeper
from broker.publisher import PubOut
from broker.role import Role
from broker.scheduler import Scheduler
from broker.sockets import Sockets
from protocol import codec
from protocol.errors import DecodeError
from protocol.messages import (
    Done,
    Fenced,
    GatewayLost,
    Heartbeat,
    Message,
    Ready,
    Unknown,
    event_key,
    gateway_of,
    topic_of,
)
from stack.frames import MAX_EVENTS, recv_frames, send_frames
from stack.process import Stopping

log = logging.getLogger("chat.broker")

BURST = 1000  # messages read from one socket before looking at the others (events, on the frontend)
_MAX_EVENT_FRAMES = 1 + 2 * MAX_EVENTS  # [gateway, key, event, ...] at most
_EVENTS, _POLLIN = int(zmq.EVENTS), int(zmq.POLLIN)


class Broker:
    def __init__(self, config: BrokerConfig, ctx: zmq.Context[zmq.Socket[bytes]],
                 lease: Lease | None = None) -> None:
        self.config = config
        self.lease = lease  # None: a lone broker, always active
        self.sockets = Sockets(config, ctx)
        self.frontend, self.backend = self.sockets.frontend, self.sockets.backend
        self.pub_in, self.pub_out = self.sockets.pub_in, self.sockets.pub_out
        self.metrics = BrokerMetrics()
        self.hops = BrokerHops(self.metrics.hops)  # sampled events' clocks (protocol.hops)
        self.keeper = LeaseKeeper(lease, config.heartbeat, config.liveness)
        self.role = self.keeper.role  # the same object for good: Role.lost() and renewed() change it
        self.pub = PubOut(self.pub_out, self.pub_in, self.metrics, self._drop, self._lose_gateway)
        self._forget_all(time.monotonic())

    def _forget_all(self, now: float) -> None:
        """Start afresh under a new name (at start, and on stepping down): peers see a new broker."""
        config = self.config
        self.scheduler = Scheduler()
        self.workers = Liveness(config.heartbeat, config.liveness)
        self.gateways = Liveness(config.heartbeat, config.liveness)
        self.link = LinkWatch(config.heartbeat * config.liveness, now)
        self.fenced = Fence(config.heartbeat)
        self.name = f"broker.{secrets.token_hex(4)}"  # new each run: peers see a restart
        self._unknown = codec.encode(Unknown(self.name))
        self._fenced = codec.encode(Fenced(self.name))
        self._beats: dict[bytes, int] = {}  # per gateway we hear: the number of its last heartbeat
        self.pub.restart(self.fenced, self.gateways)
        self.pub.expect_gateways(now + config.heartbeat * config.liveness)
        self._say_role()

    def _say_role(self) -> None:
        epoch = self.role.epoch
        self._role = Heartbeat(self.name, epoch, self.lease is None or epoch != 0)
        self._heartbeat = codec.encode(self._role)
        self.pub.epoch = epoch.to_bytes(8, "big")

    def endpoints(self) -> dict[str, str]:
        return self.sockets.endpoints()

    def close(self) -> None:
        self.keeper.close(self.name)
        self.sockets.close()
        drops = {cause.value: n for cause, n in self.metrics.drops.items() if n}
        if drops:
            log.info("broker drops by cause: %s", drops, extra={"fields": {"drops": drops}})

    # --- the loop -------------------------------------------------------------

    def run(self, stopping: Stopping) -> None:
        poller = zmq.Poller()
        handlers = {
            self.frontend: self._on_frontend,
            self.backend: self._on_backend,
            self.pub_in: self._on_pub_in,
            self.pub_out: self._on_subscription,
        }
        for sock in handlers:
            poller.register(sock, zmq.POLLIN)
        next_beat = time.monotonic()
        while not stopping.requested:
            wait = min(self.config.heartbeat / 2, max(0.0, self.keeper.next_take - time.monotonic()))
            for sock, _ in poller.poll(int(wait * 1000)):
                self._drain(sock, handlers[sock], sock is self.frontend)
            self._dispatch()
            now = time.monotonic()
            if now >= next_beat:
                self._housekeeping(now)
                next_beat = now + self.config.heartbeat
            elif now >= self.keeper.next_take:  # the holder's lease ends now: try at once, not at our next beat
                self.keeper.keep(self, now)

    def _drain(self, sock: zmq.Socket[bytes], handle, by_event: bool = False) -> None:  # type: ignore[no-untyped-def]
        """Handle what `sock` holds, up to BURST messages (`by_event`: up to BURST events, a message of
        several counting as that many, so the others wait no longer than before). After the first,
        one look at the socket's events says whether more wait: a message alone, the common case under
        light load, then costs no failed read (pyzmq raises zmq.Again for it: a few microseconds more
        than the look)."""
        frames = recv_frames(sock)
        if frames is None:
            return
        handle(frames)
        if not int(sock.getsockopt(_EVENTS)) & _POLLIN:
            return
        budget = BURST - (max(1, len(frames) >> 1) if by_event else 1)
        while budget > 0:
            frames = recv_frames(sock)
            if frames is None:
                return
            handle(frames)
            budget -= max(1, len(frames) >> 1) if by_event else 1

    # --- gateways ---------------------------------------------------------------

    def _decode(self, frames: list[bytes], where: str) -> tuple[bytes, bytes, Message] | None:
        """[peer, body] from a ROUTER -> (peer, body, message), or None (counted and logged)."""
        if len(frames) != 2:
            self._drop(Drop.WRONG_FRAME_COUNT, f"{where}: {len(frames)} frames")
            return None
        peer, body = frames
        try:
            return peer, body, codec.decode(body)
        except DecodeError as exc:
            self._drop(Drop.MALFORMED, f"{where}: {exc}")
            return None

    def _decode_done(self, frames: list[bytes]) -> tuple[bytes, bytes, Message] | None:
        """[worker, Done, topic, batch, ...] -> (worker, b"", Done), batches unread; or None."""
        try:
            return frames[0], b"", codec.decode_done(frames[1:])
        except DecodeError as exc:
            self._drop(Drop.MALFORMED, f"backend: {exc}")
            return None

    def _on_frontend(self, frames: list[bytes]) -> None:
        count = len(frames)
        if count == 3:
            self._on_event(frames[0], frames[1], frames[2])
            return
        if count & 1 and 3 < count <= _MAX_EVENT_FRAMES:
            self._on_events(frames)
            return
        decoded = self._decode(frames, "frontend")
        if decoded is None:
            return
        gateway, _, msg = decoded
        if not isinstance(msg, Heartbeat):  # events come as [key, event]
            self._drop(Drop.UNEXPECTED_MESSAGE, f"frontend: {type(msg).__name__}")
            return
        now = time.monotonic()
        if gateway in self.fenced:
            self._on_fenced(gateway, False, now)
            return
        self._heard(self.gateways, gateway, now)
        if msg.beat is not None:
            self._beats[gateway] = msg.beat

    def _on_events(self, frames: list[bytes]) -> None:
        """[gateway, key, event, key, event, ...]: each event as if it came alone, in order."""
        gateway, on_event = frames[0], self._on_event
        for i in range(1, len(frames), 2):
            on_event(gateway, frames[i], frames[i + 1])

    def _on_event(self, gateway: bytes, key: bytes, body: bytes) -> None:
        """A gateway's event: queued by its key, its body unread (a worker checks they agree)."""
        try:
            cid, seq = codec.decode_key(key)
        except DecodeError as exc:
            self._drop(Drop.MALFORMED, f"frontend: {exc}")
            return
        now = time.monotonic()
        if not self.role.active(now):
            self.metrics.drop(Drop.NOT_ACTIVE)  # a gateway that has not heard of the switch yet
            return
        if gateway in self.fenced:
            self._on_fenced(gateway, True, now)
            return
        self._heard(self.gateways, gateway, now)
        if gateway_of(cid).encode() != gateway:
            self._drop(Drop.FOREIGN_CONNECTION_ID, "frontend: a connection ID of another gateway")
        elif self.scheduler.submit(cid, seq, (key, body)):
            self.metrics.received += 1
            self.hops.queued(key, now)
        else:
            self.metrics.drop(Drop.DUPLICATE_EVENT)  # a gateway's resend: normal, not logged

    # --- workers ------------------------------------------------------------------

    def _on_backend(self, frames: list[bytes]) -> None:
        decoded = self._decode_done(frames) if len(frames) > 2 else self._decode(frames, "backend")
        if decoded is None:
            return
        worker, _, msg = decoded
        if isinstance(msg, Ready):
            self._heard(self.workers, worker, time.monotonic())
            self.scheduler.ready(worker, msg.credit)
            log.info("worker %s ready (credit %d)", worker.decode(errors="replace"), msg.credit)
            return
        if worker not in self.workers:  # a worker of a broker before us: ask it to register
            self.metrics.drop(Drop.UNKNOWN_WORKER)
            with contextlib.suppress(zmq.ZMQError):  # gone already: nothing to tell
                self.backend.send_multipart([worker, self._unknown], zmq.NOBLOCK)
            return
        self._heard(self.workers, worker, time.monotonic())
        if isinstance(msg, Done):
            if not self.role.active(time.monotonic()):  # worked for us before we stepped down
                self.metrics.drop(Drop.NOT_ACTIVE)
                return
            self.metrics.done += 1
            arrived = time.monotonic() if self.hops.answered(msg.events) else None
            self.pub.publish(msg)
            if arrived is not None:
                self.hops.published(arrived, time.monotonic())
            self.scheduler.done(worker, list(msg.events))
        elif not isinstance(msg, Heartbeat):
            self._drop(Drop.UNEXPECTED_MESSAGE, f"backend: {type(msg).__name__}")

    def _dispatch(self) -> None:
        if not self.role.active(time.monotonic()):
            return
        for worker, frames in self.scheduler.dispatch():
            self.hops.dispatched(frames)  # before the send: the worker may start at once
            try:  # our heartbeat first: the worker's scripts run under its epoch
                send_frames(self.backend, [worker, self._heartbeat, *frames])
            except zmq.ZMQError as exc:  # unroutable or at the high-water mark
                self._drop(Drop.BACKEND_UNROUTABLE, f"backend: {exc}")
                self.workers.forget(worker)
                self.scheduler.lose_worker(worker)
                self.metrics.workers_lost += 1
                continue
            self.metrics.dispatched += len(frames) // 2  # [key, event] each

    # --- pub-in forwarding ----------------------------------------------------------

    def _on_pub_in(self, frames: list[bytes]) -> None:
        if len(frames) != 2:
            self._drop(Drop.WRONG_FRAME_COUNT, f"pub-in: {len(frames)} frames")
            return
        if not self.role.active(time.monotonic()):
            self.metrics.drop(Drop.NOT_ACTIVE)
            return
        self.pub.send(frames[0], frames[1], "pub-out: high-water mark (pub-in)")

    def _on_subscription(self, frames: list[bytes]) -> None:
        self.pub.on_subscription(frames, self.role.active(time.monotonic()))

    # --- liveness ---------------------------------------------------------------------

    def _heard(self, peers: Liveness, peer: bytes, now: float) -> None:
        peers.heard(peer, now)
        silence = self.link.heard(now)
        if silence is not None:
            log.warning("peers heard again after %.1f s of silence from all of them: "
                        "the silent ones get a fresh window", silence)
            self.workers.grace(now)
            self.gateways.grace(now)

    def _on_fenced(self, gateway: bytes, event: bool, now: float) -> None:
        """A gateway instance we declared lost: its events are ignored, it is told."""
        if event:
            self.metrics.drop(Drop.FENCED_GATEWAY)
        if self.fenced.tell(gateway, now):
            log.info("gateway %s was fenced: telling it", gateway.decode(errors="replace"))
            with contextlib.suppress(zmq.ZMQError):  # gone or busy: it is told again later
                self.frontend.send_multipart([gateway, self._fenced], zmq.NOBLOCK)

    def _lose_gateway(self, gateway: bytes, why: str) -> None:
        name = gateway.decode(errors="replace")
        log.warning("gateway %s lost (%s): freeing its connections", name, why)
        self.gateways.forget(gateway)
        self.fenced.add(gateway)
        self.metrics.gateways_lost += 1
        self.pub.forget(topic_of(name))
        cid, seq = event_key(GatewayLost(name))
        self.scheduler.submit(cid, seq, tuple(codec.event_frames(GatewayLost(name))))

    def step_down(self, now: float, why: str) -> None:
        log.warning("stepping down from epoch %d: %s", self.role.epoch, why)
        if isinstance(self.role, Role):
            self.role.lost()
        self._forget_all(now)

    def activate(self, now: float) -> None:
        log.warning("active under epoch %d", self.role.epoch)
        self._say_role()
        self.workers.grace(now)
        self.gateways.grace(now)
        self.pub.expect_gateways(now + self.config.heartbeat * self.config.liveness)
        self.link = LinkWatch(self.keeper.ttl, now)
        self._beat(self.backend, self.workers)  # peers switch to us now, not at our next beat
        self._beat_gateways()

    def _housekeeping(self, now: float) -> None:
        self.keeper.keep(self, now)
        if not self.role.active(now):  # a standby forgets the silent, but frees nothing
            for worker in self.workers.expired(now):
                self.scheduler.lose_worker(worker)
            self.gateways.expired(now)
            self._beat(self.backend, self.workers)
            self._beat_gateways()
            self._snapshot()
            return
        was_silent = self.link.silent
        if self.link.may_reap(now):
            self._reap(now)
        elif not was_silent:
            log.warning("no peer heard for %.1f s: suspecting our own link, reaping nobody",
                        now - self.link.last_heard)
        self.pub.sweep_held(now)
        self._beat(self.backend, self.workers)
        self._beat_gateways()
        self._snapshot()

    def _snapshot(self) -> None:
        """Copy the queue's and peers' sizes for the metrics (read by the scrape thread)."""
        queue = self.scheduler
        self.metrics.gauges = Gauges(
            waiting=queue.queued, in_flight=queue.in_flight_total(), connections=queue.connections,
            workers=len(self.workers), credit=queue.free_credit(), gateways=len(self.gateways),
            fenced=len(self.fenced))

    def _reap(self, now: float) -> None:
        for worker in self.workers.expired(now):
            lost = self.scheduler.lose_worker(worker)
            self.metrics.workers_lost += 1
            log.warning("worker %s lost: %d events go out again", worker.decode(errors="replace"), lost)
        for gateway in self.gateways.expired(now):
            self._lose_gateway(gateway, "silent too long")

    def _beat(self, sock: zmq.Socket[bytes], peers: Liveness) -> None:
        for peer in peers:
            self._beat_one(sock, peer)

    def _beat_gateways(self) -> None:
        """A gateway's heartbeat says the number of the last of its heartbeats we heard: after a cut,
        it tells ours from those that waited in the link meanwhile (gateway.link). A gateway whose
        heartbeats are not numbered (an older one) gets the plain heartbeat it can read."""
        beats = self._beats
        for gateway in [gateway for gateway in beats if gateway not in self.gateways]:  # lost or silent
            del beats[gateway]
        for gateway in self.gateways:
            beat = beats.get(gateway)
            self._beat_one(self.frontend, gateway,
                           None if beat is None else codec.encode(dataclasses.replace(self._role, beat=beat)))

    def _beat_one(self, sock: zmq.Socket[bytes], peer: bytes, beat: bytes | None = None) -> None:
        with contextlib.suppress(zmq.ZMQError):  # gone or busy: its liveness will tell
            sock.send_multipart([peer, self._heartbeat if beat is None else beat], zmq.NOBLOCK)

    def _drop(self, cause: Drop, detail: str) -> None:
        """Count and log a drop: the metric by its fixed cause, the log line with the detail."""
        n = self.metrics.drop(cause)
        log.warning("dropped (%s): %s (%d so far)", cause.value, detail, n,
                    extra={"fields": {"cause": cause.value, "detail": detail, "count": n}})
