"""The circuit breaker of a producer profile: fail fast while Kafka cannot take events.

CLOSED: events are accepted. OPEN (after ``failure_threshold`` consecutive delivery
failures, or when every broker is unreachable): events are refused at once, for
``open_seconds``. HALF_OPEN: still refused while a probe (a metadata request) runs; its
success, or any successful delivery, closes the breaker; its failure opens it again.
"""

from __future__ import annotations

import enum
from collections.abc import Callable


class BreakerState(enum.Enum):
    CLOSED = 0
    OPEN = 1
    HALF_OPEN = 2


class CircuitBreaker:
    def __init__(self, *, failure_threshold: int, open_seconds: float, clock: Callable[[], float]) -> None:
        self.failure_threshold = failure_threshold
        self.open_seconds = open_seconds
        self._clock = clock
        self._state = BreakerState.CLOSED
        self._opened_at = 0.0
        self.consecutive_failures = 0
        self.reason: str | None = None

    @property
    def state(self) -> BreakerState:
        if self._state is BreakerState.OPEN and self._clock() - self._opened_at >= self.open_seconds:
            self._state = BreakerState.HALF_OPEN
        return self._state

    def allows(self) -> bool:
        return self.state is BreakerState.CLOSED

    def retry_after(self) -> float:
        """Seconds until the next probe may close the breaker (0 when closed)."""
        if self._state is BreakerState.CLOSED:
            return 0.0
        return max(0.0, self.open_seconds - (self._clock() - self._opened_at))

    def record_success(self) -> None:
        self.consecutive_failures = 0
        if self._state is not BreakerState.CLOSED:
            self._close()

    def record_failure(self, reason: str) -> None:
        self.consecutive_failures += 1
        if self.consecutive_failures >= self.failure_threshold:
            self.trip(f"{self.consecutive_failures} consecutive delivery failures, last: {reason}")

    def trip(self, reason: str) -> None:
        """Open now (or keep open, restarting the wait)."""
        self._state = BreakerState.OPEN
        self._opened_at = self._clock()
        self.reason = reason

    def probe_succeeded(self) -> None:
        self.consecutive_failures = 0
        self._close()

    def probe_failed(self, reason: str) -> None:
        self.trip(f"probe failed: {reason}")

    def _close(self) -> None:
        self._state = BreakerState.CLOSED
        self.reason = None
