"""One worker process: take events from the broker, run the chat, reply.

The worker is a Paranoid Pirate worker (ZeroMQ guide, chapter 4): a DEALER
connected to the broker's backend that says `Ready(credit)` once, then gets
up to `credit` events at a time. Each message from the broker is a list of
events, each a key and a body (protocol.codec); the worker handles them in
order (workers.handler) and answers with one `Done` that names them and
carries one `Batch` per gateway. Messages that wait behind one another (the
worker was busy) are served together: one round trip to Redis, one Done
(`join_waiting`). Replies travel on the same socket as the events, never on
a separate PUB: finishing an event and publishing what it caused are then
one message, which is what lets the broker keep a connection's events in
order across workers.

Heartbeats go both ways; a broker silent for `liveness` intervals is taken
for gone: the worker connects again. `--backend` may name several brokers
(a pair, comma-separated): the worker keeps one DEALER per broker, says Ready
and heartbeats to each, and serves whichever dispatches (only the active one
does). Every dispatch starts with its broker's heartbeat, which carries the
broker's epoch: the scripts run under it, and a deposed broker's dispatches
are fenced (workers.handler). A broker that does not know the worker
(it restarted, and ZeroMQ reconnected us to it) says `Unknown`: the worker
registers with `Ready` again. When Redis fails, a breaker fails the events
behind the failure fast for a moment (workers.handler).
"""

from __future__ import annotations

import logging
import os
import secrets
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import zmq

from protocol import codec
from protocol.messages import Heartbeat, Ready
from stack.curve import ClientKeys
from stack.frames import recv_frames, send_frames
from stack.process import Stopping, set_log_instance, tune_gc
from workers.handler import Breaker, Handler
from workers.logic import Chat, ChatLimits
from workers.metrics import FLUSH_EVERY, WorkerMetrics
from workers.redis_client import open_redis, parse_redis_url
from workers.store import Durability, Store

log = logging.getLogger("chat.worker")

# the share of --redis-timeout a WAIT for replicas may take
WAIT_SHARE = 0.5

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
