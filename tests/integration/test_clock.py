"""This host's clock against the database server's, on a real database of each kind."""

from __future__ import annotations

import time

import pytest
import structlog

from broker import clock
from broker.store import Store


async def test_the_skew_is_measured_against_the_database_servers_clock(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    skew = await clock.skew_s(store)
    if store.sql.mysql:  # type: ignore[attr-defined]
        # Here the server runs on this host: they agree within the query's time
        assert skew is not None and abs(skew) < clock.TOLERANCE_S
        again = await clock.check(store, lease_s=60)
        assert again is not None and abs(again) < clock.TOLERANCE_S
        # A host 45 s ahead (its NTP stopped) is told, with which way and by how much
        real = time.time
        monkeypatch.setattr(clock.time, "time", lambda: real() + 45)
        with structlog.testing.capture_logs() as logs:
            ahead = await clock.check(store, lease_s=60)
        assert ahead is not None and 44 < -ahead < 46
        [said] = logs
        assert said["log_level"] == "error" and said["this_host"] == "ahead"
        assert "keep every broker host's clock synchronised" in said["event"]
    else:  # SQLite shares this host's clock: nothing to compare
        assert skew is None
