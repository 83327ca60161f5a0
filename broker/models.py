"""The broker's domain records: tasks, their attempts, and the ids derived from them."""

from __future__ import annotations

import dataclasses
import enum
import time
import uuid

# Fixed so that a task id computed today equals the one computed by any broker, any day.
TASK_ID_NAMESPACE = uuid.UUID("6f1c2a4e-8d0b-5e7f-9a3c-2b1d4e6f8a0c")


class TaskState(enum.IntEnum):
    """Task states, numbered as in the original gpuproxy."""

    INIT = 1
    RUNNING = 2
    ERROR = 3
    FINISHED = 4

    @property
    def terminal(self) -> bool:
        return self in (TaskState.ERROR, TaskState.FINISHED)


def now_ms() -> int:
    return int(time.time() * 1000)


def task_id(miner: str, task_type: str, payload_sha256: str) -> str:
    """The same C1 output submitted again for the same miner and type yields the same task."""
    return str(uuid.uuid5(TASK_ID_NAMESPACE, f"{miner}\x00{task_type}\x00{payload_sha256}"))


@dataclasses.dataclass(frozen=True, kw_only=True)
class NewTask:
    id: str
    task_type: str
    miner: str
    comment: str
    priority: int
    payload_size: int
    payload_sha256: str
    max_attempts: int
    created_at: int  #: epoch milliseconds, like every time in the store


@dataclasses.dataclass(frozen=True, kw_only=True)
class Task:
    id: str
    task_type: str
    miner: str
    comment: str
    priority: int
    state: TaskState
    payload_size: int
    payload_sha256: str
    worker_id: str  #: "" when no worker holds or held it
    attempts: int  #: claims since creation or the last reset
    max_attempts: int
    error_message: str
    created_at: int
    started_at: int | None
    finished_at: int | None
    result_size: int
    result_sha256: str  #: "" until finished
    version: int  #: bumped by every change
    fence: int  #: fencing token of the current claim; bumped by every claim and requeue
    lease_expires_at: int | None
    not_before: int  #: a requeued task is not claimed before this time (retry backoff)
    progress_phase: str
    progress_fraction: float

    @property
    def payload_id(self) -> str:
        # Payloads are content-addressed: the id is the sha256.
        return self.payload_sha256


@dataclasses.dataclass(frozen=True, kw_only=True)
class Attempt:
    task_id: str
    number: int  #: 1, 2, ... over the task's whole life (not reset by ResetTasks)
    worker_id: str
    started_at: int
    ended_at: int | None
    outcome: str  #: running, finished, failed, requeued, reset, cancelled
    reason: str


@dataclasses.dataclass(frozen=True, kw_only=True)
class TaskFilter:
    states: tuple[TaskState, ...] = ()
    task_types: tuple[str, ...] = ()
    miner: str = ""
    worker_id: str = ""


@dataclasses.dataclass(frozen=True, kw_only=True)
class TaskCount:
    """How many tasks of a type are in a state, and since when the longest-waiting of them may
    run: submitted, or made ready again (a retry after its backoff, a requeue, a reset)."""

    task_type: str
    state: TaskState
    count: int
    oldest_since: int


@dataclasses.dataclass(frozen=True, kw_only=True)
class PageCursor:
    """Position after the last task of a page (lists are newest first)."""

    created_at: int
    task_id: str


@dataclasses.dataclass(frozen=True, kw_only=True)
class BlobRow:
    """A payload or result kept in the database (the `db` payload store)."""

    upload_id: str
    sha256: str
    size: int
    ready: bool  #: False while the upload runs or after it was interrupted
    created_at: int


@dataclasses.dataclass(frozen=True, kw_only=True)
class Gpu:
    index: int
    name: str
    uuid: str
    memory_bytes: int
    mig: int | None = None  #: a MIG device's number under GPU `index`


@dataclasses.dataclass(frozen=True, kw_only=True)
class WorkerRecord:
    """A worker as last registered; online while it keeps heartbeating."""

    worker_id: str
    hostname: str
    addresses: tuple[str, ...]
    version: str
    task_types: tuple[str, ...]
    max_tasks: int
    gpus: tuple[Gpu, ...]
    registered_at: int
    last_seen_at: int
    resident_keys: tuple[str, ...] = ()  #: sha256 of the proving keys it holds loaded
    paused_until: int = 0  #: ms; taking no task until then, after failures in a row
    pause_reason: str = ""  #: the last of those failures
    #: The connected worker process's random token; "" once its stream has ended. Every broker
    #: sharing the database sees it, so a second process with this id is refused by any.
    instance: str = ""
    #: This registration's random token: a stream that ends clears `instance` only if no
    #: newer registration (on another broker, say) has replaced it.
    session: str = ""
    disconnected_at: int = 0  #: ms; when its stream ended (0: connected, or not known)
    #: ms; when a broker ended its stream (stopping, or sending it to another broker): offline
    #: until it registers again, but not gone (its tasks keep their grace)
    handed_off_at: int = 0
    broker: str = ""  #: HOST:PORT of the broker it registered through (of several, which)


@dataclasses.dataclass(frozen=True)
class Drain:
    """An operator's word that a worker takes no new task (its running ones go on)."""

    worker_id: str
    reason: str
    drained_at: int  #: ms


@dataclasses.dataclass(frozen=True, kw_only=True)
class Resource:
    """A file kept for tasks that name it by sha256 (a proving key)."""

    sha256: str
    name: str
    size: int
    created_at: int
