"""A broker of a pair keeping its lease: when to renew or acquire it, and when to step down.

Both brokers of a pair bind their sockets and take Ready and heartbeats from
every peer, but only the one holding the lease in Redis (broker.lease) serves.
It checks its lease (broker.role, its own clock) before serving anything, so
a broker that was frozen past its lease does nothing when it wakes but step
down. The standby tries to acquire every heartbeat. When the lease it found
held is due to end before its next heartbeat, it tries again right then
(`next_take`), so a takeover comes about `ttl` after the dead broker's last
renewal. What stepping down and activating do is the broker's (`Member`).
"""

from __future__ import annotations

from typing import Protocol

from broker.lease import Lease
from broker.role import AlwaysActive, Role


class Member(Protocol):
    """The broker as the keeper sees it: its name now, and what it does on a change."""

    @property
    def name(self) -> str: ...

    def step_down(self, now: float, why: str) -> None: ...

    def activate(self, now: float) -> None: ...


class LeaseKeeper:
    """The lease (None: a lone broker, always active) and the role it gives."""

    def __init__(self, lease: Lease | None, heartbeat: float, liveness: int) -> None:
        self.lease = lease
        self.heartbeat = heartbeat
        self.ttl = heartbeat * liveness
        self.role: Role | AlwaysActive = Role(self.ttl) if lease else AlwaysActive()
        self.next_take = float("inf")  # when to try for the lease between heartbeats

    def keep(self, member: Member, now: float) -> None:
        """Renew or acquire the lease (once a heartbeat); step down when it is lost or its
        margin ran out (also after a freeze: the clock tells, before anything is served)."""
        if self.lease is None or not isinstance(self.role, Role):
            return
        if self.role.expired(now):
            member.step_down(now, "the lease could not be renewed in time")
        self.next_take = float("inf")
        epoch = self.lease.take(member.name)
        if epoch is None:  # Redis did not answer: our clock decides, at the next look
            return
        if epoch == 0:
            if self.role.epoch:
                member.step_down(now, "another broker holds the lease")
            if self.lease.ends_in < self.heartbeat:  # be there when it ends
                self.next_take = now + self.lease.ends_in + 0.001
            return
        if self.role.epoch and epoch != self.role.epoch:  # lost and taken again (Redis lost its data):
            member.step_down(now, f"the lease came back under epoch {epoch}")  # what we sent is fenced
            return
        if self.role.renewed(epoch, now):
            member.activate(now)

    def close(self, name: str) -> None:
        """Give the lease up if we hold it (a clean stop), and close the Redis client."""
        if self.lease is not None:
            if self.role.epoch:
                self.lease.release(name)
            self.lease.close()
