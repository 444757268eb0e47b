"""One worker process: take events from the broker, run the chat, reply.

The worker is a Paranoid Pirate worker (ZeroMQ guide, chapter 4): a DEALER
connected to the broker's backend that says `Ready(credit)` once, then gets
up to `credit` events at a time. Each message from the broker is a list of
events, each a key and a body (protocol.codec); the worker handles them in order and answers with one
`Done` that names them and carries one `Batch` per gateway. Messages that wait behind one another
(the worker was busy) are served together: one round trip to Redis, one Done (`join_waiting`). Replies travel
on the same socket as the events, never on a separate PUB: finishing an
event and publishing what it caused are then one message, which is what
lets the broker keep a connection's events in order across workers.

Heartbeats go both ways; a broker silent for `liveness` intervals is taken
for gone: the worker connects again. `--backend` may name several brokers
(a pair, comma-separated): the worker keeps one DEALER per broker, says Ready
and heartbeats to each, and serves whichever dispatches (only the active one
does). Every dispatch starts with its broker's heartbeat, which carries the
broker's epoch: the scripts run under it, and when one refuses it (`FENCED`:
that broker was deposed) the dispatch is left unanswered (no Mark: its
gateways send it again to the new broker) and later dispatches under that
epoch are dropped unread. A broker that does not know the worker
(it restarted, and ZeroMQ reconnected us to it) says `Unknown`: the worker
registers with `Ready` again.

When Redis fails, a breaker opens for a moment so that the events behind
the failed one fail fast instead of each waiting out a timeout; after the
cooldown the next dispatch is a trial, whose failure opens it again and
whose success closes it. A line that
cannot be served is answered `! service temporarily unavailable`; a connect
or disconnect is left unanswered (no `Mark`), so its gateway sends it again
later; a lost gateway's clean-up is kept here and tried again.
"""

from __future__ import annotations

import logging
import os
import secrets
import socket
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

import redis
import zmq

from protocol import codec
from protocol.errors import DecodeError
from protocol.hops import is_sampled
from protocol.messages import (
    Connected,
    Disconnected,
    Done,
    GatewayLost,
    Heartbeat,
    Lines,
    Ready,
    Unknown,
    WorkItem,
    event_key,
)
from stack.curve import ClientKeys
from stack.frames import recv_frames, send_frames
from stack.process import Stopping, set_log_instance, tune_gc
from workers.effects import Effects
from workers.logic import INTERNAL_ERROR, UNAVAILABLE, Chat, ChatLimits
from workers.metrics import FLUSH_EVERY, RedisCause, RefusedCause, WorkerMetrics, redis_cause
from workers.redis_client import open_redis, parse_redis_url
from workers.store import Durability, EpochFenced, Store

log = logging.getLogger("chat.worker")

# the share of --redis-timeout a WAIT for replicas may take
WAIT_SHARE = 0.5

# deposed broker epochs remembered (a pair deposes one at a time: a few are plenty)
FENCED_EPOCHS = 16

# one envelope may not grow this process's memory without bound (ZMQ_MAXMSGSIZE)
MAX_MESSAGE_BYTES = 64 << 20

# dispatches joined into one round trip at most (`join_waiting`); the broker sends no more than
# the credit's worth of events anyway
JOIN_MAX = 64

_EVENTS, _POLLIN = int(zmq.EVENTS), int(zmq.POLLIN)

@dataclass(frozen=True, slots=True)
class WorkerConfig:
    backend: str
    redis_url: str
    prefix: str = "chat:"
    credit: int = 16
    heartbeat: float = 1.0
    liveness: int = 3
    redis_timeout: float = 1.0
    redis_ca: str | None = None  # the CA of a rediss:// server (default: the system's)
    # replicas that must have a nick claim or a departure before it is answered (WAIT);
    # None: 1 behind Sentinel, 0 (no WAIT) for a single Redis
    redis_wait_replicas: int | None = None
    breaker_cooldown: float = 1.0
    limits: ChatLimits = field(default_factory=ChatLimits)
    max_rooms: int = 50  # rooms one connection may be in
    curve: ClientKeys | None = None  # None: plain link
    history_ttl: int = 86_400  # seconds the history of an emptied room is kept


class Breaker:
    """Open for `cooldown` seconds after a Redis failure: fail fast meanwhile.

    Time comes in as a value (monotonic seconds). While open, `allows` says
    no and nothing extends the cooldown; once it has passed, the next
    dispatch goes through as a trial: a failure trips it again, a success
    leaves it closed.
    """

    def __init__(self, cooldown: float) -> None:
        self.cooldown = cooldown
        self.open_until = 0.0

    def allows(self, now: float) -> bool:
        return now >= self.open_until

    def trip(self, now: float) -> None:
        self.open_until = now + self.cooldown


class Handler:
    """Runs events through the chat, with the breaker and the retry list."""

    def __init__(self, chat: Chat, breaker: Breaker) -> None:
        self.chat = chat
        self.breaker = breaker
        self.reaps: list[GatewayLost] = []  # lost gateways still to clean up
        self.unknown_to = ""  # a broker that said it does not know us
        # broker epochs a script refused: their dispatches are dropped unread (by equality, not
        # order: a Redis that lost its data counts epochs from 1 again, and those must be served)
        self.fenced_epochs: deque[int] = deque(maxlen=FENCED_EPOCHS)
        # the last Heartbeat frame and its epoch: a broker heads every dispatch with the same bytes
        self._last_heartbeat: tuple[bytes | None, int] = (None, 0)
        self.sampled = False  # the dispatch being handled holds a sampled event (protocol.hops)

    @property
    def metrics(self) -> WorkerMetrics:
        return self.chat.metrics

    def frames(self, frames: list[bytes], now: float, tick: float, dispatches: int = 1) -> Done:
        """Decode and handle one message of the broker -> the Done to send: a dispatch
        [Heartbeat, key, event, key, event, ...] (`dispatches` of them joined: `join_waiting`), or a
        Heartbeat or Unknown alone.

        `now` is the wall clock (for message times), `tick` the monotonic one (for the breaker)."""
        epoch = self._control(frames[0]) if frames else 0
        items, refused = self._events(frames[1:])
        if (items or refused) and epoch in self.fenced_epochs:  # from a deposed broker: nobody waits for it
            return Done((), ())
        self.metrics.took(items, dispatches)
        fx = Effects()
        self.chat.store.epoch = epoch
        if not self.batch([*items, *self._due_reaps(tick)], fx, now, tick):
            return Done((), ())
        self.metrics.breaker(not self.breaker.allows(tick))
        return Done((*refused, *(event_key(item) for item in items)), fx.encoded())

    def _control(self, frame: bytes) -> int:
        """The first frame: a Heartbeat (-> its epoch, the dispatch's) or Unknown (-> 0)."""
        last, epoch = self._last_heartbeat
        if frame == last:  # the same bytes decode to the same Heartbeat: read it once
            return epoch
        try:
            msg = codec.decode(frame)
        except DecodeError as exc:
            self._malformed(f"a malformed frame: {exc}")
            return 0
        if isinstance(msg, Unknown):
            self.unknown_to = msg.broker
        elif isinstance(msg, Heartbeat):
            self._last_heartbeat = (frame, msg.epoch)
            return msg.epoch
        else:
            self._malformed(f"an unexpected {type(msg).__name__}")
        return 0

    def _events(self, frames: list[bytes]) -> tuple[list[WorkItem], list[tuple[str, int]]]:
        """[key, event, ...] -> (the events, the keys of those dropped: answered, never served).

        The broker checked the key's cid against the gateway that sent it, not the body's:
        an event whose body names another is a forgery (or a bug), and is not served."""
        items: list[WorkItem] = []
        refused: list[tuple[str, int]] = []
        if len(frames) % 2:
            self._malformed(f"a dispatch of {len(frames)} frames after its heartbeat (not pairs)")
        for key_frame, body in zip(frames[::2], frames[1::2], strict=False):
            try:
                key = codec.decode_key(key_frame)
            except DecodeError as exc:
                self._malformed(f"a malformed key: {exc}")
                continue
            self.sampled = self.sampled or is_sampled(key_frame)
            try:
                msg = codec.decode(body)
            except DecodeError as exc:
                self._malformed(f"a malformed event: {exc}")
                refused.append(key)
                continue
            if not isinstance(msg, (Connected, Lines, Disconnected, GatewayLost)) or event_key(msg) != key:
                self._malformed(f"an event whose body is not the one its key {key} names")
                refused.append(key)  # answered, so that the broker frees its connection's turn
                continue
            items.append(msg)
        return items, refused

    def _malformed(self, what: str) -> None:
        self.metrics.malformed.inc()
        log.warning("dropped %s from the broker", what)

    def batch(self, items: list[WorkItem], fx: Effects, now: float, tick: float) -> bool:
        """Handle events in one round trip to Redis; each event's effects after its Mark.
        -> False if the broker's epoch was fenced: nothing may be answered."""
        if not items:
            return True
        if not self.breaker.allows(tick):  # fail fast, and leave the cooldown as it is
            self.metrics.redis_failed(RedisCause.BREAKER_OPEN)
            for item in items:
                self._unserved(item, fx)
            return True
        try:
            effects = self.chat.handle_batch(items, now)
        except EpochFenced as exc:
            if self.chat.store.epoch not in self.fenced_epochs:
                self.fenced_epochs.append(self.chat.store.epoch)
            log.warning("dropped a dispatch of %d events: %s", len(items), exc)
            return False
        except redis.RedisError as exc:
            self.breaker.trip(tick)
            self.metrics.redis_failed(redis_cause(exc))
            log.warning("redis failed on a dispatch of %d events: %s", len(items), exc)
            for item in items:
                self._unserved(item, fx)
            return True
        except Exception:  # each event has its guard in the chat: this is a bug of the dispatch itself
            log.exception("failed to handle a dispatch of %d events: answering them all", len(items))
            self.metrics.internal_error(len(items))
            for item in items:
                fx.mark(*event_key(item))
                if isinstance(item, (Lines, Connected)):
                    fx.error(item.cid, INTERNAL_ERROR)
            return True
        for item, item_fx in zip(items, effects, strict=True):
            if item_fx.unserved:
                self._unserved(item, fx)
                continue
            fx.mark(*event_key(item))
            fx.items.extend(item_fx.items)
        return True

    def _unserved(self, item: WorkItem, fx: Effects) -> None:
        if isinstance(item, Lines):
            self.metrics.refused(RefusedCause.UNAVAILABLE, len(item.lines))
            fx.mark(*event_key(item))
            fx.error(item.cid, UNAVAILABLE)
        elif isinstance(item, GatewayLost):
            self.reaps.append(item)
        # connect, disconnect: no answer (no Mark), so the gateway sends it again

    def _due_reaps(self, tick: float) -> list[WorkItem]:
        if not self.reaps or not self.breaker.allows(tick):
            return []
        reaps, self.reaps = self.reaps, []
        return list(reaps)


def join_waiting(frames: list[bytes], waiting: Callable[[], list[bytes] | None],
                 limit: int = JOIN_MAX) -> tuple[list[bytes], int, list[bytes] | None]:
    """A dispatch, with the dispatches already waiting behind it under the same heartbeat (the same
    broker and epoch) joined to it, up to `limit` messages: their events are served in one round
    trip to Redis and answered by one Done, in the order they came. -> (the joined frames, how many
    dispatches they are, a message that was read but does not join: to be served next, in its turn).

    The broker has at most one event of a connection in flight, so joined events are of distinct
    connections (and were any not, each event is still served after the ones before it)."""
    if len(frames) < 2:  # a heartbeat or Unknown alone: nothing to serve with others
        return frames, 0, None
    joined, dispatches = frames, 1
    for _ in range(limit - 1):
        more = waiting()
        if more is None:
            break
        if more[0] != frames[0]:  # another broker or epoch, or a control message: served on its own
            return joined, dispatches, more
        if len(more) > 1:  # a heartbeat alone with the same bytes adds nothing
            if joined is frames:
                joined = list(frames)
            joined += more[1:]
            dispatches += 1
    return joined, dispatches, None


def durability(config: WorkerConfig) -> Durability | None:
    """How durable claims are made: WAIT for replicas behind Sentinel (or when told), a bit
    under the call's timeout so that the WAIT's answer comes before the socket gives up."""
    replicas = config.redis_wait_replicas
    if replicas is None:
        replicas = 1 if parse_redis_url(config.redis_url).kind == "sentinel" else 0
    if replicas == 0:
        return None
    return Durability(replicas, max(1, int(config.redis_timeout * 1000 * WAIT_SHARE)))


def worker_name() -> str:
    return f"w-{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(2)}"


class BrokerLink:
    """One broker's DEALER, under a fresh identity each time it is opened (a reconnect is
    a new worker to the broker); the identity names this process in its JSON log lines."""

    def __init__(self, ctx: zmq.Context[zmq.Socket[bytes]], config: WorkerConfig, endpoint: str) -> None:
        self.ctx, self.config, self.endpoint = ctx, config, endpoint
        self.sock = self._open()
        self.last_heard = self.last_sent = time.monotonic()

    def _open(self) -> zmq.Socket[bytes]:
        name = worker_name()
        set_log_instance(name)
        self.heartbeat = codec.encode(Heartbeat(name))
        sock = self.ctx.socket(zmq.DEALER)
        try:
            sock.setsockopt(zmq.LINGER, 0)
            sock.setsockopt(zmq.MAXMSGSIZE, MAX_MESSAGE_BYTES)  # a bigger frame drops the peer's link
            sock.setsockopt_string(zmq.IDENTITY, name)
            if self.config.curve:
                self.config.curve.apply(sock)
            sock.connect(self.endpoint)
            sock.send(codec.encode(Ready(self.config.credit)))
        except BaseException:
            sock.close()  # an open socket would hang the context's term()
            raise
        return sock

    def reopen(self) -> None:
        self.sock.close()
        self.sock = self._open()
        self.last_heard = self.last_sent = time.monotonic()

    def close(self) -> None:
        self.sock.close()

    def serve_one(self, handler: Handler) -> None:
        """Handle what the broker sent: a message, with the dispatches waiting behind it joined to
        it (`join_waiting`); answer on the same link."""
        frames = recv_frames(self.sock)
        for _ in range(JOIN_MAX):  # bounded: each round serves at least one message
            if frames is None:
                return
            frames, dispatches, rest = join_waiting(frames, self._waiting)
            self._serve(handler, frames, dispatches)
            frames = rest
        if frames is not None:
            self._serve(handler, frames, 1 if len(frames) > 1 else 0)

    def _waiting(self) -> list[bytes] | None:
        """The next message if one is waiting already (never blocks)."""
        if not int(self.sock.getsockopt(_EVENTS)) & _POLLIN:
            return None
        return recv_frames(self.sock)

    def _serve(self, handler: Handler, frames: list[bytes], dispatches: int) -> None:
        self.last_heard = time.monotonic()
        redis_before = handler.metrics.redis_spent
        done = handler.frames(frames, time.time(), self.last_heard, dispatches)
        if handler.sampled:  # timed up to its Done going out: the send is transit
            handler.sampled = False
            handler.metrics.sampled_dispatch(time.monotonic() - self.last_heard,
                                             handler.metrics.redis_spent - redis_before)
        if done.events or done.publish:
            send_frames(self.sock, codec.done_frames(done), block=True)
            self.last_sent = time.monotonic()
        if handler.unknown_to:
            log.warning("the broker %s does not know us: registering", handler.unknown_to)
            handler.unknown_to = ""
            self.sock.send(codec.encode(Ready(self.config.credit)))

    def keep_alive(self, now: float) -> bool:
        """Heartbeat when due -> False if the broker is silent too long (reopen the link)."""
        if now - self.last_heard > self.config.heartbeat * self.config.liveness:
            log.warning("broker %s silent for %.1fs: reconnecting", self.endpoint, now - self.last_heard)
            return False
        if now - self.last_sent >= self.config.heartbeat:
            self.sock.send(self.heartbeat)
            self.last_sent = now
        return True


def serve_brokers(links: list[BrokerLink], handler: Handler, config: WorkerConfig, stopping: Stopping) -> None:
    """Serve the brokers' links until one falls silent (it is reopened) or we are stopped."""
    poller = zmq.Poller()
    for link in links:
        poller.register(link.sock, zmq.POLLIN)
    metrics, flushed = handler.metrics, time.monotonic()
    while not stopping.requested:
        ready = dict(poller.poll(int((FLUSH_EVERY if metrics.pending else config.heartbeat) * 1000)))
        for link in links:
            if link.sock in ready:
                link.serve_one(handler)
        now = time.monotonic()
        if metrics.pending and (not ready or now - flushed >= FLUSH_EVERY):  # idle, or due
            metrics.flush()
            flushed = now
        silent = [link for link in links if not link.keep_alive(now)]
        for link in silent:
            link.reopen()
        if silent:
            return


def run_worker(config: WorkerConfig) -> None:
    """The body of one worker process."""
    stopping = Stopping().install()
    client = open_redis(config.redis_url, timeout=config.redis_timeout, ca_file=config.redis_ca)
    # under the pool's multiprocess mode, its values go to the pool's directory: buffered, written a few
    # times a second (serve_brokers), not several times a dispatch
    metrics = WorkerMetrics(buffered=True)
    store = Store(client, config.prefix, config.max_rooms, config.history_ttl, metrics.redis_observed,
                  durability=durability(config))
    handler = Handler(Chat(store, config.limits, metrics), Breaker(config.breaker_cooldown))
    ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    links: list[BrokerLink] = []
    try:
        for endpoint in config.backend.split(","):
            links.append(BrokerLink(ctx, config, endpoint.strip()))
        tune_gc()
        while not stopping.requested:
            serve_brokers(links, handler, config, stopping)
    finally:
        for link in links:
            link.close()
        ctx.term()
        store.close()
        client.close()
        metrics.flush()  # last: the totals of a clean stop are kept, whatever happened before
