"""Translation between domain records and protobuf messages (the only place that does it)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from google.protobuf import timestamp_pb2

from broker.models import Attempt, Task, TaskState
from protos.gpuproxy.v1 import tasks_pb2


def timestamp(ms: int | None) -> timestamp_pb2.Timestamp | None:
    if ms is None:
        return None
    ts = timestamp_pb2.Timestamp()
    ts.FromMilliseconds(ms)
    return ts


def state_to_proto(state: TaskState) -> Any:
    # The proto enum shares gpuproxy's numbers.
    return int(state)


def state_from_proto(value: int) -> TaskState:
    return TaskState(value)


def task_to_proto(task: Task, history: Sequence[Attempt] = ()) -> tasks_pb2.Task:
    msg = tasks_pb2.Task(
        id=task.id,
        task_type=task.task_type,
        miner=task.miner,
        comment=task.comment,
        priority=task.priority,
        state=state_to_proto(task.state),
        payload_id=task.payload_id,
        payload_size=task.payload_size,
        payload_sha256=task.payload_sha256,
        worker_id=task.worker_id,
        attempts=task.attempts,
        max_attempts=task.max_attempts,
        error_message=task.error_message,
        result_size=task.result_size,
        result_sha256=task.result_sha256,
        version=task.version,
        progress=tasks_pb2.Progress(phase=task.progress_phase, fraction=task.progress_fraction),
        history=[attempt_to_proto(a) for a in history],
    )
    for field, ms in (
        ("created_at", task.created_at),
        ("started_at", task.started_at),
        ("finished_at", task.finished_at),
        ("lease_expires_at", task.lease_expires_at),
    ):
        ts = timestamp(ms)
        if ts is not None:
            getattr(msg, field).CopyFrom(ts)
    return msg


def attempt_to_proto(a: Attempt) -> tasks_pb2.Attempt:
    msg = tasks_pb2.Attempt(
        number=a.number, worker_id=a.worker_id, outcome=a.outcome, reason=a.reason
    )
    msg.started_at.FromMilliseconds(a.started_at)
    if a.ended_at is not None:
        msg.ended_at.FromMilliseconds(a.ended_at)
    return msg
