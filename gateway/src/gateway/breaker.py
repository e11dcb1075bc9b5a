"""A circuit breaker per replica: a replica that keeps failing is taken out of routing for a cool-down.

Closed (normal) → after ``threshold`` consecutive failures (a refused connection, a timeout, a 5xx answer, a stream
cut short) → open: no request is routed to it for ``cooldown_s`` → half-open: one request at a time is let through
as a probe; its success closes the breaker, its failure opens it for another cool-down. A success in the closed
state resets the count. Times come from ``time.monotonic``; the breaker is used from the event loop only.
"""

from __future__ import annotations

import time
from typing import Literal

__all__ = ["CircuitBreaker"]

State = Literal["closed", "open", "half_open"]


class CircuitBreaker:
    def __init__(self, threshold: int, cooldown_s: float) -> None:
        self.threshold = threshold
        self.cooldown_s = cooldown_s
        self.failures = 0
        self.opened_at: float | None = None
        self.probing = False
        self.trips = 0  # how many times it opened (for /ready and the tests)

    @property
    def state(self) -> State:
        if self.opened_at is None:
            return "closed"
        return "half_open" if time.monotonic() - self.opened_at >= self.cooldown_s else "open"

    def available(self) -> bool:
        """May a request be routed here now? (Closed, or half-open with no probe under way.)"""
        state = self.state
        return state == "closed" or (state == "half_open" and not self.probing)

    def suspect(self) -> bool:
        """Closed, but its last request(s) failed: a worse choice than a replica without failures."""
        return self.failures > 0 and self.opened_at is None

    def begin(self) -> None:
        """A request is being sent; in the half-open state it is the probe."""
        if self.state == "half_open":
            self.probing = True

    def success(self) -> None:
        self.failures, self.opened_at, self.probing = 0, None, False

    def failure(self) -> None:
        was_probe = self.probing
        self.probing = False
        self.failures += 1
        if was_probe or (self.opened_at is None and self.failures >= self.threshold):
            self.opened_at = time.monotonic()
            self.trips += 1

    def retry_in_s(self) -> float:
        """Seconds until the next probe may go (0 when requests may go now)."""
        if self.opened_at is None:
            return 0.0
        return max(0.0, self.cooldown_s - (time.monotonic() - self.opened_at))
