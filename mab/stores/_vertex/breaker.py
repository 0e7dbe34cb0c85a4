"""A circuit breaker per remote store: a store that stays down is not hammered.

The pattern of Nygard, *Release It!* (2007), chapter 5, "Circuit Breaker",
with the states of Fowler's "CircuitBreaker" (martinfowler.com, 2014):

- closed: fetches go to the store. After ``failures`` fetches in a row that
  failed as a whole (every entity failed: the store is down, not one value
  bad), the breaker opens.
- open: fetches do not go to the store; their entities fail at once, so the
  model's ``on_store_error`` answers (503, or the prior and ``degraded``)
  without waiting for a deadline. After ``reset_seconds`` it lets one fetch
  through as a probe (half-open).
- half-open: one probe at a time goes to the store; the other fetches still
  fail at once. A probe that gets any answer closes the breaker; one that
  fails opens it again for another ``reset_seconds``.

Thread-safe; the clock is injected for tests (seconds, monotonic).
"""

import threading
import time

CLOSED, OPEN, HALF_OPEN = "closed", "open", "half-open"


class CircuitBreaker:
    """``failures`` whole-fetch failures in a row open it for ``reset_seconds``."""

    def __init__(self, failures, reset_seconds, *, clock=time.monotonic):
        if failures < 1 or reset_seconds <= 0:
            raise ValueError("need failures >= 1 and reset_seconds > 0")
        self.failures = failures
        self.reset_seconds = reset_seconds
        self._clock = clock
        self._lock = threading.Lock()
        self.state = CLOSED
        self._failed_in_a_row = 0
        self._opened_at = None
        self._probing = False
        self.opened = 0            # times it opened
        self.short_circuited = 0   # fetches answered at once, without the store

    def allow(self):
        """Whether a fetch may go to the store now; a False is counted."""
        with self._lock:
            if self.state == CLOSED:
                return True
            if self.state == OPEN and self._clock() - self._opened_at >= self.reset_seconds:
                self.state = HALF_OPEN
            if self.state == HALF_OPEN and not self._probing:
                self._probing = True
                return True
            self.short_circuited += 1
            return False

    def record(self, succeeded):
        """The outcome of a fetch that ``allow()`` let through."""
        with self._lock:
            self._probing = False
            if succeeded:
                self.state = CLOSED
                self._failed_in_a_row = 0
                return
            self._failed_in_a_row += 1
            if self.state == HALF_OPEN or self._failed_in_a_row >= self.failures:
                if self.state != OPEN:
                    self.opened += 1
                self.state = OPEN
                self._opened_at = self._clock()

    def describe(self):
        with self._lock:
            return {
                "state": self.state,
                "failures_to_open": self.failures,
                "reset_seconds": self.reset_seconds,
                "failed_in_a_row": self._failed_in_a_row,
                "opened": self.opened,
                "short_circuited": self.short_circuited,
            }
