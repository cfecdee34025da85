"""Per-token rate limit: GCRA (a token bucket kept as one number per token).

Each token has a *theoretical arrival time* (TAT). A request at ``now`` moves it to
``max(TAT, now) + interval`` (``interval`` = 60 s / requests per minute) and is admitted
while the new TAT is at most ``burst * interval`` ahead of ``now``; otherwise it is
refused and may retry after the excess. That is a bucket of ``burst`` requests refilled
at the per-minute rate, stored as one float.

Where the TAT lives:

- the broker's Redis when ``SHIPWAY_BROKER_URL`` is ``redis://``/``rediss://``: one key
  per token, updated by a Lua script (atomic, Redis' own clock), so every API process
  shares the limit;
- otherwise this process' memory: with N API processes a token may send up to N times
  the limit. If Redis does not answer, the process falls back to its own bucket (a rate
  limit never turns a Redis outage into refused requests).
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

log = logging.getLogger(__name__)

# KEYS[1]: the token's key; ARGV: interval, limit (burst * interval), both in seconds.
# Returns "0" when admitted, else the seconds to wait.
_GCRA = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local interval = tonumber(ARGV[1])
local limit = tonumber(ARGV[2])
local tat = tonumber(redis.call('GET', KEYS[1]) or '0')
if tat < now then tat = now end
local new = tat + interval
local wait = new - now - limit
if wait > 0 then return tostring(wait) end
redis.call('SET', KEYS[1], tostring(new), 'PX', math.ceil((new - now) * 1000) + 1000)
return '0'
"""
KEY_PREFIX = "shipway:ratelimit:"


@dataclass(frozen=True)
class Limit:
    """``per_minute`` requests a minute evenly, ``burst`` at once."""

    per_minute: int
    burst: int

    @property
    def interval(self) -> float:
        return 60.0 / self.per_minute

    @property
    def tolerance(self) -> float:
        return self.burst * self.interval


class LocalLimiter:
    """The GCRA in this process' memory (thread-safe)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._tat: dict[str, float] = {}

    def wait(self, key: str, limit: Limit, now: float | None = None) -> float:
        """0 if a request of ``key`` is admitted now (and counted), else seconds to wait."""
        now = time.monotonic() if now is None else now
        with self._lock:
            new = max(self._tat.get(key, now), now) + limit.interval
            excess = new - now - limit.tolerance
            if excess > 0:
                return excess
            self._tat[key] = new
            if len(self._tat) > 10_000:  # forget tokens whose bucket is full again
                self._tat = {k: v for k, v in self._tat.items() if v > now}
            return 0.0


class RedisLimiter:
    """The GCRA in Redis, shared by every API process; falls back to ``local``."""

    def __init__(self, url: str, local: LocalLimiter) -> None:
        import redis

        self._client: Any = redis.Redis.from_url(
            url, socket_timeout=0.25, socket_connect_timeout=0.25
        )
        self._script = self._client.register_script(_GCRA)
        self._local = local
        self._warned_at = 0.0

    def wait(self, key: str, limit: Limit) -> float:
        try:
            answer = self._script(keys=[KEY_PREFIX + key], args=[limit.interval, limit.tolerance])
            return max(0.0, float(answer))
        except Exception as error:  # redis down or slow: limit per process meanwhile
            if time.monotonic() - self._warned_at > 60:
                self._warned_at = time.monotonic()
                log.warning("rate limit: Redis unavailable (%s); counting per process", error)
            return self._local.wait(key, limit)


_local = LocalLimiter()


@lru_cache(maxsize=4)
def _redis_limiter(url: str) -> RedisLimiter:
    return RedisLimiter(url, _local)


def limiter_for(broker_url: str) -> LocalLimiter | RedisLimiter:
    """Redis when the broker is Redis, else this process' memory."""
    if broker_url.startswith(("redis://", "rediss://")):
        return _redis_limiter(broker_url)
    return _local


def seconds_to_wait(*, key: str, per_minute: int, burst: int, broker_url: str) -> float:
    """Count one request of ``key``: 0 when admitted, else the seconds until one would be."""
    if per_minute <= 0:
        return 0.0
    return limiter_for(broker_url).wait(key, Limit(per_minute=per_minute, burst=burst))
