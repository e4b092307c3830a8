"""Request-rate limits kept in the API process: per key, and failed key attempts per address.

Both are in memory, per API process (several replicas each enforce their own share), which is
what keeps them off the database on every request. Caps on queued jobs are different: they are
counted in the queue itself, exactly (see `JobQueue.enqueue`).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

Clock = Callable[[], float]


@dataclass
class _Bucket:
    tokens: float
    at: float


class RateLimiter:
    """A token bucket per key: `rate` requests per minute, and bursts up to a minute's worth
    (at least one), so a client within its rate is never refused for bunching requests."""

    def __init__(self, clock: Clock = time.monotonic) -> None:
        self.clock = clock
        self._buckets: dict[str, _Bucket] = {}
        self._lock = threading.Lock()

    def take(self, key: str, per_minute: float) -> float | None:
        """Spend one request; None when allowed, else the seconds until one is."""
        now, capacity, per_second = self.clock(), max(per_minute, 1.0), per_minute / 60
        with self._lock:
            bucket = self._buckets.setdefault(key, _Bucket(capacity, now))
            bucket.tokens = min(capacity, bucket.tokens + (now - bucket.at) * per_second)
            bucket.at = now
            if bucket.tokens >= 1:
                bucket.tokens -= 1
                return None
            return (1 - bucket.tokens) / per_second


class FailureThrottle:
    """Counts failed key attempts per client address in a sliding window; an address past
    `limit` failures is refused until its oldest failure leaves the window. Bounded: addresses
    with nothing left in the window are forgotten."""

    #: Addresses remembered before a sweep of the ones whose failures are all old.
    SWEEP_AT = 10_000

    def __init__(self, limit: int, window_s: float = 60.0, clock: Clock = time.monotonic) -> None:
        self.limit = limit
        self.window_s = window_s
        self.clock = clock
        self._failures: dict[str, list[float]] = {}
        self._lock = threading.Lock()

    def blocked(self, address: str) -> float | None:
        """None when `address` may try a key, else the seconds until it may."""
        if not self.limit:
            return None
        with self._lock:
            recent = self._recent(address, self.clock())
            if len(recent) < self.limit:
                return None
            return recent[0] + self.window_s - self.clock()

    def failed(self, address: str) -> None:
        if not self.limit:
            return
        now = self.clock()
        with self._lock:
            self._recent(address, now).append(now)
            if len(self._failures) > self.SWEEP_AT:
                for stale in [a for a, t in self._failures.items() if t[-1] <= now - self.window_s]:
                    del self._failures[stale]

    def _recent(self, address: str, now: float) -> list[float]:
        times = [t for t in self._failures.get(address, []) if t > now - self.window_s]
        self._failures[address] = times
        return times
