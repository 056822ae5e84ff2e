"""Per-credential token-bucket rate limiting (in process; each replica limits on its own)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

_MAX_BUCKETS = 100_000


class RateLimiter:
    """``per_minute`` tokens refill continuously into a bucket of ``burst``; each request takes one."""

    def __init__(
        self, *, per_minute: int, burst: int | None = None, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._rate = per_minute / 60.0
        self._capacity = float(burst or per_minute)
        self._clock = clock
        self._buckets: dict[str, tuple[float, float]] = {}
        self._lock = threading.Lock()

    @property
    def enabled(self) -> bool:
        return self._rate > 0

    def acquire(self, key: str) -> float | None:
        """Take a token for ``key``: None when allowed, else the seconds until one is available."""
        if not self.enabled:
            return None
        now = self._clock()
        with self._lock:
            tokens, stamp = self._buckets.get(key, (self._capacity, now))
            tokens = min(self._capacity, tokens + (now - stamp) * self._rate)
            if tokens >= 1.0:
                self._buckets[key] = (tokens - 1.0, now)
                if len(self._buckets) > _MAX_BUCKETS:
                    self._evict_full(now)
                return None
            self._buckets[key] = (tokens, now)
            return (1.0 - tokens) / self._rate

    def _evict_full(self, now: float) -> None:
        """Forget buckets that have refilled completely: they behave exactly like new ones."""
        for key, (tokens, stamp) in list(self._buckets.items()):
            if tokens + (now - stamp) * self._rate >= self._capacity:
                del self._buckets[key]
