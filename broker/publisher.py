"""pub-out: which subscriptions count, how each topic's messages are numbered,
and what a full pipe costs.

    pub-out   XPUB    -> gateways' SUBs:    [topic "<gateway>:", seq, Batch]

`seq` numbers the messages of each topic (8 bytes, big-endian, from 1 at
each broker start and each activation), after the broker's epoch (8 bytes,
big-endian; 0 for a lone broker): a gateway that sees a gap knows it lost
something, and one that has heard a higher epoch ignores a deposed broker.
A message is numbered only when someone subscribes to its topic, and never
for a fenced gateway: a gap is a loss.

pub-out is XPUB_NODROP and XPUB_MANUAL: only subscriptions to one gateway
topic (`<name>:`) are accepted, so one full pipe fails only its own topic;
accepted ones are passed on to pub-in (other publishers).
A batch for a gateway that is alive (heard on the frontend) but whose
subscription has not reached us yet (just after a broker restart, the
gateway's SUB reconnects a moment after its DEALER) is held, in order and
bounded, and sent when the subscription comes: otherwise the deliveries of
an event whose origin already got its Mark would be lost. For one liveness
window after the broker starts or takes over, a batch for a gateway not heard
yet is held too (the event of one gateway may be answered before another's
first heartbeat arrives); after it, what is held for gateways that were never
heard is dropped and counted.
A send that fails at a subscriber's high-water mark is counted by cause,
goes to the topic's other subscribers, if any, and the gateway that does
not read is declared lost at once (fenced): it costs only itself.
"""

from __future__ import annotations

import time
from collections import Counter, deque
from collections.abc import Callable

import zmq

from broker.liveness import Fence, Liveness
from broker.metrics import BrokerMetrics, Drop
from protocol.messages import Done, is_gateway_topic, topic_of
from stack.frames import send_frames

MAX_TOPICS = 10_000  # pub-out topics subscribed at once: far more gateways than anyone runs
MAX_HELD = 10_000  # batches held for one live gateway until its subscription arrives


class PubOut:
    """The broker's side of pub-out. `drop` counts and logs a drop; `lose` declares a
    gateway lost (the broker frees its connections and fences it)."""

    def __init__(self, sock: zmq.Socket[bytes], pub_in: zmq.Socket[bytes], metrics: BrokerMetrics,
                 drop: Callable[[Drop, str], None], lose: Callable[[bytes, str], None]) -> None:
        self.sock = sock
        self.pub_in = pub_in
        self.metrics = metrics
        self._drop = drop
        self._lose_gateway = lose
        self._subscribers: Counter[bytes] = Counter()  # per pub-out topic: subscriptions we accepted
        self.epoch = bytes(8)  # the broker's epoch, 8 bytes big-endian: the first half of each seq frame
        self.fenced: Fence  # set by `restart`, which the broker calls before anything is sent
        self.gateways: Liveness
        self._out_seq: dict[bytes, int] = {}  # per pub-out topic: the last seq sent
        self._held: dict[bytes, deque[tuple[bytes, str]]] = {}  # per topic: batches waiting for its subscription
        self._open_until = 0.0  # time.monotonic(): until then, batches are held for gateways not yet heard too

    def restart(self, fenced: Fence, gateways: Liveness) -> None:
        """Number every topic afresh (a new broker to the peers), judging gateways by these."""
        self.fenced = fenced
        self.gateways = gateways
        self._out_seq = {}
        self._held = {}

    def expect_gateways(self, until: float) -> None:
        """Until `until`, hold batches for gateways not heard yet as for live ones: a broker that
        just started (or took over) has not heard every gateway, and the event of one may be
        answered before another one's first heartbeat or subscription comes."""
        self._open_until = until

    def sweep_held(self, now: float) -> None:
        """Once gateways had their time to be heard: drop what is held for those that were not."""
        if now < self._open_until:
            return
        for topic in [t for t in self._held if t[:-1] not in self.gateways]:
            for _ in self._held.pop(topic):
                self.metrics.drop(Drop.NO_SUBSCRIBER)

    def forget(self, topic: bytes) -> None:
        """A lost gateway's topic: numbered from 1 again (it re-joins under a new name)."""
        self._out_seq.pop(topic, None)
        for _ in self._held.pop(topic, ()):
            self.metrics.drop(Drop.NO_SUBSCRIBER)

    def publish(self, done: Done) -> None:
        for gateway, batch in done.publish:
            self.send(topic_of(gateway), batch, "pub-out: high-water mark")

    def send(self, topic: bytes, batch: bytes, where: str) -> None:
        name = topic[:-1]
        if name in self.fenced:
            self.metrics.drop(Drop.TO_FENCED_GATEWAY)
            return
        if topic not in self._subscribers:  # numbered only when someone can get it: a gap is a loss
            self._hold(topic, name, batch, where)
            return
        seq = self._out_seq.get(topic, 0) + 1
        frames = [topic, self.epoch + seq.to_bytes(8, "big"), batch]
        try:
            send_frames(self.sock, frames)
        except zmq.Again:  # a subscriber of this topic does not read: it alone loses
            self._drop(Drop.PUB_OUT_FULL, where)
            self._send_lossy(frames)
            if name in self.gateways:
                self._lose_gateway(name, "it does not read pub-out (its pipe is full)")
                return
        self._out_seq[topic] = seq
        self.metrics.published += 1

    def _hold(self, topic: bytes, name: bytes, batch: bytes, where: str) -> None:
        """Keep a live gateway's batch until its subscription arrives (bounded); drop others',
        except while gateways may not have been heard yet (`expect_gateways`)."""
        held = self._held.get(topic)
        expected = name in self.gateways or time.monotonic() < self._open_until
        if not expected or (held is not None and len(held) >= MAX_HELD) or (
                held is None and len(self._held) >= MAX_TOPICS):
            self.metrics.drop(Drop.NO_SUBSCRIBER)
            return
        if held is None:
            held = self._held[topic] = deque()
        held.append((batch, where))

    def _release(self, topic: bytes) -> None:
        """The topic's subscription came: send what was held for it, in order."""
        for batch, where in self._held.pop(topic, ()):
            self.send(topic, batch, where)

    def _send_lossy(self, frames: list[bytes]) -> None:
        """Send to the topic's subscribers that have room; the full ones drop it."""
        self.sock.setsockopt(zmq.XPUB_NODROP, 0)
        try:
            self.sock.send_multipart(frames, zmq.NOBLOCK)
        finally:
            self.sock.setsockopt(zmq.XPUB_NODROP, 1)

    def on_subscription(self, frames: list[bytes], active: bool = True) -> None:
        """Accept a subscription to one gateway topic only: an empty or odd prefix
        would match others' topics, and its full pipe would fail their sends. What was held for
        the topic goes out now if we are `active`; a broker that is not any more (it woke from a
        freeze to find its lease gone) drops it, counted: a gateway that got it after the new
        active broker's messages would take it for a deposed broker's and re-instance."""
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
        self.sock.setsockopt(zmq.SUBSCRIBE if subscribe else zmq.UNSUBSCRIBE, topic)
        self._subscribers[topic] += 1 if subscribe else -1
        if self._subscribers[topic] <= 0:
            del self._subscribers[topic]
        self.pub_in.send_multipart(frames)
        if subscribe and topic in self._held:
            if active:
                self._release(topic)
            else:
                for _ in self._held.pop(topic):
                    self.metrics.drop(Drop.NOT_ACTIVE)
