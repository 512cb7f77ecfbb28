"""The rate limit of `replwatch compare --rate`: a token bucket over both servers' key reads.

What a read costs is decided by the callers (reading.py, scan.py, run.py); SCAN itself is free.
"""

from __future__ import annotations

import time
from collections.abc import Callable


class TokenBucket:
    """At most `rate` units per second on average, bursts of `burst_seconds` worth. take(n)
    may overdraw the bucket and then sleeps the debt off, so a batch larger than the burst is
    allowed but paid for. rate None: no limit."""

    def __init__(
        self,
        rate: float | None,
        *,
        burst_seconds: float = 0.1,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.rate = rate
        self.capacity = max(1.0, (rate or 0.0) * burst_seconds)
        self._clock = clock
        self._sleep = sleep
        self._tokens = self.capacity
        self._last = clock()

    def take(self, units: int) -> None:
        if self.rate is None or units <= 0:
            return
        now = self._clock()
        self._tokens = min(self.capacity, self._tokens + (now - self._last) * self.rate)
        self._last = now
        self._tokens -= units
        if self._tokens < 0:
            self._sleep(-self._tokens / self.rate)
            self._tokens = 0.0
            self._last = self._clock()


def batch_size(batch: int, rate: float | None) -> int:
    """Keys per SCAN and pipeline: `batch`, and under a rate limit at most rate/20 (a batch
    costs 2 units per key: each one stays within ~100 ms of the budget)."""
    if rate is None:
        return batch
    return max(1, min(batch, int(rate / 20)))
