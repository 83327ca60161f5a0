"""Task operations: the layer between the gRPC service and the store.

It owns the rules that need both the store and the payloads (submit, results, cleanup of a
payload once no unfinished task needs it) and tells watchers about every change it makes.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
import re
from collections.abc import AsyncIterable, AsyncIterator, Sequence

import structlog

from broker import cleaner, exceptions, metrics, models, policy
from broker.config import MAX_ATTEMPTS, BrokerConfig
from broker.models import Attempt, PageCursor, Task, TaskFilter, TaskState
from broker.payloads import PayloadStore
from broker.payloads.base import hash_chunk
from broker.store import Store
from broker.watch import ChangeHub

log = structlog.get_logger(__name__)

#: Attempt outcomes after which a task runs again: their reason is its `last_failure`.
RETRIED_OUTCOMES = ("failed", "requeued")

SHA256_HEX = re.compile(r"^[0-9a-f]{64}$")
NAME = re.compile(r"^[A-Za-z0-9_.:-]{1,64}$")


@dataclasses.dataclass(frozen=True, kw_only=True)
class SubmitHeader:
    task_type: str
    miner: str
    comment: str
    priority: int
    payload_size: int
    payload_sha256: str
    max_attempts: int = 0  #: 0 takes the broker's default
    #: A finished task's result was found wrong or lost: run it again (saying this, or a
    #: default reason when empty); nothing for a task not finished.
    rerun: bool = False
    rerun_reason: str = ""
    rerun_result_sha256: str = ""  #: the result found wrong; "" for whatever it is


@dataclasses.dataclass(frozen=True)
class SubmitPlan:
    """What a submit needs after its header: the existing task, or a payload upload or not."""

    new: models.NewTask
    existing: Task | None
    send_payload: bool
    stored_size: int | None = None  #: of the stored copy found, when it is the wrong size
    rerun: str | None = None  #: why the existing, finished task runs again; None: it does not
    rerun_result: str = ""  #: the result found wrong, if named


def validate_header(h: SubmitHeader, max_payload_bytes: int) -> None:
    if not NAME.match(h.task_type):
        raise exceptions.InvalidArgument(
            detail=f"task_type {h.task_type!r} must be 1-64 letters, digits or _.:- (e.g. c2)"
        )
    if not NAME.match(h.miner):
        raise exceptions.InvalidArgument(
            detail=f"miner {h.miner!r} must be 1-64 letters, digits or _.:- (e.g. f01000)"
        )
    if not SHA256_HEX.match(h.payload_sha256):
        raise exceptions.InvalidArgument(
            detail="payload_sha256 must be 64 lower-case hex digits"
        )
    if h.payload_size <= 0:
        # No task type has an empty input: it would only spend an attempt on a worker.
        raise exceptions.InvalidArgument(detail="the payload is empty: submit the task's input "
                                         "(a C1 output for c2, a .wtns for groth16)")
    if h.payload_size > max_payload_bytes:
        raise exceptions.PayloadTooLarge(size=h.payload_size, limit=max_payload_bytes)
    if not 0 <= h.max_attempts <= MAX_ATTEMPTS:
        raise exceptions.InvalidArgument(
            detail=f"max_attempts must be 0 (the broker's default) to {MAX_ATTEMPTS}")
    if len(h.comment) > 1024:
        raise exceptions.InvalidArgument(detail="comment is longer than 1024 characters")


def retrying(task: Task) -> bool:
    """Waiting to run again: it ran since it was submitted or reset (a reset starts its
    attempts over)."""
    return task.state == TaskState.INIT and task.attempts > 0


def last_failure(task: Task, history: Sequence[Attempt]) -> str:
    """Why a task that waits to run again ended its last attempt; "" for one that does not."""
    if not retrying(task):
        return ""
    ended = [a for a in history if a.outcome in RETRIED_OUTCOMES]
    return ended[-1].reason if ended else ""


class TaskManager:
    def __init__(
        self, *, store: Store, payloads: PayloadStore, config: BrokerConfig, hub: ChangeHub
    ) -> None:
        self.store = store
        self.payloads = payloads
        self.config = config
        self.hub = hub
        self._releasing: set[asyncio.Task[None]] = set()  #: payload releases under way

    # -- submit ----------------------------------------------------------------------------

    async def plan_submit(self, header: SubmitHeader) -> SubmitPlan:
        validate_header(header, self.config.max_payload_bytes)
        new = models.NewTask(
            id=models.task_id(header.miner, header.task_type, header.payload_sha256),
            task_type=header.task_type,
            miner=header.miner,
            comment=header.comment,
            priority=header.priority,
            payload_size=header.payload_size,
            payload_sha256=header.payload_sha256,
            max_attempts=header.max_attempts or self.config.max_attempts_for(header.task_type),
            created_at=models.now_ms(),
        )
        try:
            existing: Task | None = await self.store.get_task(new.id)
        except exceptions.TaskNotFound:
            existing = None
        present = await self.payloads.size(new.payload_sha256)
        # A stored copy of the wrong size was damaged in the store: this upload replaces it.
        damaged = present if present not in (None, new.payload_size) else None
        if existing is not None:
            # A task still to run whose payload is gone (a cleanup that raced the submit which
            # found it stored, or a finished task run again: its input was dropped when it
            # finished) or damaged takes it again from this submit rather than fail.
            rerun = header.rerun and existing.state == TaskState.FINISHED
            lost = (rerun or existing.state != TaskState.FINISHED) and (
                present != existing.payload_size)
            why = (header.rerun_reason or "its result was found wrong or lost") if rerun else None
            return SubmitPlan(new, existing, send_payload=lost, stored_size=damaged, rerun=why,
                              rerun_result=header.rerun_result_sha256)
        return SubmitPlan(new, None, send_payload=present != new.payload_size,
                          stored_size=damaged)

    async def complete_submit(
        self, plan: SubmitPlan, chunks: AsyncIterable[bytes] | None
    ) -> Task:
        """Store the payload (when the plan asked for it), then the task. Idempotent."""
        new = plan.new
        if plan.send_payload:
            if chunks is None:
                raise exceptions.TruncatedUpload(received=0, expected=new.payload_size)
            await self.payloads.write(new.payload_sha256, new.payload_size, chunks)
            if plan.stored_size is not None:
                log.warning("a damaged stored payload was replaced by this upload",
                            sha256=new.payload_sha256, damaged_bytes=plan.stored_size,
                            bytes=new.payload_size)
        else:  # reused as stored: new again for the cleaner, whose references predate this task
            await self.payloads.touch(new.payload_sha256)
        if plan.existing is not None:
            if plan.send_payload and plan.rerun is None:
                log.warning("payload of a waiting task was missing or damaged; stored again",
                            task_id=plan.existing.id, sha256=new.payload_sha256)
            if plan.rerun is not None:
                return await self._rerun(plan.existing, plan.rerun, plan.rerun_result)
            return plan.existing
        task, created = await self.store.create_task(new)
        if created and not await self.payloads.exists(new.payload_sha256):
            # A cleanup removed the shared payload between the plan and the insert.
            await self.store.delete_task(new.id)
            raise exceptions.PayloadNotFound(sha256=new.payload_sha256)
        if created:
            metrics.show_type(task.task_type)
            metrics.SUBMITTED.labels(task.task_type).inc()
            if plan.send_payload:
                metrics.PAYLOAD_BYTES.inc(task.payload_size)
            log.info("task submitted", task_id=task.id, task_type=task.task_type,
                     miner=task.miner, payload_bytes=task.payload_size,
                     uploaded=plan.send_payload)
            self.hub.notify(task.id)
        return task

    async def _rerun(self, task: Task, reason: str, result_sha256: str) -> Task:
        """finished -> init, its result dropped, once its input is stored again (a task to run
        without one would fail for good at once). PayloadNotFound when the input is not there
        (a release of it raced this submit): the next submit stores it."""
        await self.settle(self.config.db_answer_s)  # a finish just before may be dropping
        # this very input
        if not await self.payloads.exists(task.payload_sha256):
            raise exceptions.PayloadNotFound(sha256=task.payload_sha256)
        try:
            again = await self.store.rerun_task(task.id, result_sha256, policy.clipped(reason),
                                                models.now_ms())
        except exceptions.WrongState:  # run again already (another submit), or a newer result
            return await self.store.get_task(task.id)
        self.hub.notify(task.id)
        log.warning("finished task runs again: its result was dropped", task_id=task.id,
                    reason=reason, result_of=task.worker_id)
        if not await self.payloads.exists(task.payload_sha256):
            # Released by another broker meanwhile: the next submit stores it again
            raise exceptions.PayloadNotFound(sha256=task.payload_sha256)
        return again

    # -- queries ---------------------------------------------------------------------------

    async def get(self, task_id: str) -> tuple[Task, list[Attempt]]:
        task = await self.store.get_task(task_id)
        return task, await self.store.get_attempts(task_id)

    async def list_tasks(
        self, flt: TaskFilter, page_size: int, after: PageCursor | None
    ) -> tuple[list[Task], PageCursor | None]:
        page_size = min(max(page_size or 100, 1), 1000)
        tasks = await self.store.list_tasks(flt, page_size + 1, after)
        more = len(tasks) > page_size
        tasks = tasks[:page_size]
        cursor = PageCursor(created_at=tasks[-1].created_at, task_id=tasks[-1].id) if more else None
        return tasks, cursor

    async def last_failures(self, tasks: Sequence[Task]) -> dict[str, str]:
        """Why each waiting task's last attempt ended, for those that ran before (few: a
        failed attempt waits out a backoff)."""
        found = {}
        for task in filter(retrying, tasks):
            if reason := last_failure(task, await self.store.get_attempts(task.id)):
                found[task.id] = reason
        return found

    async def watch(self, task_id: str) -> AsyncIterator[Task]:
        """The task now, then each new version, ending after a terminal state."""
        task = await self.store.get_task(task_id)
        yield task
        while not task.state.terminal:
            await self.hub.wait(task_id, self.config.watch_poll_s)
            current = await self.store.get_task(task_id)
            if current.version != task.version:
                task = current
                yield task

    # -- operator actions ------------------------------------------------------------------

    async def reset(self, task_ids: Sequence[str]) -> list[Task]:
        """error -> init for all of them in one transaction: one bad id changes nothing."""
        done = await self.store.reset_tasks(list(dict.fromkeys(task_ids)), models.now_ms())
        for task in done:
            self.hub.notify(task.id)
            log.info("task reset", task_id=task.id)
        return done

    async def cancel(self, task_id: str, reason: str) -> Task:
        reason = policy.clipped(reason or "by operator")
        task = await self.store.cancel_task(task_id, reason, models.now_ms())
        metrics.ERRORED.labels(task.task_type, "cancelled").inc()
        self.hub.notify(task_id)
        log.info("task cancelled", task_id=task_id, reason=reason)
        return task

    # -- results ---------------------------------------------------------------------------

    async def open_result(self, task_id: str) -> tuple[Task, AsyncIterator[bytes]]:
        task = await self.store.get_task(task_id)
        if task.state != TaskState.FINISHED:
            raise exceptions.ResultNotFound(task_id=task_id, state=task.state.name.lower())
        return task, self.payloads.read(task.result_sha256)

    async def open_payload(self, task_id: str) -> tuple[Task, AsyncIterator[bytes]]:
        task = await self.store.get_task(task_id)
        if task.state == TaskState.FINISHED and not await self.payloads.exists(
                task.payload_sha256):
            raise exceptions.PayloadDropped(task_id=task_id)
        return task, self.read_payload(task)

    async def read_payload(self, task: Task) -> AsyncIterator[bytes]:
        """The task's stored payload, checked against the size and sha256 it was submitted
        with: a copy damaged in the store (a disk or NFS fault, an edit) fails the read, before
        the first byte when its size is wrong, at the end when its content is, so that it is
        never passed off as the task's input."""
        sha = task.payload_sha256
        stored = await self.payloads.size(sha)
        if stored is None:  # (a folder gone raised PayloadStoreUnavailable already)
            raise exceptions.PayloadNotFound(sha256=sha)
        if stored != task.payload_size:
            raise await self._damaged(task, f"{stored} bytes stored, {task.payload_size} "
                                      "submitted")
        hasher = hashlib.sha256()
        async for data in self.payloads.read(sha):
            await hash_chunk(hasher, data)
            yield data
        if (actual := hasher.hexdigest()) != sha:
            raise await self._damaged(task, f"its sha256 is {actual}, not {sha}")

    async def _damaged(self, task: Task, detail: str) -> exceptions.PayloadDamagedInStore:
        """Said and counted; the copy is removed (nothing can use it), so that submitting the
        input again stores it anew."""
        log.error("stored payload damaged: not served, removed", task_id=task.id,
                  sha256=task.payload_sha256, detail=detail)
        metrics.PAYLOADS_DAMAGED.inc()
        with contextlib.suppress(exceptions.PayloadStoreUnavailable, OSError):
            await self.payloads.delete(task.payload_sha256)
        return exceptions.PayloadDamagedInStore(task_id=task.id, detail=detail)

    # -- resources (proving keys) -----------------------------------------------------------

    async def get_resource(self, sha256: str) -> models.Resource:
        resource = await self.store.get_resource(sha256)
        if resource is None or not await self.payloads.exists(sha256):
            raise exceptions.ResourceNotFound(sha256=sha256)
        return resource

    async def put_resource(
        self, name: str, size: int, sha256: str, chunks: AsyncIterable[bytes]
    ) -> models.Resource:
        """Store a resource once; uploading it again is harmless."""
        if not SHA256_HEX.match(sha256):
            raise exceptions.InvalidArgument(detail="sha256 must be 64 lower-case hex digits")
        if size < 0:
            raise exceptions.InvalidArgument(detail="size must not be negative")
        if size > self.config.max_payload_bytes:
            raise exceptions.PayloadTooLarge(size=size, limit=self.config.max_payload_bytes)
        await self.payloads.write(sha256, size, chunks)
        resource = await self.store.add_resource(models.Resource(
            sha256=sha256, name=name[:255], size=size, created_at=models.now_ms()
        ))
        log.info("resource stored", sha256=sha256, name=resource.name, bytes=size)
        return resource

    async def list_resources(self) -> list[models.Resource]:
        return await self.store.list_resources()

    async def delete_resource(self, sha256: str) -> models.Resource:
        """Forget a proving key and drop its file, unless a waiting or running task needs it."""
        if not SHA256_HEX.fullmatch(sha256):
            raise exceptions.InvalidArgument(
                detail=f"{sha256!r} is not a sha256 (64 lower-case hex digits): see "
                "`gpuproxy keys list`")
        resource = await self.store.get_resource(sha256)
        if resource is None:
            raise exceptions.ResourceNotFound(sha256=sha256)
        if (task_id := await self.store.delete_resource(sha256)) is not None:
            raise exceptions.ResourceInUse(sha256=sha256, task_id=task_id)
        await cleaner.release_payload(self.store, self.payloads, sha256)
        log.info("resource deleted", sha256=sha256, name=resource.name)
        return resource

    async def open_resource(self, sha256: str) -> tuple[models.Resource, AsyncIterator[bytes]]:
        resource = await self.get_resource(sha256)
        return resource, self.payloads.read(sha256)

    # -- the worker side -------------------------------------------------------------------

    async def check_held(self, task_id: str, fence: int) -> Task:
        """The task, when it is running under this fence; StaleFence otherwise."""
        task = await self.store.get_task(task_id)
        if task.state != TaskState.RUNNING or task.fence != fence:
            raise exceptions.StaleFence(task_id=task_id, fence=fence)
        return task

    async def renew(self, task_id: str, fence: int) -> Task:
        return await self.store.renew_lease(
            task_id, fence, int(self.config.lease_s * 1000), models.now_ms()
        )

    async def progress(self, task_id: str, fence: int, phase: str, fraction: float) -> None:
        await self.store.set_progress(task_id, fence, phase[:64], min(max(fraction, 0.0), 1.0))
        self.hub.notify(task_id)

    async def fail(self, task_id: str, fence: int, message: str, retryable: bool) -> Task:
        held = await self.check_held(task_id, fence)
        message = policy.clipped(message)
        now = models.now_ms()
        retry_at = now + policy.retry_delay_ms(
            held.attempts, self.config.retry_backoff_s, self.config.retry_backoff_max_s
        )
        task = await self.store.fail_task(task_id, fence, message, retryable, retry_at, now)
        metrics.FAILED_ATTEMPTS.labels(task.task_type, str(retryable).lower()).inc()
        if task.state == TaskState.ERROR:
            metrics.ERRORED.labels(task.task_type, "failed").inc()
        self.hub.notify(task_id)
        log.warning("task attempt failed", task_id=task_id, worker_id=held.worker_id,
                    retryable=retryable, reason=message, state=task.state.name.lower())
        return task

    async def release(self, task_id: str, fence: int, reason: str) -> Task:
        reason = policy.clipped(reason)
        task = await self.store.release_task(task_id, fence, reason, models.now_ms())
        self.hub.notify(task_id)
        log.info("task handed back", task_id=task_id, reason=reason)
        return task

    async def finish(
        self, task_id: str, fence: int, size: int, sha256: str, chunks: AsyncIterable[bytes]
    ) -> Task:
        """Record a worker's result: stored first, then the task finishes (fenced)."""
        await self.payloads.write(sha256, size, chunks)
        task = await self.store.finish_task(task_id, fence, size, sha256, models.now_ms())
        metrics.FINISHED.labels(task.task_type).inc()
        self.hub.notify(task_id)
        log.info("task finished", task_id=task_id, worker_id=task.worker_id,
                 attempts=task.attempts)
        # After the answer: deleting a payload held in the database (hundreds of MB of chunk
        # rows) takes seconds, which the worker's slot would otherwise wait out
        release = asyncio.create_task(self._release(task))
        self._releasing.add(release)
        release.add_done_callback(self._releasing.discard)
        return task

    async def settle(self, timeout_s: float) -> None:
        """Wait (at most timeout_s) for payload releases under way: at shutdown, before the
        store closes under them."""
        if self._releasing:
            await asyncio.wait(set(self._releasing), timeout=timeout_s)

    async def _release(self, task: Task) -> None:
        try:
            await cleaner.release_payload(self.store, self.payloads, task.payload_sha256)
        except Exception as exc:
            # The task is finished for good; the cleaner removes the payload later.
            log.warning("payload not released; the cleaner will remove it", task_id=task.id,
                        sha256=task.payload_sha256, error=repr(exc))

    async def finished_result(self, task_id: str, fence: int,
                              sha256: str | None = None) -> Task | None:
        """The task, when a result (this exact one, when given) already finished it under this
        fence: a worker that lost the broker's answer sends its result again, and gets the same
        answer; a heartbeat that crossed the finish revokes nothing."""
        with contextlib.suppress(exceptions.TaskNotFound):
            task = await self.store.get_task(task_id)
            if (task.state == TaskState.FINISHED and task.fence == fence
                    and sha256 in (None, task.result_sha256)):
                return task
        return None
