"""The lease of a broker pair, in Redis: who is active, and under which epoch.

    <prefix>broker:lease   the active broker's name, PX ttl (renewed every heartbeat)
    <prefix>broker:epoch   the fencing number: INCR on every acquisition, never reused

One script acquires or renews: the holder renews (and learns the epoch); anyone
else gets the lease only once it has expired, and then always under a new epoch.
A broker that stepped down takes a new name, so it can never renew the lease of
its earlier self: it waits for that one to expire and acquires a new epoch. The
workers' scripts refuse work under any epoch but the current one (workers.scripts).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import redis

from workers.redis_client import open_redis

log = logging.getLogger("chat.broker")

_TAKE = """
local lease, epoch, name, ttl = KEYS[1], KEYS[2], ARGV[1], ARGV[2]
local holder = redis.call('GET', lease)
if holder == name then
  redis.call('PEXPIRE', lease, ttl)
  return {tonumber(redis.call('GET', epoch) or '0'), 0}
end
if holder then return {0, redis.call('PTTL', lease)} end
local n = redis.call('INCR', epoch)
redis.call('SET', lease, name, 'PX', ttl)
return {n, 0}
"""

_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


@dataclass(frozen=True, slots=True)
class LeaseConfig:
    redis_url: str
    prefix: str = "chat:"
    redis_ca: str | None = None


class Lease:
    """The Redis side: `take` acquires or renews -> the epoch, 0 if another holds it,
    None if Redis did not answer (then the broker's clock decides: see broker.role)."""

    def __init__(self, config: LeaseConfig, ttl: float, timeout: float) -> None:
        self._client = open_redis(config.redis_url, timeout=timeout, ca_file=config.redis_ca)
        self._keys = (f"{config.prefix}broker:lease", f"{config.prefix}broker:epoch")
        self._ttl_ms = max(1, int(ttl * 1000))
        self._take = self._client.register_script(_TAKE)
        self._release = self._client.register_script(_RELEASE)
        self._failing = False
        self.ends_in = 0.0  # after a `take` that found another holder: seconds until its lease ends

    def take(self, name: str) -> int | None:
        try:
            epoch, pttl = (int(n) for n in self._take(keys=self._keys, args=[name, self._ttl_ms]))
        except (redis.RedisError, ValueError, TypeError) as exc:
            if not self._failing:
                log.warning("cannot reach Redis for the broker lease: %s", exc)
            self._failing = True
            return None
        if self._failing:
            log.warning("Redis answers the broker lease again")
        self._failing = False
        self.ends_in = max(0.0, pttl / 1000)
        return epoch

    def release(self, name: str) -> None:
        """Give the lease up at once (a clean stop): the standby need not wait for it to expire."""
        try:
            self._release(keys=self._keys[:1], args=[name])
        except redis.RedisError as exc:
            log.warning("could not release the broker lease: %s", exc)

    def close(self) -> None:
        self._client.close()
