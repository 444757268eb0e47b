"""A token bucket, as pure code: time comes in as a value, plus what a read costs.

`rate` tokens a second, at most `burst` saved up. A line costs one token;
so does every other thing a client makes the gateway do (`read_cost`): a
read, its bytes, empty and bad lines. `charge` takes such costs even past
zero: the debt is what the reader then waits off before it reads again, so
whatever a client sends, it gets no more than `rate` tokens' worth of the
gateway's work a second. A rate of 0 turns limiting off.
"""

from __future__ import annotations

BYTES_PER_TOKEN = 1024  # a full line's worth of bytes costs about what a line does
READ_BYTES = 64  # every read costs at least as much as this many bytes (a system call, a wake-up)


def read_cost(newlines: int, nbytes: int) -> float:
    """Tokens one read costs: each line it ends (empty, bad or good) and its bytes."""
    return newlines + (nbytes + READ_BYTES) / BYTES_PER_TOKEN


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
        granted = max(0, min(wanted, int(self._tokens)))
        self._tokens -= granted
        return granted

    def charge(self, cost: float, now: float) -> None:
        """Take `cost` tokens whether or not there are that many: the rest is owed."""
        if self.rate <= 0:
            return
        self._refill(now)
        self._tokens -= cost

    def delay(self, now: float) -> float:
        """Seconds until the next token."""
        if self.rate <= 0:
            return 0.0
        self._refill(now)
        return max(0.0, (1.0 - self._tokens) / self.rate)

    def debt_delay(self, now: float) -> float:
        """Seconds until what was charged past zero is paid off."""
        if self.rate <= 0:
            return 0.0
        self._refill(now)
        return max(0.0, -self._tokens / self.rate)
