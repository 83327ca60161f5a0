"""The dispatcher's bookkeeping of claims, and its loop surviving a database outage."""

from __future__ import annotations

import asyncio
import pathlib

import structlog

from broker.dispatcher import Dispatcher, Session
from broker.store import open_store


def test_done_frees_only_the_claim_with_that_fence() -> None:
    # Given worker B holding task t under fence 3 (A held it under fence 1 before a requeue)
    dispatcher = Dispatcher(store=None, lease_s=30)  # type: ignore[arg-type]
    b = Session("b", ("c2",), max_tasks=1, accepting=True)
    dispatcher.sessions.append(b)
    b.held["t"] = 3
    # When A's late report of fence 1 arrives, B keeps its claim and gets no second task
    dispatcher.done("t", 1)
    assert b.held == {"t": 3} and b.free == 0
    # When B's own report arrives, its slot is free
    dispatcher.done("t", 3)
    assert b.held == {} and b.free == 1


def test_revoke_of_an_old_fence_keeps_the_newer_claim() -> None:
    s = Session("w", ("c2",), max_tasks=1, accepting=True)
    s.held["t"] = 5
    s.revoke("t", 4, "stale heartbeat")
    assert s.held == {"t": 5}
    assert s.outbox.get_nowait().revoke.fence == 4


async def test_dispatch_loop_survives_a_database_outage(tmp_path: pathlib.Path) -> None:
    store = open_store(f"sqlite:///{tmp_path}/db.sqlite")
    await store.open()
    await store.close()  # every claim now fails, as during an outage
    dispatcher = Dispatcher(store, lease_s=30, poll_s=0.05)
    dispatcher.add(Session("w", ("c2",), max_tasks=1, accepting=True))
    with structlog.testing.capture_logs() as logs:
        loop = asyncio.create_task(dispatcher.run_forever())
        await asyncio.sleep(1.0)
        assert not loop.done()  # still dispatching, not dead
        loop.cancel()
    failures = [e for e in logs if e["event"].startswith("dispatch failed")]
    assert len(failures) == 1  # logged once per outage, not per round
