"""Retry pacing without I/O: how long to wait before the next attempt, and when to log.

Used for reconnecting to the broker and for restarting supervised workers. The random draw is a
parameter so that tests (and callers that want no jitter) stay deterministic.
"""

from __future__ import annotations

import dataclasses
import random


@dataclasses.dataclass(frozen=True)
class Backoff:
    initial_s: float = 0.5
    max_s: float = 30.0
    factor: float = 2.0
    #: Spread of each wait, as a fraction of it: 0.2 waits between 80 % and 120 %.
    jitter: float = 0.2

    def delay_s(self, attempt: int, draw: float | None = None) -> float:
        """The wait before retry number `attempt` (0 for the first retry).

        `draw` in [0, 1) picks the point in the jitter band; None draws one at random.
        """
        base = min(self.max_s, self.initial_s * self.factor ** max(0, min(attempt, 64)))
        draw = random.random() if draw is None else draw
        return max(0.0, base * (1.0 + self.jitter * (2.0 * draw - 1.0)))


@dataclasses.dataclass
class Outage:
    """Tracks one stretch of failures so that it is logged once, not on every retry."""

    since_s: float | None = None  #: monotonic time of the first failure, None while healthy
    failures: int = 0

    def failed(self, now_s: float) -> bool:
        """Count a failure; True when it starts a new outage (the one to log)."""
        self.failures += 1
        if self.since_s is None:
            self.since_s = now_s
            return True
        return False

    def recovered(self, now_s: float) -> float | None:
        """End the outage; its length in seconds, or None when there was none."""
        if self.since_s is None:
            return None
        lasted_s = now_s - self.since_s
        self.since_s, self.failures = None, 0
        return lasted_s

    @property
    def attempt(self) -> int:
        """Retries so far in this outage, for `Backoff.delay_s`."""
        return max(0, self.failures - 1)


@dataclasses.dataclass
class FailureStreak:
    """Failed tasks in a row on this worker, and when it should stop taking new ones.

    A worker that fails every task (a missing parameters file, a broken driver) is always the
    first to be idle, so without a pause it would take and fail the whole queue while healthy
    workers wait. After `limit` failures in a row it pauses for `pause.delay_s`, doubling with
    each further failure; a success ends the streak. `limit` 0 never pauses.
    """

    limit: int = 3
    pause: Backoff = Backoff(initial_s=30.0, max_s=600.0, jitter=0.1)
    failures: int = 0

    def failed(self, draw: float | None = None) -> float:
        """Count a failure; the seconds to take no new task (0 while below the limit)."""
        self.failures += 1
        if self.limit <= 0 or self.failures < self.limit:
            return 0.0
        return self.pause.delay_s(self.failures - self.limit, draw)

    def succeeded(self) -> None:
        self.failures = 0
