"""Token-bucket rate limiting, in process: each worker process and each replica limits on its own."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

MAX_BUCKETS = 100_000


class RateLimiter:
    """``per_minute`` tokens refill continuously into a bucket of ``burst`` (default: ``per_minute``) per key;
    each request takes one. ``per_minute=0`` disables the limiter: everything is allowed.

    Memory is bounded: past ``max_buckets`` keys, buckets that have refilled completely are forgotten (they
    behave exactly like new ones), then the least recently used ones down to 90 % of the bound. Forgetting a
    partly drained bucket refills it early; that only happens when more than ``max_buckets`` keys were used
    within one refill period, and keeps a flood of distinct keys from growing memory without limit."""

    def __init__(
        self,
        *,
        per_minute: int,
        burst: int | None = None,
        clock: Callable[[], float] = time.monotonic,
        max_buckets: int = MAX_BUCKETS,
    ) -> None:
        if per_minute < 0 or (burst is not None and burst < 1) or max_buckets < 1:
            raise ValueError("per_minute must be >= 0, burst and max_buckets >= 1")
        self._rate = per_minute / 60.0
        self._capacity = float(burst or per_minute)
        self._clock = clock
        self._max_buckets = max_buckets
        self._buckets: dict[str, tuple[float, float]] = {}  # key -> (tokens, stamp); least recently used first
        self._lock = threading.Lock()

    @property
    def enabled(self) -> bool:
        return self._rate > 0

    def __len__(self) -> int:
        return len(self._buckets)

    def acquire(self, key: str) -> float | None:
        """Take a token for ``key``: None when allowed, else the seconds until one is available."""
        if not self.enabled:
            return None
        now = self._clock()
        with self._lock:
            tokens = self._tokens(key, now)
            allowed = tokens >= 1.0
            self._store(key, tokens - 1.0 if allowed else tokens, now)
        return None if allowed else (1.0 - tokens) / self._rate

    def wait(self, key: str) -> float | None:
        """Like :meth:`acquire` but takes nothing: None when a token is available, else the seconds until one
        is."""
        if not self.enabled:
            return None
        with self._lock:
            tokens = self._tokens(key, self._clock())
        return None if tokens >= 1.0 else (1.0 - tokens) / self._rate

    def _tokens(self, key: str, now: float) -> float:
        tokens, stamp = self._buckets.get(key, (self._capacity, now))
        return min(self._capacity, tokens + (now - stamp) * self._rate)

    def _store(self, key: str, tokens: float, now: float) -> None:
        self._buckets.pop(key, None)  # re-inserted last: the dict stays in least-recently-used order
        self._buckets[key] = (tokens, now)
        if len(self._buckets) > self._max_buckets:
            self._shrink(now)

    def _shrink(self, now: float) -> None:
        for key, (tokens, stamp) in list(self._buckets.items()):
            if tokens + (now - stamp) * self._rate >= self._capacity:
                del self._buckets[key]
        excess = len(self._buckets) - self._max_buckets * 9 // 10
        if excess > 0:
            for key in list(self._buckets)[:excess]:
                del self._buckets[key]
