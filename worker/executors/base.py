"""What an executor is: something that turns a task's payload into its result bytes."""

from __future__ import annotations

import abc
import dataclasses
import pathlib
from collections.abc import Awaitable, Callable

#: Reports progress to the broker: a phase name and the fraction of it done (0..1).
ProgressFn = Callable[[str, float], Awaitable[None]]


@dataclasses.dataclass(frozen=True)
class Job:
    task_id: str
    task_type: str
    payload: pathlib.Path  #: the payload file, checked against its sha256; read-only
    timeout_s: float
    progress: ProgressFn
    comment: str = ""  #: the task's comment as submitted (groth16: "zkey=<sha256>")


class Executor(abc.ABC):
    """Runs the tasks of one type; one instance per worker, shared by its concurrent tasks.

    `run` returns the result bytes or raises `exceptions.TaskFailed` (retryable or not). It may be
    cancelled at any await (the task was revoked, or the worker stops): it must then stop the
    work it started.
    """

    async def start(self) -> None:  # noqa: B027 - optional hook
        """Get ready before the first task (start children, check settings)."""

    @abc.abstractmethod
    async def run(self, job: Job) -> bytes: ...

    def resident_keys(self) -> list[str]:
        """sha256 of the proving keys this executor holds loaded (reported to the broker)."""
        return []

    async def close(self) -> None:  # noqa: B027 - optional hook
        """Stop what `start` started."""
