"""The store interface. The gRPC service never writes SQL; the store never knows gRPC.

Every time is epoch milliseconds passed in by the caller (`now_ms`), so that tests control the
clock and both backends agree. Each state change is one short transaction and bumps
`tasks.version`. Errors of the driver are translated into `broker.exceptions` at this boundary.
"""

from __future__ import annotations

import abc
from collections.abc import Collection, Mapping, Sequence

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
    WorkerRecord,
)


class Store(abc.ABC):
    dsn: str

    @abc.abstractmethod
    async def open(self) -> None:
        """Connect and apply pending schema migrations (safe when two brokers start at once).

        Raises StoreUnavailable when the database cannot be reached or used.
        """

    @abc.abstractmethod
    async def close(self) -> None: ...

    # -- tasks -------------------------------------------------------------------------------

    @abc.abstractmethod
    async def create_task(self, new: NewTask) -> tuple[Task, bool]:
        """Insert the task in state init unless a task with its id exists.

        Returns (task, created); an existing task is returned unchanged.
        """

    @abc.abstractmethod
    async def get_task(self, task_id: str) -> Task:
        """Raises TaskNotFound."""

    @abc.abstractmethod
    async def list_tasks(
        self, flt: TaskFilter, limit: int, after: PageCursor | None = None
    ) -> list[Task]:
        """Newest first (created_at DESC, id DESC), strictly after the cursor."""

    @abc.abstractmethod
    async def task_counts(self) -> list[TaskCount]:
        """The number of tasks per type and state (those present only)."""

    @abc.abstractmethod
    async def get_attempts(self, task_id: str) -> list[Attempt]:
        """The attempt history, oldest first."""

    @abc.abstractmethod
    async def delete_task(self, task_id: str) -> None:
        """Remove a task and its history (used to undo a submit that lost its payload)."""

    @abc.abstractmethod
    async def reset_task(self, task_id: str, now_ms: int) -> Task:
        """error -> init with attempts = 0, worker cleared, error_message cleared.

        Appends an attempt row (outcome "reset", reason = the old error message) so the old error
        stays in the history. Raises TaskNotFound, or WrongState unless the task is in error.
        """

    @abc.abstractmethod
    async def reset_tasks(self, task_ids: Sequence[str], now_ms: int) -> list[Task]:
        """reset_task for several tasks in one transaction: all are reset, or none."""

    @abc.abstractmethod
    async def rerun_task(self, task_id: str, result_sha256: str, reason: str,
                         now_ms: int) -> Task:
        """finished -> init with its result dropped (a submit asking to run it again, its
        input stored anew): attempts = 0, worker_id kept, naming the worker whose result it was
        (the dispatcher gives the task to another where it can), an attempt row (outcome
        "reset", that worker, `reason`). Raises TaskNotFound, or WrongState unless the task is
        finished, with the result `result_sha256` when that is given (a late rerun must not
        drop the result of the run it asked for)."""

    @abc.abstractmethod
    async def cancel_task(self, task_id: str, reason: str, now_ms: int) -> Task:
        """init or running -> error with error_message "cancelled: <reason>".

        Bumps the fence so a late result of a running attempt is refused, and closes a running
        attempt with outcome "cancelled". Raises TaskNotFound, or WrongState when the task is
        already finished or in error.
        """

    # -- the worker side -----------------------------------------------------------------

    @abc.abstractmethod
    async def claim_task(
        self, worker_id: str, task_types: Sequence[str], lease_ms: int, now_ms: int,
        elsewhere_ms: int = 0,
    ) -> Task | None:
        """Atomically take the highest-priority, oldest init task of one of the types.

        Only tasks with not_before <= now_ms qualify; a task whose last run was worker_id's
        only once it has been ready for `elsewhere_ms` (another worker, maybe connected to
        another broker, gets it first where one is free). The task becomes running for worker_id,
        with attempts + 1, fence + 1, started_at = now_ms, lease_expires_at = now_ms + lease_ms,
        and an attempt row (outcome "running"). No task is ever given to two claimers, across
        connections and processes (MariaDB: SELECT ... FOR UPDATE SKIP LOCKED). None if no task.
        """

    @abc.abstractmethod
    async def next_task(self, task_types: Sequence[str], now_ms: int) -> Task | None:
        """The task claim_task would take now, without taking it: a hint for choosing the
        claimer, which another claimer may beat."""

    @abc.abstractmethod
    async def renew_lease(self, task_id: str, fence: int, lease_ms: int, now_ms: int) -> Task:
        """Extend a running task's lease. Raises StaleFence unless running with this fence."""

    @abc.abstractmethod
    async def set_progress(self, task_id: str, fence: int, phase: str, fraction: float) -> None:
        """Record progress. Raises StaleFence unless running with this fence."""

    @abc.abstractmethod
    async def finish_task(
        self, task_id: str, fence: int, result_size: int, result_sha256: str, now_ms: int
    ) -> Task:
        """running -> finished with the result, closing the attempt with outcome "finished".

        Raises StaleFence unless the task is running with this fence (fencing of late results).
        """

    @abc.abstractmethod
    async def fail_task(
        self, task_id: str, fence: int, reason: str, retryable: bool, retry_at_ms: int,
        now_ms: int,
    ) -> Task:
        """Close the attempt with outcome "failed" and this reason, then:

        retryable and attempts < max_attempts -> init with not_before = retry_at_ms;
        otherwise -> error with a message listing every attempt's reason since the last reset.
        Raises StaleFence unless the task is running with this fence.
        """

    @abc.abstractmethod
    async def requeue_expired(
        self, now_ms: int, processing_timeouts_ms: Mapping[str, int], limit: int = 100
    ) -> list[Task]:
        """Housekeeping: running tasks whose lease expired, or which ran longer than their
        type's processing timeout, are requeued like a retryable failure (fence + 1, attempt
        closed with outcome "requeued" and the reason). Safe when two brokers run it at once:
        each task is requeued exactly once. Returns the tasks after the change.
        """

    @abc.abstractmethod
    async def extend_leases(self, until_ms: int, lease_ms: int,
                            skip_workers: Collection[str] = ()) -> int:
        """Give running tasks a lease until at least until_ms (a broker starting up: their
        workers could not heartbeat while it was down); not those of `skip_workers`, nor those
        whose lease was extended so since their worker's last heartbeat (`lease_ms`: the
        lease a renewal gives). Returns how many were extended."""

    @abc.abstractmethod
    async def release_task(self, task_id: str, fence: int, reason: str, now_ms: int) -> Task:
        """Hand a running task back to init at once (worker shutting down), attempts - 1 so the
        hand-back does not use up an attempt. Raises StaleFence."""

    # -- retention and payload references ----------------------------------------------------

    @abc.abstractmethod
    async def delete_terminal_before(self, cutoff_ms: int, limit: int = 1000) -> int:
        """Delete finished and error tasks (and their history) with finished_at < cutoff."""

    @abc.abstractmethod
    async def referenced_blobs(self) -> set[str]:
        """sha256s still needed: payloads of tasks not finished, results of every task, and
        resources."""

    @abc.abstractmethod
    async def payload_needed(self, sha256: str) -> bool:
        """Whether a task that is not finished (or a resource) still needs this blob."""

    # -- resources -------------------------------------------------------------------------

    @abc.abstractmethod
    async def add_resource(self, resource: Resource) -> Resource:
        """Record a stored resource blob (kept by the cleaner); an existing one is returned."""

    @abc.abstractmethod
    async def get_resource(self, sha256: str) -> Resource | None: ...

    # -- blobs kept in the database (the `db` payload store) ------------------------------

    @abc.abstractmethod
    async def list_resources(self) -> list[Resource]:
        """Every resource, oldest first."""

    @abc.abstractmethod
    async def delete_resource(self, sha256: str) -> str | None:
        """Forget a resource, unless a task that is not finished names it in its comment
        (`zkey=<sha256>`): that task's id then, and nothing is deleted."""

    @abc.abstractmethod
    async def blob_begin(self, upload_id: str, sha256: str, size: int, now_ms: int) -> None:
        """Start an upload: a row that is not ready yet."""

    @abc.abstractmethod
    async def blob_put_chunk(self, upload_id: str, seq: int, data: bytes,
                             now_ms: int | None = None) -> None:
        """Store one chunk (at most 1 MiB) in its own short transaction; with now_ms, the
        upload counts as made then (the cleaner leaves uploads in progress alone)."""

    @abc.abstractmethod
    async def blob_touch(self, sha256: str, now_ms: int) -> None:
        """The ready upload of this sha256 counts as made at now_ms: a submit reusing it must
        not lose it to a cleaner that read the references before that submit's task."""

    @abc.abstractmethod
    async def blob_commit(self, upload_id: str) -> None:
        """Mark the upload ready. When another ready upload of the same sha256 exists, this one
        is deleted instead (its chunks too): readers always find exactly one."""

    @abc.abstractmethod
    async def blob_delete(self, upload_id: str) -> None:
        """Delete an upload's row and chunks (in bounded transactions)."""

    @abc.abstractmethod
    async def blob_find(self, sha256: str) -> BlobRow | None:
        """The ready upload of this sha256, if any."""

    @abc.abstractmethod
    async def blob_read_chunk(self, upload_id: str, seq: int) -> bytes | None:
        """Chunk seq of an upload; None past the end."""

    @abc.abstractmethod
    async def blob_list(self) -> list[BlobRow]:
        """Every upload, ready or not (for the cleaner)."""

    # -- workers ---------------------------------------------------------------------------

    @abc.abstractmethod
    async def touch_worker(self, worker_id: str, now_ms: int) -> None:
        """Record a heartbeat: last_seen_at = now_ms."""

    @abc.abstractmethod
    async def database_time_ms(self) -> int | None:
        """The database server's clock (ms since the epoch); None where it is this host's."""

    @abc.abstractmethod
    async def register_worker(self, worker: WorkerRecord, live_ms: int) -> WorkerRecord | None:
        """Store a registration (keeping when the id first registered), unless another worker
        process holds the id: its record says so (another `instance`, not ended) and was seen
        less than `live_ms` ago. That record is returned then, and nothing is stored."""

    @abc.abstractmethod
    async def update_worker(self, worker: WorkerRecord) -> bool:
        """Store what a connected worker's registration says now (its loaded keys, its
        pause), unless a newer registration replaced it (another `session`); whether it did."""

    @abc.abstractmethod
    async def worker_disconnected(self, worker_id: str, session: str, now_ms: int,
                                  handed_off: bool = False) -> None:
        """The stream of registration `session` ended: the id is free for another process,
        unless a newer registration holds it. `handed_off`: the broker ended it (stopping, or
        sending the worker to another broker), so the worker is not recorded as gone."""

    @abc.abstractmethod
    async def list_workers(self) -> list[WorkerRecord]:
        """Every known worker, by worker_id."""

    @abc.abstractmethod
    async def get_worker(self, worker_id: str) -> WorkerRecord | None:
        """The worker's record, as last registered; None for an unknown worker."""

    @abc.abstractmethod
    async def forget_workers_seen_before(self, cutoff_ms: int) -> int:
        """Remove the workers last seen before the cutoff, but drained ones; how many."""

    @abc.abstractmethod
    async def remove_worker(self, worker_id: str) -> bool:
        """Forget a worker (and its drain); False when unknown."""

    @abc.abstractmethod
    async def drain_worker(self, drain: Drain) -> bool:
        """Give a known worker no new task until resumed; False when the worker is unknown.
        Draining it again keeps when it was first drained and takes the new reason, if any."""

    @abc.abstractmethod
    async def resume_worker(self, worker_id: str) -> bool:
        """End a worker's drain; False when it was not drained."""

    @abc.abstractmethod
    async def list_drains(self) -> list[Drain]:
        """Every drain, by worker_id."""
