"""The cleaner on a real store (SQLite and MariaDB) and a real payload folder."""

from __future__ import annotations

import asyncio
import hashlib
import pathlib
from collections.abc import AsyncIterator

import pytest
import structlog

from broker import cleaner, exceptions, models
from broker.models import NewTask, Task, TaskState, WorkerRecord
from broker.payloads import CleanReport, FsPayloadStore
from broker.store import Store

DAY_S = 86_400
DAY_MS = DAY_S * 1000
NOW_MS = models.now_ms()


@pytest.fixture
async def payloads(tmp_path: pathlib.Path) -> FsPayloadStore:
    fs = FsPayloadStore(tmp_path / "payloads")
    await fs.open()
    return fs


async def put(payloads: FsPayloadStore, data: bytes) -> str:
    sha = hashlib.sha256(data).hexdigest()

    async def one() -> AsyncIterator[bytes]:
        yield data

    await payloads.write(sha, len(data), one())
    return sha


async def submit(store: Store, payloads: FsPayloadStore, name: str, data: bytes = b"") -> Task:
    """A task of its own type (so a claim takes exactly it), with its payload stored."""
    sha = await put(payloads, data or name.encode())
    task, created = await store.create_task(
        NewTask(
            id=models.task_id(name, name, sha),
            task_type=name,
            miner=name,
            comment="",
            priority=0,
            payload_size=len(data or name.encode()),
            payload_sha256=sha,
            max_attempts=3,
            created_at=NOW_MS - 30 * DAY_MS,
        )
    )
    assert created
    return task


async def claim(store: Store, task: Task, at_ms: int) -> Task:
    claimed = await store.claim_task("w1", [task.task_type], 60_000, at_ms)
    assert claimed is not None and claimed.id == task.id
    return claimed


async def finish(store: Store, payloads: FsPayloadStore, task: Task, at_ms: int) -> Task:
    claimed = await claim(store, task, at_ms - 1000)
    result = f"result of {task.id}".encode()
    sha = await put(payloads, result)
    return await store.finish_task(task.id, claimed.fence, len(result), sha, at_ms)


async def test_sweep_drops_old_tasks_and_unneeded_payloads(
    store: Store, payloads: FsPayloadStore
) -> None:
    # Given tasks in every state, two finished ones past the 7-day retention
    old = await finish(store, payloads, await submit(store, payloads, "old"), NOW_MS - 8 * DAY_MS)
    old_error = await submit(store, payloads, "old-error")
    await store.cancel_task(old_error.id, "test", NOW_MS - 8 * DAY_MS)
    recent = await finish(
        store, payloads, await submit(store, payloads, "recent"), NOW_MS - 1 * DAY_MS
    )
    waiting = await submit(store, payloads, "waiting")
    running = await submit(store, payloads, "running")
    await claim(store, running, NOW_MS)
    failed = await submit(store, payloads, "failed")
    await store.cancel_task(failed.id, "test", NOW_MS)

    # When the cleaner sweeps (payloads written just now count as old enough)
    report = await cleaner.sweep(
        store, payloads, orphan_age_s=0, retention_s=7 * DAY_S, now_ms=models.now_ms() + 60_000
    )

    # Then the old tasks are gone with their payloads and results
    assert report.tasks_deleted == 2 and report.removed_anything
    for gone in (old, old_error):
        with pytest.raises(exceptions.TaskNotFound):
            await store.get_task(gone.id)
        assert not await payloads.exists(gone.payload_sha256)
    assert not await payloads.exists(old.result_sha256)
    # The recent finished task stays with its result, but its payload is no longer needed
    assert (await store.get_task(recent.id)).state == TaskState.FINISHED
    assert await payloads.exists(recent.result_sha256)
    assert not await payloads.exists(recent.payload_sha256)
    # Unfinished tasks keep their payloads (an error task may be reset and run again)
    for kept in (waiting, running, failed):
        await store.get_task(kept.id)
        assert await payloads.exists(kept.payload_sha256)
    assert report.payloads.orphans_removed == 4


async def test_sweep_spares_young_payloads(store: Store, payloads: FsPayloadStore) -> None:
    # Given a payload whose task is not written yet (a submit in flight)
    sha = await put(payloads, b"in flight")

    report = await cleaner.sweep(store, payloads, orphan_age_s=3600, retention_s=7 * DAY_S)

    assert await payloads.exists(sha)
    assert not report.removed_anything


async def test_release_payload_waits_for_every_unfinished_task(
    store: Store, payloads: FsPayloadStore
) -> None:
    # Given three tasks (different miners) sharing one payload
    shared = b"the same C1 output"
    first = await submit(store, payloads, "first", shared)
    second = await submit(store, payloads, "second", shared)
    third = await submit(store, payloads, "third", shared)
    sha = first.payload_sha256

    # While one is unfinished (init, then error), the payload stays
    await finish(store, payloads, first, NOW_MS)
    assert not await cleaner.release_payload(store, payloads, sha)
    await finish(store, payloads, second, NOW_MS)
    await store.cancel_task(third.id, "test", NOW_MS)
    assert not await cleaner.release_payload(store, payloads, sha)
    assert await payloads.exists(sha)

    # Once the last one is finished, it goes at once
    await store.reset_task(third.id, NOW_MS - 10_000)
    await finish(store, payloads, third, NOW_MS)
    assert await cleaner.release_payload(store, payloads, sha)
    assert not await payloads.exists(sha)


class _FailsOnce(FsPayloadStore):
    calls = 0

    async def clean(self, keep: set[str], older_than_ms: int, now_ms: int) -> CleanReport:
        self.calls += 1
        if self.calls == 1:
            raise OSError("NFS server not responding")
        return await super().clean(keep, older_than_ms, now_ms)


async def test_run_forever_survives_a_failed_sweep(store: Store, tmp_path: pathlib.Path) -> None:
    payloads = _FailsOnce(tmp_path)
    await payloads.open()
    await put(payloads, b"orphan")

    with structlog.testing.capture_logs() as logs:
        loop = asyncio.create_task(
            cleaner.run_forever(store, payloads, orphan_age_s=0, retention_s=DAY_S, interval_s=0.01)
        )
        try:
            async with asyncio.timeout(10):
                while not any(e["event"] == "cleaner swept" for e in logs):
                    await asyncio.sleep(0.01)
        finally:
            loop.cancel()
            with pytest.raises(asyncio.CancelledError):
                await loop

    failed = [e for e in logs if e["event"].startswith("cleaner sweep failed")]
    assert failed and failed[0]["log_level"] == "error" and failed[0]["exc_info"]
    swept = next(e for e in logs if e["event"] == "cleaner swept")
    assert swept["orphans_removed"] == 1
    assert any(e["event"] == "cleaner sweep works again" for e in logs)


async def test_sweep_forgets_workers_not_seen_for_the_retention_period(
    store: Store, payloads: FsPayloadStore
) -> None:
    def seen(worker_id: str, at_ms: int) -> WorkerRecord:
        return WorkerRecord(worker_id=worker_id, hostname="h", addresses=(), version="1",
                            task_types=("c2",), max_tasks=1, gpus=(), registered_at=at_ms,
                            last_seen_at=at_ms)

    # Given a worker gone for 8 days (its container re-created under a new id) and one seen
    # yesterday
    await store.register_worker(seen("gone", NOW_MS - 8 * DAY_MS), live_ms=60_000)
    await store.register_worker(seen("resting", NOW_MS - 1 * DAY_MS), live_ms=60_000)
    # When the cleaner sweeps with a 7-day retention, only the first is forgotten
    report = await cleaner.sweep(store, payloads, orphan_age_s=3600, retention_s=7 * DAY_S,
                                 now_ms=NOW_MS)
    assert report.workers_forgotten == 1 and report.removed_anything
    assert [w.worker_id for w in await store.list_workers()] == ["resting"]
