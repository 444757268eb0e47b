"""Handling one message of the broker: decode it, run its events through the chat, answer.

A message is a dispatch [Heartbeat, key, event, key, event, ...] (or a Heartbeat or
`Unknown` alone); `Handler.frames` turns it into the one `Done` that answers it. The
dispatch's heartbeat carries its broker's epoch: the scripts run under it, and when one
refuses it (`FENCED`: that broker was deposed) the dispatch is left unanswered (no Mark:
its gateways send it again to the new broker) and later dispatches under that epoch are
dropped unread. An event whose key and body disagree, or that does not decode, is
answered and not served; an `Unknown` is noted (`unknown_to`) for the link to register again.

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
from collections import deque

import redis

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
    Unknown,
    WorkItem,
    event_key,
)
from workers.effects import Effects
from workers.logic import INTERNAL_ERROR, UNAVAILABLE, Chat
from workers.metrics import RedisCause, RefusedCause, WorkerMetrics, redis_cause
from workers.store import EpochFenced

log = logging.getLogger("chat.worker")

# deposed broker epochs remembered (a pair deposes one at a time: a few are plenty)
FENCED_EPOCHS = 16


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
        [Heartbeat, key, event, key, event, ...] (`dispatches` of them joined: workers.worker `join_waiting`), or a
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
