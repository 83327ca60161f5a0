"""How the broker's background loops live through a database outage: one log line when it
starts (with the traceback), one when it ends, and a backoff in between, not a traceback per
round."""

from __future__ import annotations

import structlog

log = structlog.get_logger(__name__)


class Outage:
    """The failure state of one background loop (`name`)."""

    def __init__(self, name: str, *, max_wait_s: float = 5.0) -> None:
        self.name = name
        self.max_wait_s = max_wait_s
        self.failures = 0

    def failed(self, exc: BaseException) -> float:
        """Record a failed round; the seconds to wait before the next one (0.4 s, doubling)."""
        self.failures += 1
        if self.failures == 1:
            log.error(f"{self.name} failed; retrying until it works again", exc_info=exc)
        else:
            log.debug(f"{self.name} still failing", failures=self.failures, error=repr(exc))
        return min(0.2 * 2.0 ** min(self.failures, 16), self.max_wait_s)

    def succeeded(self) -> None:
        if self.failures:
            log.info(f"{self.name} works again", failed_rounds=self.failures)
        self.failures = 0
