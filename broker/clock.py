"""This host's clock against the database server's.

Brokers sharing a database compare leases, retry times and retention by their own clocks: a
broker whose clock is 45 s ahead takes tasks back from healthy workers that heartbeat through
another broker (a lease is shortened by what the clocks disagree by). Nothing here corrects a
clock; the log says which host is off, and by how much, so that NTP gets fixed.
"""

from __future__ import annotations

import asyncio
import time

import structlog

from broker.store import Store

log = structlog.get_logger(__name__)

#: Disagreements below this are the query's own jitter, and harmless.
TOLERANCE_S = 2.0
CHECK_INTERVAL_S = 600.0


async def skew_s(store: Store) -> float | None:
    """Seconds this host's clock is behind the database server's (negative: ahead); None
    when the database has no clock of its own (SQLite)."""
    before = time.time()
    database_ms = await store.database_time_ms()
    after = time.time()
    if database_ms is None:
        return None
    return database_ms / 1000 - (before + after) / 2


async def check(store: Store, lease_s: float) -> float | None:
    """Measure the skew and log it when it matters; the skew."""
    skew = await skew_s(store)
    if skew is None or abs(skew) <= TOLERANCE_S:
        return skew
    say = log.error if abs(skew) > lease_s / 4 else log.warning
    say("this host's clock disagrees with the database server's; brokers sharing the database "
        "compare leases by their own clocks, so workers lose tasks early or dead workers keep "
        "them late: keep every broker host's clock synchronised (chrony, systemd-timesyncd)",
        skew_s=round(abs(skew), 1), this_host="behind" if skew > 0 else "ahead",
        lease_s=lease_s)
    return skew


async def watch_forever(store: Store, lease_s: float,
                        interval_s: float = CHECK_INTERVAL_S) -> None:
    while True:
        try:
            await check(store, lease_s)
        except Exception as exc:  # an outage: the housekeeper's to report
            log.debug("clock not compared with the database's", error=str(exc))
        await asyncio.sleep(interval_s)
