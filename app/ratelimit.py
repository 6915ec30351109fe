"""Token buckets: the rate limits of the shippers and of API keys, in events per second."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence


class TokenBucket:
    """``rate`` tokens a second, holding at most ``capacity``; one token per event."""

    def __init__(self, rate: float, capacity: float, clock: Callable[[], float]) -> None:
        if rate <= 0 or capacity <= 0:
            raise ValueError("a token bucket needs a positive rate and capacity")
        self.rate = rate
        self.capacity = capacity
        self._clock = clock
        self._tokens = capacity
        self._updated = clock()

    def _refill(self) -> None:
        now = self._clock()
        self._tokens = min(self.capacity, self._tokens + (now - self._updated) * self.rate)
        self._updated = now

    def wait_time(self, count: int) -> float:
        """Seconds until ``count`` tokens are there (0 when they are now); takes nothing."""
        self._refill()
        if count > self.capacity:
            return math.inf
        return max(0.0, (count - self._tokens) / self.rate)

    def take(self, count: int) -> None:
        self._refill()
        self._tokens -= count


def take_all(buckets: Sequence[TokenBucket], count: int) -> float:
    """Take ``count`` tokens from every bucket, or from none; returns 0, or the seconds to wait."""
    wait = max((bucket.wait_time(count) for bucket in buckets), default=0.0)
    if wait == 0.0:
        for bucket in buckets:
            bucket.take(count)
    return wait
