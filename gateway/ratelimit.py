"""A token bucket, as pure code: time comes in as a value.

`rate` tokens a second, at most `burst` saved up; a line costs one token.
A rate of 0 turns limiting off.
"""

from __future__ import annotations


class TokenBucket:
    __slots__ = ("_stamp", "_tokens", "burst", "rate")

    def __init__(self, rate: float, burst: int, now: float) -> None:
        self.rate = rate
        self.burst = max(burst, 1)
        self._tokens = float(self.burst)
        self._stamp = now

    def _refill(self, now: float) -> None:
        elapsed = max(0.0, now - self._stamp)
        self._tokens = min(float(self.burst), self._tokens + elapsed * self.rate)
        self._stamp = now

    def take(self, wanted: int, now: float) -> int:
        """Take up to `wanted` tokens -> how many were granted."""
        if self.rate <= 0:
            return wanted
        self._refill(now)
        granted = min(wanted, int(self._tokens))
        self._tokens -= granted
        return granted

    def delay(self, now: float) -> float:
        """Seconds until the next token."""
        if self.rate <= 0:
            return 0.0
        self._refill(now)
        return max(0.0, (1.0 - self._tokens) / self.rate)
