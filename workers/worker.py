"""One worker process: take events from the broker, run the chat, reply.

The worker is a Paranoid Pirate worker (ZeroMQ guide, chapter 4): a DEALER
connected to the broker's backend that says `Ready(credit)` once, then gets
up to `credit` events at a time. Each message from the broker is a list of
encoded events; the worker handles them in order and answers with one
`Done` that names them and carries one `Batch` per gateway. Replies travel
on the same socket as the events, never on a separate PUB: finishing an
event and publishing what it caused are then one message, which is what
lets the broker keep a connection's events in order across workers.

Heartbeats go both ways; a broker silent for `liveness` intervals is taken
for dead: the worker drops its socket and connects again (a broker restart
costs a reconnect, not a worker restart).
"""

from __future__ import annotations

import logging
import os
import secrets
import socket
import time
from dataclasses import dataclass

import redis
import zmq

from protocol import codec
from protocol.errors import DecodeError
from protocol.messages import (
    Connected,
    Disconnected,
    Done,
    GatewayLost,
    Heartbeat,
    Lines,
    Ready,
    WorkItem,
    event_key,
)
from stack.process import Stopping
from workers.effects import Effects
from workers.logic import Chat
from workers.store import Store

log = logging.getLogger("chat.worker")

UNAVAILABLE = "service temporarily unavailable"


@dataclass(frozen=True, slots=True)
class WorkerConfig:
    backend: str
    redis_url: str
    prefix: str = "chat:"
    credit: int = 16
    heartbeat: float = 1.0
    liveness: int = 3


def worker_name() -> str:
    return f"w-{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(2)}"


def handle_frames(chat: Chat, frames: list[bytes], now: float) -> tuple[Done, str]:
    """Decode and handle one dispatch -> (the Done to send, the broker's name if it beat)."""
    fx = Effects()
    done: list[tuple[str, int]] = []
    heard = ""
    for frame in frames:
        try:
            msg = codec.decode(frame)
        except DecodeError as exc:
            log.warning("dropped a malformed frame from the broker: %s", exc)
            continue
        if isinstance(msg, Heartbeat):
            heard = msg.sender
        elif isinstance(msg, (Connected, Lines, Disconnected, GatewayLost)):
            key = event_key(msg)
            fx.mark(*key)
            _handle_one(chat, msg, fx, now)
            done.append(key)
        else:
            log.warning("dropped an unexpected %s from the broker", type(msg).__name__)
    return Done(tuple(done), fx.encoded()), heard


def _handle_one(chat: Chat, item: WorkItem, fx: Effects, now: float) -> None:
    """Handle one event; whatever goes wrong stays with this event and its sender."""
    try:
        fx.items.extend(chat.handle(item, now).items)
    except redis.RedisError as exc:
        log.warning("redis failed on %s: %s", event_key(item), exc)
        _tell_sender(item, fx, UNAVAILABLE)
    except Exception:  # a bug must cost one event, not the worker: log it whole
        log.exception("failed to handle %s", event_key(item))
        _tell_sender(item, fx, "internal error: the line was not handled")


def _tell_sender(item: WorkItem, fx: Effects, text: str) -> None:
    if isinstance(item, (Connected, Lines)):
        fx.error(item.cid, text)


def _open_backend(ctx: zmq.Context[zmq.Socket[bytes]], config: WorkerConfig) -> zmq.Socket[bytes]:
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt_string(zmq.IDENTITY, worker_name())
    sock.connect(config.backend)
    sock.send(codec.encode(Ready(config.credit)))
    return sock


def serve_broker(
    sock: zmq.Socket[bytes], chat: Chat, config: WorkerConfig, stopping: Stopping
) -> None:
    """Serve one broker connection until it falls silent or we are stopped."""
    heartbeat = codec.encode(Heartbeat(sock.getsockopt_string(zmq.IDENTITY)))
    poller = zmq.Poller()
    poller.register(sock, zmq.POLLIN)
    last_heard = last_sent = time.monotonic()
    broker = ""
    while not stopping.requested:
        if poller.poll(config.heartbeat * 1000):
            frames = sock.recv_multipart()
            last_heard = time.monotonic()
            done, sender = handle_frames(chat, frames, time.time())
            if done.events:
                sock.send(codec.encode(done))
                last_sent = time.monotonic()
            if sender and broker and sender != broker:
                log.warning("a new broker (%s): reconnecting", sender)
                return
            broker = sender or broker
        now = time.monotonic()
        if now - last_heard > config.heartbeat * config.liveness:
            log.warning("broker silent for %.1fs: reconnecting", now - last_heard)
            return
        if now - last_sent >= config.heartbeat:
            sock.send(heartbeat)
            last_sent = now


def run_worker(config: WorkerConfig) -> None:
    """The body of one worker process."""
    stopping = Stopping()
    stopping.install()
    client = redis.Redis.from_url(
        config.redis_url, decode_responses=True, socket_timeout=2.0, socket_connect_timeout=2.0
    )
    chat = Chat(Store(client, config.prefix))
    ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    try:
        while not stopping.requested:
            sock = _open_backend(ctx, config)
            try:
                serve_broker(sock, chat, config, stopping)
            finally:
                sock.close()
    finally:
        ctx.term()
        client.close()
