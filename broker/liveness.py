"""Who is alive: peers heard from within `liveness` heartbeat intervals."""

from __future__ import annotations


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

    def __iter__(self):  # type: ignore[no-untyped-def]
        return iter(list(self._last))
