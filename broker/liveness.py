"""Who is alive: peers heard from within `liveness` heartbeat intervals; whether
our own link looks cut; which gateway instances were fenced. Pure: time is a value."""

from __future__ import annotations

from collections import OrderedDict


class Liveness:
    def __init__(self, interval: float, liveness: int) -> None:
        self.timeout = interval * liveness
        self._last: dict[bytes, float] = {}

    def heard(self, peer: bytes, now: float) -> bool:
        """Record a sign of life -> True if the peer is new."""
        new = peer not in self._last
        self._last[peer] = now
        return new

    def forget(self, peer: bytes) -> None:
        self._last.pop(peer, None)

    def expired(self, now: float) -> list[bytes]:
        """Peers silent for too long; they are forgotten."""
        dead = [p for p, t in self._last.items() if now - t > self.timeout]
        for peer in dead:
            del self._last[peer]
        return dead

    def __contains__(self, peer: bytes) -> bool:
        return peer in self._last

    def __len__(self) -> int:
        return len(self._last)

    def __iter__(self):  # type: ignore[no-untyped-def]
        return iter(list(self._last))

    def grace(self, now: float) -> None:
        """Give every peer a fresh window: after a silence of our own, theirs proves nothing."""
        for peer in self._last:
            self._last[peer] = now


class LinkWatch:
    """Whether the broker's own link looks cut: no peer at all heard within half the window.

    A broker that loses every peer at once suspects itself before it reaps
    anyone: `may_reap` is False while nobody was heard within `timeout / 2`.
    Half, not all of it: when the link is cut, the first peer to expire was
    last heard up to a heartbeat before the last one, so a whole window would
    reap it a moment before the silence is noticed;
    `heard` returns how long the silence lasted when a peer ends one (then
    the silent peers get a fresh window: see `Liveness.grace`).
    """

    def __init__(self, timeout: float, now: float) -> None:
        self.timeout = timeout
        self.quiet = timeout / 2
        self._last = now
        self._silent_since: float | None = None

    def heard(self, now: float) -> float | None:
        """A peer spoke -> the length of the silence it ends, if there was one."""
        ended = None if self._silent_since is None else now - self._silent_since
        self._silent_since = None
        self._last = now
        return ended

    def may_reap(self, now: float) -> bool:
        """-> False (and the silence starts, once) when nobody was heard within half the window."""
        if now - self._last <= self.quiet:
            return True
        if self._silent_since is None:
            self._silent_since = self._last
        return False

    @property
    def silent(self) -> bool:
        return self._silent_since is not None

    @property
    def last_heard(self) -> float:
        return self._last


class Fence:
    """Gateway instances declared lost: bounded, and told so at most once per `interval`."""

    def __init__(self, interval: float, capacity: int = 10_000) -> None:
        self.interval = interval
        self.capacity = capacity
        self._told: OrderedDict[bytes, float] = OrderedDict()  # oldest first; last time told

    def add(self, peer: bytes) -> None:
        if peer in self._told:
            return
        if len(self._told) >= self.capacity:
            self._told.popitem(last=False)
        self._told[peer] = float("-inf")

    def __contains__(self, peer: bytes) -> bool:
        return peer in self._told

    def __len__(self) -> int:
        return len(self._told)

    def tell(self, peer: bytes, now: float) -> bool:
        """-> True if the fenced `peer` should be told now (rate-limited)."""
        last = self._told.get(peer)
        if last is None or now - last < self.interval:
            return False
        self._told[peer] = now
        return True
