"""Whether a broker of a pair may serve: its lease as seen from its own clock. Pure:
time is a value (monotonic seconds).

The active broker renews its lease in Redis every heartbeat; the lease lives
`ttl` seconds after each renewal. A renewal counts from the moment it was
*asked for* (the lease cannot start earlier than that), and the broker serves
only while less than `ttl - margin` has passed since its last good renewal: it
stops before its lease can expire, so before anyone else can take it. A lone
broker (no Redis lease) is always active, under epoch 0.
"""

from __future__ import annotations


def step_down_margin(ttl: float) -> float:
    """A third of the lease: one heartbeat at liveness 3 (two renewals may fail in a row)."""
    return ttl / 3


class Role:
    def __init__(self, ttl: float, margin: float | None = None) -> None:
        self.ttl = ttl
        self.margin = step_down_margin(ttl) if margin is None else margin
        if not 0 < self.margin < ttl:
            raise ValueError("the step-down margin must be between 0 and the lease's ttl")
        self.epoch = 0  # 0: standby
        self._asked = float("-inf")  # when the last good renewal was asked for

    def renewed(self, epoch: int, asked: float) -> bool:
        """The lease is ours under `epoch` (acquired or renewed by a request sent at `asked`)
        -> True if this makes us active (we were not, or under another epoch)."""
        if epoch <= 0:
            raise ValueError("an epoch starts at 1")
        fresh = epoch != self.epoch
        self.epoch = epoch
        self._asked = max(self._asked, asked) if not fresh else asked
        return fresh

    def lost(self) -> bool:
        """Redis said the lease is not ours -> True if we were active."""
        was, self.epoch = self.epoch, 0
        self._asked = float("-inf")
        return was != 0

    def active(self, now: float) -> bool:
        return self.epoch != 0 and now - self._asked < self.ttl - self.margin

    def expired(self, now: float) -> bool:
        """Active by the last renewal, but its margin has run out: step down now."""
        return self.epoch != 0 and not self.active(now)


class AlwaysActive:
    """A lone broker: active from the start, under epoch 0, for ever."""

    epoch = 0

    def active(self, now: float) -> bool:
        return True

    def expired(self, now: float) -> bool:
        return False
