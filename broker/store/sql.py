"""The store logic both SQL backends share.

Every change reads the task row under a lock (MySQL: SELECT ... FOR UPDATE; SQLite: the
database lock of BEGIN IMMEDIATE), decides the new row in Python with `broker.policy`, and writes
it back in the same short transaction. A backend supplies only connections, transactions,
retries and the translation of its driver's errors.
"""

from __future__ import annotations

import abc
import dataclasses
from collections.abc import Awaitable, Callable, Collection, Mapping, Sequence
from typing import Any, Protocol, TypeVar

import structlog

from broker import exceptions, policy
from broker.models import (
    Attempt,
    BlobRow,
    Drain,
    NewTask,
    PageCursor,
    Resource,
    Task,
    TaskCount,
    TaskFilter,
    TaskState,
    WorkerRecord,
)
from broker.store import queries
from broker.store.base import Store

T = TypeVar("T")
log = structlog.get_logger(__name__)

#: Chunks deleted per transaction by blob_delete (at most this many MiB).
DELETE_CHUNKS_PER_TX = 8


class Tx(Protocol):
    """One transaction (or one autocommit read) on one connection."""

    async def one(self, sql: str, args: Sequence[Any] = ()) -> queries.Row | None: ...

    async def all(self, sql: str, args: Sequence[Any] = ()) -> list[queries.Row]: ...

    async def run(self, sql: str, args: Sequence[Any] = ()) -> int:
        """Execute a statement; the number of rows it changed."""
        ...


class SqlStore(Store):
    sql: queries.Queries

    @abc.abstractmethod
    async def _write(self, change: Callable[[Tx], Awaitable[T]]) -> T:
        """Run `change` in one write transaction: committed when it returns, rolled back when
        it raises. A backend may run it again after a deadlock, so it must only touch the
        database."""

    @abc.abstractmethod
    async def _read(self, query: Callable[[Tx], Awaitable[T]]) -> T:
        """Run `query` outside any explicit transaction (each statement sees committed data)."""

    # -- tasks -------------------------------------------------------------------------------

    async def create_task(self, new: NewTask) -> tuple[Task, bool]:
        task = Task(
            **dataclasses.asdict(new), state=TaskState.INIT, worker_id="", attempts=0,
            error_message="", started_at=None, finished_at=None, result_size=0,
            result_sha256="", version=1, fence=0, lease_expires_at=None, not_before=0,
            progress_phase="", progress_fraction=0.0,
        )

        async def change(tx: Tx) -> tuple[Task, bool]:
            if await tx.run(self.sql.insert_task, queries.task_args(task)):
                return task, True
            return await self._task(tx, new.id), False

        return await self._write(change)

    async def get_task(self, task_id: str) -> Task:
        return await self._read(lambda tx: self._task(tx, task_id))

    async def list_tasks(
        self, flt: TaskFilter, limit: int, after: PageCursor | None = None
    ) -> list[Task]:
        sql, args = self.sql.list_tasks(flt, limit, after)
        rows = await self._read(lambda tx: tx.all(sql, args))
        return [queries.task_from_row(r) for r in rows]

    async def task_counts(self) -> list[TaskCount]:
        rows = await self._read(lambda tx: tx.all(self.sql.task_counts))
        return [TaskCount(task_type=r[0], state=TaskState(int(r[1])), count=int(r[2]),
                          oldest_since=int(r[3])) for r in rows]

    async def get_attempts(self, task_id: str) -> list[Attempt]:
        return await self._read(lambda tx: self._history(tx, task_id))

    async def delete_task(self, task_id: str) -> None:
        await self._write(lambda tx: tx.run(self.sql.delete_task, [task_id]))

    async def reset_task(self, task_id: str, now_ms: int) -> Task:
        [task] = await self.reset_tasks([task_id], now_ms)
        return task

    async def reset_tasks(self, task_ids: Sequence[str], now_ms: int) -> list[Task]:
        async def change(tx: Tx) -> list[Task]:
            return [await self._reset(tx, task_id, now_ms) for task_id in task_ids]

        return await self._write(change)

    async def _reset(self, tx: Tx, task_id: str, now_ms: int) -> Task:
        task = await self._task(tx, task_id, lock=True)
        if task.state != TaskState.ERROR:
            raise _wrong_state(task, "only a task in error can be reset" + (
                "; a finished one runs again when its input is submitted again asking for it "
                "(gpuproxy tasks submit --rerun), which drops its result"
                if task.state == TaskState.FINISHED else ""))
        await self._add_attempt(tx, task, "", now_ms, now_ms, "reset",
                                policy.clipped(task.error_message))
        return await self._save(tx, task, worker_id="", **_AGAIN, not_before=now_ms)

    async def rerun_task(self, task_id: str, result_sha256: str, reason: str,
                         now_ms: int) -> Task:
        async def change(tx: Tx) -> Task:
            task = await self._task(tx, task_id, lock=True)
            if task.state != TaskState.FINISHED:
                raise _wrong_state(task, "only a finished task runs again")
            if result_sha256 and task.result_sha256 != result_sha256:
                raise _wrong_state(task, f"its result is {task.result_sha256}, not the "
                                   f"{result_sha256} found wrong: that of a later run")
            await self._add_attempt(tx, task, task.worker_id, now_ms, now_ms, "reset",
                                    policy.clipped(reason))
            return await self._save(tx, task, result_size=0, result_sha256="", **_AGAIN,
                                    not_before=now_ms)

        return await self._write(change)

    async def cancel_task(self, task_id: str, reason: str, now_ms: int) -> Task:
        async def change(tx: Tx) -> Task:
            task = await self._task(tx, task_id, lock=True)
            if task.state.terminal:
                raise _wrong_state(task, "only an init or running task can be cancelled")
            if task.state == TaskState.RUNNING:
                await tx.run(self.sql.close_attempt, [now_ms, "cancelled", reason, task_id])
            return await self._save(
                tx, task, state=TaskState.ERROR, error_message=f"cancelled: {reason}",
                fence=task.fence + 1, finished_at=now_ms, lease_expires_at=None,
            )

        return await self._write(change)

    # -- the worker side -----------------------------------------------------------------

    async def claim_task(
        self, worker_id: str, task_types: Sequence[str], lease_ms: int, now_ms: int,
        elsewhere_ms: int = 0,
    ) -> Task | None:
        if not task_types:
            return None
        sql, args = self.sql.claimable(task_types, now_ms,
                                       avoid=(worker_id, now_ms - elsewhere_ms))

        async def change(tx: Tx) -> Task | None:
            candidates = [queries.task_from_row(r) for r in await tx.all(sql, args)]
            if not candidates:
                return None
            task = min(candidates, key=policy.claim_order)
            claimed = await self._save(
                tx, task, state=TaskState.RUNNING, worker_id=worker_id,
                attempts=task.attempts + 1, fence=task.fence + 1, started_at=now_ms,
                lease_expires_at=now_ms + lease_ms, progress_phase="", progress_fraction=0.0,
            )
            await self._add_attempt(tx, claimed, worker_id, now_ms, None, "running", "")
            return claimed

        return await self._write(change)

    async def next_task(self, task_types: Sequence[str], now_ms: int) -> Task | None:
        if not task_types:
            return None
        sql, args = self.sql.claimable(task_types, now_ms, lock=False)
        rows = await self._read(lambda tx: tx.all(sql, args))
        return min((queries.task_from_row(r) for r in rows), key=policy.claim_order, default=None)

    async def renew_lease(self, task_id: str, fence: int, lease_ms: int, now_ms: int) -> Task:
        async def change(tx: Tx) -> Task:
            task = await self._held(tx, task_id, fence)
            return await self._save(tx, task, lease_expires_at=now_ms + lease_ms)

        return await self._write(change)

    async def set_progress(self, task_id: str, fence: int, phase: str, fraction: float) -> None:
        async def change(tx: Tx) -> None:
            task = await self._held(tx, task_id, fence)
            await self._save(tx, task, progress_phase=phase, progress_fraction=fraction)

        await self._write(change)

    async def finish_task(
        self, task_id: str, fence: int, result_size: int, result_sha256: str, now_ms: int
    ) -> Task:
        async def change(tx: Tx) -> Task:
            task = await self._held(tx, task_id, fence)
            await tx.run(self.sql.close_attempt, [now_ms, "finished", "", task_id])
            return await self._save(
                tx, task, state=TaskState.FINISHED, result_size=result_size,
                result_sha256=result_sha256, finished_at=now_ms, lease_expires_at=None,
            )

        return await self._write(change)

    async def fail_task(
        self, task_id: str, fence: int, reason: str, retryable: bool, retry_at_ms: int,
        now_ms: int,
    ) -> Task:
        async def change(tx: Tx) -> Task:
            task = await self._held(tx, task_id, fence)
            await tx.run(self.sql.close_attempt, [now_ms, "failed", reason, task_id])
            if policy.should_retry(retryable, task.attempts, task.max_attempts):
                return await self._save(
                    tx, task, state=TaskState.INIT, not_before=retry_at_ms, lease_expires_at=None
                )
            return await self._give_up(tx, task, now_ms)

        return await self._write(change)

    async def requeue_expired(
        self, now_ms: int, processing_timeouts_ms: Mapping[str, int], limit: int = 100
    ) -> list[Task]:
        """Each task in its own transaction: a row the database refuses to write is named in the
        log and skipped, and does not hold back the others (it stays for the next sweep)."""
        sql, args = self.sql.expired(now_ms, processing_timeouts_ms, limit)
        rows = await self._read(lambda tx: tx.all(sql, args))
        requeued = []
        for task_id in [queries.task_from_row(r).id for r in rows]:
            try:
                task = await self._write(
                    lambda tx, t=task_id: self._requeue_if_expired(  # type: ignore[misc]
                        tx, t, now_ms, processing_timeouts_ms)
                )
            except exceptions.StoreRefused as exc:
                log.error("an expired task cannot be taken back", task_id=task_id, error=str(exc))
                continue
            if task is not None:
                requeued.append(task)
        return requeued

    async def _requeue_if_expired(
        self, tx: Tx, task_id: str, now_ms: int, processing_timeouts_ms: Mapping[str, int]
    ) -> Task | None:
        try:
            task = await self._task(tx, task_id, lock=True)
        except exceptions.TaskNotFound:
            return None
        if task.state != TaskState.RUNNING or not policy.expiry_reason(
            task, now_ms, processing_timeouts_ms
        ):
            return None  # finished, renewed or taken back since it was listed
        return await self._requeue(tx, task, now_ms, processing_timeouts_ms)

    async def extend_leases(self, until_ms: int, lease_ms: int,
                            skip_workers: Collection[str] = ()) -> int:
        return await self._write(
            lambda tx: tx.run(*self.sql.extend_leases(until_ms, sorted(skip_workers), lease_ms))
        )

    async def release_task(self, task_id: str, fence: int, reason: str, now_ms: int) -> Task:
        async def change(tx: Tx) -> Task:
            task = await self._held(tx, task_id, fence)
            await tx.run(self.sql.close_attempt, [now_ms, "released", reason, task_id])
            # The released attempt does not count: the task names the worker of the attempt
            # before it again (the dispatcher keeps a retry away from that one), or of the
            # result dropped before it, or none (a reset of a task in error names none)
            attempts = task.attempts - 1
            before = [a for a in await self._history(tx, task_id) if a.outcome != "released"]
            worker_id = before[-1].worker_id if before else ""
            return await self._save(
                tx, task, state=TaskState.INIT, attempts=attempts, not_before=now_ms,
                lease_expires_at=None, worker_id=worker_id,
            )

        return await self._write(change)

    # -- retention and payload references ----------------------------------------------------

    async def delete_terminal_before(self, cutoff_ms: int, limit: int = 1000) -> int:
        async def change(tx: Tx) -> int:
            rows = await tx.all(self.sql.select_terminal_before, [cutoff_ms, limit])
            if not rows:
                return 0
            return await tx.run(*self.sql.delete_terminal([r[0] for r in rows], cutoff_ms))

        return await self._write(change)

    async def referenced_blobs(self) -> set[str]:
        rows = await self._read(lambda tx: tx.all(self.sql.referenced_blobs))
        return {r[0] for r in rows}

    async def payload_needed(self, sha256: str) -> bool:
        row = await self._read(lambda tx: tx.one(self.sql.payload_needed, [sha256, sha256]))
        return row is not None

    # -- resources -----------------------------------------------------------------------

    async def add_resource(self, resource: Resource) -> Resource:
        args = [resource.sha256, resource.name, resource.size, resource.created_at]

        async def change(tx: Tx) -> Resource:
            await tx.run(self.sql.insert_resource, args)
            row = await tx.one(self.sql.select_resource, [resource.sha256])
            assert row is not None
            return _resource(row)

        return await self._write(change)

    async def get_resource(self, sha256: str) -> Resource | None:
        row = await self._read(lambda tx: tx.one(self.sql.select_resource, [sha256]))
        return None if row is None else _resource(row)

    async def list_resources(self) -> list[Resource]:
        rows = await self._read(lambda tx: tx.all(self.sql.list_resources))
        return [_resource(r) for r in rows]

    async def delete_resource(self, sha256: str) -> str | None:
        async def change(tx: Tx) -> str | None:
            row = await tx.one(self.sql.task_naming, [f"%zkey={sha256}%"])
            if row is not None:
                return str(row[0])
            await tx.run(self.sql.delete_resource, [sha256])
            return None

        return await self._write(change)

    # -- blobs kept in the database ------------------------------------------------------

    async def blob_begin(self, upload_id: str, sha256: str, size: int, now_ms: int) -> None:
        await self._write(
            lambda tx: tx.run(self.sql.insert_blob, [upload_id, sha256, size, now_ms])
        )

    async def blob_put_chunk(self, upload_id: str, seq: int, data: bytes,
                             now_ms: int | None = None) -> None:
        args = [upload_id, seq, data, upload_id]

        async def change(tx: Tx) -> int:
            stored = await tx.run(self.sql.put_chunk, args)
            if stored and now_ms is not None:
                await tx.run(self.sql.touch_upload, [now_ms, upload_id])
            return stored

        if not await self._write(change):
            raise exceptions.PayloadNotFound(
                f"Upload {upload_id} is gone (cleaned up or already complete): send it again",
                upload_id=upload_id,
            )

    async def blob_touch(self, sha256: str, now_ms: int) -> None:
        await self._write(lambda tx: tx.run(self.sql.touch_blob, [now_ms, sha256]))

    async def blob_commit(self, upload_id: str) -> None:
        async def change(tx: Tx) -> bool:
            """Whether this upload duplicates a ready one (a gone upload is left alone)."""
            row = await tx.one(self.sql.select_upload_sha256, [upload_id])
            if row is None:
                return False
            uploads = await tx.all(self.sql.lock_uploads_of_sha256, [row[0]])
            if any(ready for other, ready in uploads if other != upload_id):
                return True
            await tx.run(self.sql.set_ready, [upload_id])
            return False

        if await self._write(change):
            await self.blob_delete(upload_id)

    async def blob_delete(self, upload_id: str) -> None:
        # Hidden from readers first, so that nobody streams a blob losing its chunks.
        await self._write(lambda tx: tx.run(self.sql.unset_ready, [upload_id]))
        args = self.sql.delete_chunks_args(upload_id, DELETE_CHUNKS_PER_TX)
        while await self._write(lambda tx: tx.run(self.sql.delete_chunks, args)):
            pass
        await self._write(lambda tx: tx.run(self.sql.delete_blob, [upload_id]))

    async def blob_find(self, sha256: str) -> BlobRow | None:
        row = await self._read(lambda tx: tx.one(self.sql.find_blob, [sha256]))
        return None if row is None else queries.blob_from_row(row)

    async def blob_read_chunk(self, upload_id: str, seq: int) -> bytes | None:
        row = await self._read(lambda tx: tx.one(self.sql.read_chunk, [upload_id, seq]))
        return None if row is None else bytes(row[0])

    async def blob_list(self) -> list[BlobRow]:
        rows = await self._read(lambda tx: tx.all(self.sql.list_blobs))
        return [queries.blob_from_row(r) for r in rows]

    # -- workers ---------------------------------------------------------------------------

    async def database_time_ms(self) -> int | None:
        statement = self.sql.database_time
        if statement is None:
            return None
        row = await self._read(lambda tx: tx.one(statement))
        return None if row is None else int(row[0])

    async def register_worker(self, worker: WorkerRecord, live_ms: int) -> WorkerRecord | None:
        async def change(tx: Tx) -> WorkerRecord | None:
            # Insert first: a locking read of a row that is not there yet locks nothing, and
            # two first registrations of one id through two brokers would both pass.
            if await tx.run(self.sql.insert_worker, queries.worker_args(worker)) == 1:
                return None
            row = await tx.one(self.sql.lock_worker, [worker.worker_id])
            if row is not None:
                held = queries.worker_from_row(row)
                if (held.instance and worker.instance and held.instance != worker.instance
                        and worker.last_seen_at - held.last_seen_at < live_ms):
                    return held
            await tx.run(self.sql.upsert_worker, queries.worker_args(worker))
            return None

        return await self._write(change)

    async def update_worker(self, worker: WorkerRecord) -> bool:
        return await self._if_registered(worker.worker_id, worker.session, lambda _: worker)

    async def worker_disconnected(self, worker_id: str, session: str, now_ms: int,
                                  handed_off: bool = False) -> None:
        await self._if_registered(worker_id, session, lambda held: dataclasses.replace(
            held, instance="", session="", disconnected_at=0 if handed_off else now_ms,
            handed_off_at=now_ms if handed_off else 0))

    async def _if_registered(self, worker_id: str, session: str,
                             change: Callable[[WorkerRecord], WorkerRecord]) -> bool:
        """Store `change` of the worker's record while registration `session` is the current
        one (not replaced by a newer, on another broker say); whether it was."""
        async def write(tx: Tx) -> bool:
            row = await tx.one(self.sql.lock_worker, [worker_id])
            if row is None or (held := queries.worker_from_row(row)).session != session:
                return False
            await tx.run(self.sql.upsert_worker, queries.worker_args(change(held)))
            return True

        return await self._write(write)

    async def touch_worker(self, worker_id: str, now_ms: int) -> None:
        await self._write(lambda tx: tx.run(self.sql.touch_worker, [now_ms, worker_id]))

    async def list_workers(self) -> list[WorkerRecord]:
        rows = await self._read(lambda tx: tx.all(self.sql.list_workers))
        return [queries.worker_from_row(r) for r in rows]

    async def get_worker(self, worker_id: str) -> WorkerRecord | None:
        row = await self._read(lambda tx: tx.one(self.sql.get_worker, [worker_id]))
        return None if row is None else queries.worker_from_row(row)

    async def forget_workers_seen_before(self, cutoff_ms: int) -> int:
        async def change(tx: Tx) -> int:
            forgotten = int(await tx.run(self.sql.forget_workers, [cutoff_ms]))
            await tx.run(self.sql.forget_drains)
            return forgotten

        return await self._write(change)

    async def remove_worker(self, worker_id: str) -> bool:
        async def change(tx: Tx) -> bool:
            await tx.run(self.sql.delete_drain, [worker_id])
            return bool(await tx.run(self.sql.delete_worker, [worker_id]))

        return await self._write(change)

    async def drain_worker(self, drain: Drain) -> bool:
        async def change(tx: Tx) -> bool:
            if await tx.one(self.sql.lock_worker, [drain.worker_id]) is None:
                return False
            await tx.run(self.sql.upsert_drain, [drain.worker_id, drain.reason,
                                                 drain.drained_at])
            return True

        return await self._write(change)

    async def resume_worker(self, worker_id: str) -> bool:
        return bool(await self._write(lambda tx: tx.run(self.sql.delete_drain, [worker_id])))

    async def list_drains(self) -> list[Drain]:
        rows = await self._read(lambda tx: tx.all(self.sql.list_drains))
        return [Drain(worker_id=str(r[0]), reason=str(r[1]), drained_at=int(r[2])) for r in rows]

    # -- helpers -------------------------------------------------------------------------

    async def _task(self, tx: Tx, task_id: str, *, lock: bool = False) -> Task:
        row = await tx.one(self.sql.lock_task if lock else self.sql.select_task, [task_id])
        if row is None:
            raise exceptions.TaskNotFound(task_id=task_id)
        return queries.task_from_row(row)

    async def _held(self, tx: Tx, task_id: str, fence: int) -> Task:
        """The task, locked, if it is running under this fencing token."""
        row = await tx.one(self.sql.lock_task, [task_id])
        task = None if row is None else queries.task_from_row(row)
        if task is None or task.state != TaskState.RUNNING or task.fence != fence:
            raise exceptions.StaleFence(task_id=task_id, fence=fence)
        return task

    async def _save(self, tx: Tx, task: Task, **changes: Any) -> Task:
        new = dataclasses.replace(task, version=task.version + 1, **changes)
        await tx.run(self.sql.update_task, queries.task_update_args(new))
        return new

    async def _history(self, tx: Tx, task_id: str) -> list[Attempt]:
        rows = await tx.all(self.sql.select_attempts, [task_id])
        return [queries.attempt_from_row(r) for r in rows]

    async def _add_attempt(
        self, tx: Tx, task: Task, worker_id: str, started_at: int, ended_at: int | None,
        outcome: str, reason: str,
    ) -> None:
        row = await tx.one(self.sql.next_attempt_number, [task.id])
        number = int(row[0]) if row is not None else 1
        attempt = Attempt(
            task_id=task.id, number=number, worker_id=worker_id, started_at=started_at,
            ended_at=ended_at, outcome=outcome, reason=reason,
        )
        await tx.run(self.sql.insert_attempt, queries.attempt_args(attempt))

    async def _give_up(self, tx: Tx, task: Task, now_ms: int, **changes: Any) -> Task:
        """running -> error with every spent attempt's reason (the attempt already closed)."""
        message = policy.exhausted_message(await self._history(tx, task.id))
        return await self._save(
            tx, task, state=TaskState.ERROR, error_message=message, finished_at=now_ms,
            lease_expires_at=None, **changes,
        )

    async def _requeue(
        self, tx: Tx, task: Task, now_ms: int, processing_timeouts_ms: Mapping[str, int]
    ) -> Task:
        reason = policy.expiry_reason(task, now_ms, processing_timeouts_ms) or "lease expired"
        await tx.run(self.sql.close_attempt, [now_ms, "requeued", reason, task.id])
        if policy.should_retry(True, task.attempts, task.max_attempts):
            return await self._save(
                tx, task, state=TaskState.INIT, fence=task.fence + 1, not_before=now_ms,
                lease_expires_at=None,
            )
        return await self._give_up(tx, task, now_ms, fence=task.fence + 1)


#: What a reset and a rerun change alike: the task waits to run again with a fresh budget.
_AGAIN: dict[str, Any] = dict(state=TaskState.INIT, attempts=0, error_message="",
                              started_at=None, finished_at=None, lease_expires_at=None,
                              progress_phase="", progress_fraction=0.0)


def _wrong_state(task: Task, detail: str) -> exceptions.WrongState:
    return exceptions.WrongState(task_id=task.id, state=task.state.name.lower(), detail=detail)


def _resource(row: queries.Row) -> Resource:
    sha256, name, size, created_at = row
    return Resource(sha256=sha256, name=name, size=int(size), created_at=int(created_at))
