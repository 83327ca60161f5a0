"""A second process for the concurrency tests: claims tasks, or opens (migrates) a store.

    python -m tests.integration.claimer claim DSN --types a,b --connections 4 --start-at EPOCH_S
    python -m tests.integration.claimer open DSN --start-at EPOCH_S

Waits until --start-at so that several processes begin at the same moment, then prints one JSON
object on stdout: {"claimed": [task ids]} or {"opened": true}.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from collections.abc import Sequence

from broker.models import TaskFilter, TaskState
from broker.store import Store, open_store
from broker.store.mysql import MysqlStore

NOW_MS = 1_700_000_000_000
LEASE_MS = 600_000


async def claim_all(store: Store, worker_id: str, task_types: Sequence[str]) -> list[str]:
    """Claim until no init task is left; the ids claimed, in order."""
    claimed: list[str] = []
    while True:
        task = await store.claim_task(worker_id, task_types, LEASE_MS, NOW_MS)
        if task is not None:
            claimed.append(task.id)
            continue
        # None can also mean that every task left was locked by another claimer's transaction.
        if not await store.list_tasks(TaskFilter(states=(TaskState.INIT,)), 1):
            return claimed
        await asyncio.sleep(0.005)


async def _claim(dsn: str, task_types: list[str], connections: int, start_at: float) -> object:
    store = open_store(dsn)
    if isinstance(store, MysqlStore):
        store.max_connections = connections
    await store.open()
    try:
        await asyncio.sleep(max(0.0, start_at - time.time()))
        batches = await asyncio.gather(
            *(claim_all(store, f"pid-worker-{i}", task_types) for i in range(connections))
        )
    finally:
        await store.close()
    return {"claimed": [task_id for batch in batches for task_id in batch]}


async def _open(dsn: str, start_at: float) -> object:
    store = open_store(dsn)
    await asyncio.sleep(max(0.0, start_at - time.time()))
    await store.open()
    await store.close()
    return {"opened": True}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("action", choices=["claim", "open"])
    parser.add_argument("dsn")
    parser.add_argument("--types", default="c2")
    parser.add_argument("--connections", type=int, default=4)
    parser.add_argument("--start-at", type=float, default=0.0)
    args = parser.parse_args()
    if args.action == "claim":
        work = _claim(args.dsn, args.types.split(","), args.connections, args.start_at)
    else:
        work = _open(args.dsn, args.start_at)
    print(json.dumps(asyncio.run(work)))


if __name__ == "__main__":
    main()
