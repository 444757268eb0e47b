"""The broker's poll loop: four sockets, one thread.

    frontend  ROUTER  <- gateways' DEALERs: [gateway, key, event]  and [gateway, Heartbeat]
    backend   ROUTER  <- workers' DEALERs:  [worker, Ready | Heartbeat]
                                            [worker, Done, topic, batch, topic, batch, ...]
                      -> [worker, Heartbeat, key, event, key, event, ...] | [worker, Heartbeat]
    pub-out   XPUB    -> gateways' SUBs:    [topic "<gateway>:", seq, Batch]
    pub-in    XSUB    <- other publishers' [topic, Batch], forwarded to pub-out

The broker routes on the small frames (an event's key, a Done's topics) and
passes event bodies and batches through unread (protocol.codec): a gateway's
event is checked against it by its key, and by the worker against its body.

`seq` numbers the messages of each topic (8 bytes, big-endian, from 1 at
each broker start and each activation), after the broker's epoch (8 bytes,
big-endian; 0 for a lone broker): a gateway that sees a gap knows it lost
something, and one that has heard a higher epoch ignores a deposed broker.

A broker pair (HA mode, `lease`): both bind their sockets and take Ready and
heartbeats from every peer, but only the one holding the lease in Redis
(broker.lease) serves: takes events, dispatches, publishes, forwards pub-in and
reaps. It checks its lease (broker.role, its own clock) before each of these, so
a broker that was frozen past its lease does nothing when it wakes but step
down. Stepping down forgets everything (a new name, queue and peers: to the
peers it is a new broker); the standby tries to acquire every heartbeat, and
on acquiring gives every peer a fresh window and heartbeats them at once.
When the lease it found held is due to end before its next heartbeat, it
tries again right then, so a takeover comes about `ttl` after the dead
broker's last renewal.
pub-out is XPUB_NODROP and XPUB_MANUAL: only subscriptions to one gateway
topic (`<name>:`) are accepted, so one full pipe fails only its own topic.
A send that fails at a subscriber's high-water mark is counted by cause,
goes to the topic's other subscribers, if any, and the gateway that does
not read is declared lost at once (fenced): it costs only itself.

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
import logging
import secrets
import time
from collections import Counter
from dataclasses import dataclass

import zmq

from broker.lease import Lease
from broker.liveness import Fence, LinkWatch, Liveness
from broker.metrics import BrokerMetrics, Drop, Gauges
from broker.role import AlwaysActive, Role
from broker.scheduler import Scheduler
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
    is_gateway_topic,
    topic_of,
)
from stack.curve import ServerKeys
from stack.process import Stopping

log = logging.getLogger("chat.broker")

BURST = 1000  # messages read from one socket before looking at the others
MAX_TOPICS = 10_000  # pub-out topics subscribed at once: far more gateways than anyone runs
MAX_MESSAGE = 64 << 20  # default bound of one frame from any peer (ZMQ_MAXMSGSIZE)


@dataclass(frozen=True, slots=True)
class BrokerConfig:
    frontend: str = "tcp://127.0.0.1:5555"
    backend: str = "tcp://127.0.0.1:5556"
    pub_in: str = "tcp://127.0.0.1:5557"
    pub_out: str = "tcp://127.0.0.1:5558"
    heartbeat: float = 1.0
    liveness: int = 3
    hwm: int = 100_000
    max_message: int = MAX_MESSAGE
    curve: ServerKeys | None = None  # None: plain links


class Broker:
    def __init__(self, config: BrokerConfig, ctx: zmq.Context[zmq.Socket[bytes]],
                 lease: Lease | None = None) -> None:
        self.config = config
        self.lease = lease  # None: a lone broker, always active
        self.auth = config.curve.open_authenticator(ctx) if config.curve else None
        self.frontend = self._bind(ctx, zmq.ROUTER, config.frontend, "frontend")
        self.backend = self._bind(ctx, zmq.ROUTER, config.backend, "backend")
        self.pub_in = self._bind(ctx, zmq.XSUB, config.pub_in, "pub-in")
        self.pub_out = self._bind(ctx, zmq.XPUB, config.pub_out, "pub-out")
        self.metrics = BrokerMetrics()
        self.role: Role | AlwaysActive = Role(self.lease_ttl) if lease else AlwaysActive()
        self._subscribers: Counter[bytes] = Counter()  # per pub-out topic: subscriptions we accepted
        self._next_take = float("inf")  # when to try for the lease between heartbeats
        self._forget_all(time.monotonic())

    @property
    def lease_ttl(self) -> float:
        return self.config.heartbeat * self.config.liveness

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
        self._out_seq: dict[bytes, int] = {}  # per pub-out topic: the last seq sent
        self._say_role()

    def _say_role(self) -> None:
        epoch = self.role.epoch
        self._heartbeat = codec.encode(Heartbeat(self.name, epoch, self.lease is None or epoch != 0))
        self._epoch = epoch.to_bytes(8, "big")

    def _bind(self, ctx: zmq.Context[zmq.Socket[bytes]], kind: int, endpoint: str, domain: str) -> zmq.Socket[bytes]:
        sock = ctx.socket(kind)
        if self.config.curve and self.auth:
            self.config.curve.apply(sock, domain, self.auth)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.SNDHWM, self.config.hwm)
        sock.setsockopt(zmq.RCVHWM, self.config.hwm)
        sock.setsockopt(zmq.MAXMSGSIZE, self.config.max_message)
        if kind == zmq.ROUTER:
            sock.setsockopt(zmq.ROUTER_MANDATORY, 1)
        if kind == zmq.XPUB:
            sock.setsockopt(zmq.XPUB_NODROP, 1)
            sock.setsockopt(zmq.XPUB_MANUAL, 1)  # we choose which subscriptions count
        if kind == zmq.XSUB:
            sock.send(b"\x01")  # subscribe to everything
        sock.bind(endpoint)
        return sock

    def endpoints(self) -> dict[str, str]:
        return {
            name: sock.getsockopt_string(zmq.LAST_ENDPOINT)
            for name, sock in (
                ("frontend", self.frontend),
                ("backend", self.backend),
                ("pub-in", self.pub_in),
                ("pub-out", self.pub_out),
            )
        }

    def close(self) -> None:
        if self.lease is not None:
            if self.role.epoch:
                self.lease.release(self.name)
            self.lease.close()
        for sock in (self.frontend, self.backend, self.pub_in, self.pub_out):
            sock.close()
        if self.auth:
            self.auth.close()
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
            wait = min(self.config.heartbeat / 2, max(0.0, self._next_take - time.monotonic()))
            for sock, _ in poller.poll(int(wait * 1000)):
                self._drain(sock, handlers[sock])
            self._dispatch()
            now = time.monotonic()
            if now >= next_beat:
                self._housekeeping(now)
                next_beat = now + self.config.heartbeat
            elif now >= self._next_take:  # the holder's lease ends now: try at once, not at our next beat
                self._keep_lease(now)

    def _drain(self, sock: zmq.Socket[bytes], handle) -> None:  # type: ignore[no-untyped-def]
        for _ in range(BURST):
            try:
                frames = sock.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            handle(frames)

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
        if len(frames) == 3:
            self._on_event(frames[0], frames[1], frames[2])
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
            self._publish(msg)
            self.scheduler.done(worker, list(msg.events))
        elif not isinstance(msg, Heartbeat):
            self._drop(Drop.UNEXPECTED_MESSAGE, f"backend: {type(msg).__name__}")

    def _publish(self, done: Done) -> None:
        for gateway, batch in done.publish:
            self._send_out(topic_of(gateway), batch, "pub-out: high-water mark")

    def _send_out(self, topic: bytes, batch: bytes, where: str) -> None:
        name = topic[:-1]
        if name in self.fenced:
            self.metrics.drop(Drop.TO_FENCED_GATEWAY)
            return
        if topic not in self._subscribers:  # numbered only when someone can get it: a gap is a loss
            self.metrics.drop(Drop.NO_SUBSCRIBER)
            return
        seq = self._out_seq.get(topic, 0) + 1
        frames = [topic, self._epoch + seq.to_bytes(8, "big"), batch]
        try:
            self.pub_out.send_multipart(frames, zmq.NOBLOCK)
        except zmq.Again:  # a subscriber of this topic does not read: it alone loses
            self._drop(Drop.PUB_OUT_FULL, where)
            self._send_lossy(frames)
            if name in self.gateways:
                self._lose_gateway(name, "it does not read pub-out (its pipe is full)")
                return
        self._out_seq[topic] = seq
        self.metrics.published += 1

    def _send_lossy(self, frames: list[bytes]) -> None:
        """Send to the topic's subscribers that have room; the full ones drop it."""
        self.pub_out.setsockopt(zmq.XPUB_NODROP, 0)
        try:
            self.pub_out.send_multipart(frames, zmq.NOBLOCK)
        finally:
            self.pub_out.setsockopt(zmq.XPUB_NODROP, 1)

    def _dispatch(self) -> None:
        if not self.role.active(time.monotonic()):
            return
        for worker, frames in self.scheduler.dispatch():
            try:  # our heartbeat first: the worker's scripts run under its epoch
                self.backend.send_multipart([worker, self._heartbeat, *frames], zmq.NOBLOCK)
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
        self._send_out(frames[0], frames[1], "pub-out: high-water mark (pub-in)")

    def _on_subscription(self, frames: list[bytes]) -> None:
        """Accept a subscription to one gateway topic only: an empty or odd prefix
        would match others' topics, and its full pipe would fail their sends."""
        if len(frames) != 1 or not frames[0] or frames[0][0] not in (0, 1):
            self._drop(Drop.NOT_A_SUBSCRIPTION, "pub-out: not a subscription")
            return
        subscribe, topic = frames[0][0] == 1, frames[0][1:]
        if not is_gateway_topic(topic):
            self._drop(Drop.REFUSED_SUBSCRIPTION, "pub-out: not one gateway topic")
            return
        if subscribe and topic not in self._subscribers and len(self._subscribers) >= MAX_TOPICS:
            self._drop(Drop.TOO_MANY_TOPICS, f"pub-out: more than {MAX_TOPICS} topics")
            return
        self.pub_out.setsockopt(zmq.SUBSCRIBE if subscribe else zmq.UNSUBSCRIBE, topic)
        self._subscribers[topic] += 1 if subscribe else -1
        if self._subscribers[topic] <= 0:
            del self._subscribers[topic]
        self.pub_in.send_multipart(frames)

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
        self._out_seq.pop(topic_of(name), None)
        cid, seq = event_key(GatewayLost(name))
        self.scheduler.submit(cid, seq, tuple(codec.event_frames(GatewayLost(name))))

    def _keep_lease(self, now: float) -> None:
        """Renew or acquire the lease (once a heartbeat); step down when it is lost or its
        margin ran out (also after a freeze: the clock tells, before anything is served)."""
        if self.lease is None or not isinstance(self.role, Role):
            return
        if self.role.expired(now):
            self._step_down(now, "the lease could not be renewed in time")
        self._next_take = float("inf")
        epoch = self.lease.take(self.name)
        if epoch is None:  # Redis did not answer: our clock decides, at the next look
            return
        if epoch == 0:
            if self.role.epoch:
                self._step_down(now, "another broker holds the lease")
            if self.lease.ends_in < self.config.heartbeat:  # be there when it ends
                self._next_take = now + self.lease.ends_in + 0.001
            return
        if self.role.epoch and epoch != self.role.epoch:  # lost and taken again (Redis lost its data):
            self._step_down(now, f"the lease came back under epoch {epoch}")  # what we sent is fenced
            return
        if self.role.renewed(epoch, now):
            self._activate(now)

    def _step_down(self, now: float, why: str) -> None:
        log.warning("stepping down from epoch %d: %s", self.role.epoch, why)
        if isinstance(self.role, Role):
            self.role.lost()
        self._forget_all(now)

    def _activate(self, now: float) -> None:
        log.warning("active under epoch %d", self.role.epoch)
        self._say_role()
        self.workers.grace(now)
        self.gateways.grace(now)
        self.link = LinkWatch(self.lease_ttl, now)
        self._beat(self.backend, self.workers)  # peers switch to us now, not at our next beat
        self._beat(self.frontend, self.gateways)

    def _housekeeping(self, now: float) -> None:
        self._keep_lease(now)
        if not self.role.active(now):  # a standby forgets the silent, but frees nothing
            for worker in self.workers.expired(now):
                self.scheduler.lose_worker(worker)
            self.gateways.expired(now)
            self._beat(self.backend, self.workers)
            self._beat(self.frontend, self.gateways)
            self._snapshot()
            return
        was_silent = self.link.silent
        if self.link.may_reap(now):
            self._reap(now)
        elif not was_silent:
            log.warning("no peer heard for %.1f s: suspecting our own link, reaping nobody",
                        now - self.link.last_heard)
        self._beat(self.backend, self.workers)
        self._beat(self.frontend, self.gateways)
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

    def _beat_one(self, sock: zmq.Socket[bytes], peer: bytes) -> None:
        with contextlib.suppress(zmq.ZMQError):  # gone or busy: its liveness will tell
            sock.send_multipart([peer, self._heartbeat], zmq.NOBLOCK)

    def _drop(self, cause: Drop, detail: str) -> None:
        """Count and log a drop: the metric by its fixed cause, the log line with the detail."""
        n = self.metrics.drop(cause)
        log.warning("dropped (%s): %s (%d so far)", cause.value, detail, n,
                    extra={"fields": {"cause": cause.value, "detail": detail, "count": n}})
