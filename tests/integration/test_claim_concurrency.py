"""No task is ever given to two claimers, nor requeued twice: many connections and processes
race against the same database."""

from __future__ import annotations

import asyncio
import contextlib
import json
import pathlib
import random
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest

from broker.models import NewTask, TaskFilter, TaskState
from broker.store import Store, migrations, open_store, queries
from broker.store.mysql import MysqlStore
from broker.store.sql import Tx
from tests.integration.claimer import LEASE_MS, NOW_MS, claim_all
from tests.integration.test_schema import db_query

REPO = pathlib.Path(__file__).resolve().parents[2]
TYPES = ["c2-32g", "c2-64g"]

StoreFactory = Callable[[], Awaitable[Store]]


@pytest.fixture
async def stores(store_dsn: str) -> AsyncIterator[StoreFactory]:
    """Factory: another store on the test database, with its own connections."""
    opened: list[Store] = []

    async def _open() -> Store:
        store = open_store(store_dsn)
        await store.open()
        opened.append(store)
        return store

    yield _open
    for store in opened:
        await store.close()


async def add_tasks(store: Store, count: int) -> set[str]:
    rng = random.Random(7)
    ids = set()
    for i in range(count):
        new = NewTask(
            id=f"task-{i:04d}", task_type=TYPES[i % 2], miner="f01", comment="",
            priority=rng.randrange(3), payload_size=1, payload_sha256=f"{i:064x}", max_attempts=3,
            created_at=NOW_MS - count + rng.randrange(count),
        )
        task, _ = await store.create_task(new)
        ids.add(task.id)
    return ids


def assert_each_claimed_once(claimed: list[str], ids: set[str]) -> None:
    twice = [task_id for task_id, n in Counter(claimed).items() if n > 1]
    assert twice == [], f"claimed more than once: {twice}"
    assert set(claimed) == ids


async def run_processes(*argvs: list[str]) -> list[dict[str, Any]]:
    """Run `python -m tests.integration.claimer ARGV...` processes at once; their JSON outputs."""
    procs = [
        await asyncio.create_subprocess_exec(
            sys.executable, "-m", "tests.integration.claimer", *argv, cwd=REPO,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )
        for argv in argvs
    ]
    try:
        outputs = [await asyncio.wait_for(p.communicate(), timeout=60) for p in procs]
    finally:
        for p in procs:
            if p.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    p.kill()
                await p.wait()
    for p, (_, err) in zip(procs, outputs, strict=True):
        assert p.returncode == 0, err.decode()
    return [json.loads(out) for out, _ in outputs]


async def test_eight_stores_in_one_process_claim_each_task_once(
    store: Store, stores: StoreFactory
) -> None:
    # Given 200 tasks of two types and 8 stores, each with its own connection
    ids = await add_tasks(store, 200)
    claimers = [await stores() for _ in range(8)]

    # When all of them claim at once until nothing is left
    batches = await asyncio.gather(
        *(claim_all(s, f"w{i}", TYPES) for i, s in enumerate(claimers))
    )

    # Then every task was claimed exactly once, by one attempt
    assert_each_claimed_once([task_id for batch in batches for task_id in batch], ids)
    running = await store.list_tasks(TaskFilter(states=(TaskState.RUNNING,)), 1000)
    assert len(running) == 200 and {(t.attempts, t.fence) for t in running} == {(1, 1)}


async def test_two_processes_claim_each_task_once(store: Store) -> None:
    # Given 200 tasks
    ids = await add_tasks(store, 200)

    # When two processes with 4 connections each claim from the same moment on
    argv = ["claim", store.dsn, "--types", ",".join(TYPES), "--connections", "4",
            "--start-at", str(time.time() + 1.0)]
    outputs = await run_processes(argv, argv)

    # Then no task went to both, and none was left
    claimed = [task_id for out in outputs for task_id in out["claimed"]]
    assert_each_claimed_once(claimed, ids)


async def test_two_stores_requeue_each_expired_task_once(
    store: Store, stores: StoreFactory
) -> None:
    # Given 100 running tasks whose leases expired
    ids = await add_tasks(store, 100)
    while await store.claim_task("w1", TYPES, 1000, NOW_MS):
        pass
    later = NOW_MS + LEASE_MS

    # When two stores sweep at the same time, in small batches
    async def sweep(s: Store) -> list[str]:
        requeued: list[str] = []
        while batch := await s.requeue_expired(later, {}, limit=10):
            requeued += [t.id for t in batch]
        return requeued

    first, second = await asyncio.gather(sweep(await stores()), sweep(await stores()))

    # Then each task was requeued exactly once
    assert_each_claimed_once(first + second, ids)
    tasks = await store.list_tasks(TaskFilter(), 1000)
    assert {(t.state, t.fence) for t in tasks} == {(TaskState.INIT, 2)}
    for task_id in sorted(ids)[:10]:
        assert [a.outcome for a in await store.get_attempts(task_id)] == ["requeued"]


async def test_two_processes_opening_a_new_database_at_once_both_succeed(
    store_dsn: str,
) -> None:
    argv = ["open", store_dsn, "--start-at", str(time.time() + 1.0)]

    outputs = await run_processes(argv, argv)

    assert outputs == [{"opened": True}, {"opened": True}]
    store = open_store(store_dsn)
    await store.open()
    try:
        assert await store.list_tasks(TaskFilter(), 1) == []
    finally:
        await store.close()
    versions = db_query(store_dsn, "SELECT version FROM schema_version ORDER BY version")
    assert versions == [(m.version,) for m in migrations.MIGRATIONS]


async def test_a_deadlock_is_rolled_back_and_run_again(mariadb_dsn: str) -> None:
    # Given two stores whose transactions lock two tasks in opposite orders
    a, b = MysqlStore(mariadb_dsn), MysqlStore(mariadb_dsn)
    await a.open()
    await b.open()
    try:
        await add_tasks(a, 2)
        both_hold_one = asyncio.Barrier(2)
        runs: Counter[str] = Counter()

        def lock_both(name: str, first: str, second: str) -> Callable[[Tx], Awaitable[str]]:
            async def change(tx: Tx) -> str:
                runs[name] += 1
                await tx.one(queries.MYSQL.lock_task, [first])
                if runs[name] == 1:
                    await both_hold_one.wait()
                await tx.one(queries.MYSQL.lock_task, [second])
                return name

            return change

        # When both run at once, InnoDB picks one as the deadlock victim
        done = await asyncio.gather(
            a._write(lock_both("a", "task-0000", "task-0001")),
            b._write(lock_both("b", "task-0001", "task-0000")),
        )

        # Then the victim was run again and both succeeded
        assert done == ["a", "b"]
        assert sorted(runs.values()) == [1, 2]
    finally:
        await a.close()
        await b.close()
