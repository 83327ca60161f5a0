"""One request's way through the broker: submit, wait, fetch the proof, check it.

Submission is idempotent: the broker derives the task id from (miner, type, payload sha256), so
the same C2 input finds the task it made before. A finished task answers at once, a task in error
is reset and tried again (as gpuproxy's plugin did), a queued or running one is waited for. A
finished task whose result cannot be the proof (the wrong size for the sector, or lost from the
broker's store) is submitted again asking to run it again, a bounded number of times.

Waiting is the broker's watch stream. A watch broken because the broker went away is opened again
after a backoff; a watch the broker will not hold is replaced by reading the task every
`poll_interval_s`. Every call is retried while the failure is transient, and a task the broker
lost (a new database) is submitted again, until the request's deadline.
"""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import pathlib
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

import grpc
import structlog

from broker.client import BrokerClient
from broker.exceptions import BrokerError
from plugin import exceptions, retry, workdir
from plugin.config import PluginConfig
from plugin.protocol import STAGE, C2Request
from protos.gpuproxy.v1 import tasks_pb2
from worker import c2proof
from worker.backoff import Backoff

log = structlog.get_logger(__name__)

T = TypeVar("T")
TERMINAL = frozenset({tasks_pb2.TASK_STATE_FINISHED, tasks_pb2.TASK_STATE_ERROR})
STATE_NAMES = {tasks_pb2.TASK_STATE_INIT: "queued", tasks_pb2.TASK_STATE_RUNNING: "running",
               tasks_pb2.TASK_STATE_ERROR: "in error", tasks_pb2.TASK_STATE_FINISHED: "finished"}
#: A submit may also meet a payload cleaned up between its upload and the task's insert.
SUBMIT_ALSO_RETRIED = frozenset({grpc.StatusCode.NOT_FOUND})
#: A finished task's result the broker no longer has (removed from its store), or has damaged.
RESULT_LOST = frozenset({grpc.StatusCode.NOT_FOUND, grpc.StatusCode.DATA_LOSS})
#: Runs of a finished task whose result cannot be the proof, per request, before the request
#: is answered with the error (the sealer asking again starts over).
MAX_RERUNS = 2


@dataclasses.dataclass(frozen=True)
class StagedRequest:
    request: C2Request  #: without its task bytes
    payload: pathlib.Path  #: the task bytes, byte for byte


def channel_options(config: PluginConfig) -> list[tuple[str, int]]:
    """gRPC's own reconnect backoff grows to two minutes; keep it within ours."""
    return [
        ("grpc.initial_reconnect_backoff_ms", int(config.retry_min_s * 1000)),
        ("grpc.min_reconnect_backoff_ms", int(config.retry_min_s * 1000)),
        ("grpc.max_reconnect_backoff_ms", int(config.retry_max_s * 1000)),
    ]


def describe(task: tasks_pb2.Task) -> str:
    """The task's state in words, for logs and for the message of a request given up."""
    text = STATE_NAMES.get(task.state, f"in state {task.state}")
    if task.state == tasks_pb2.TASK_STATE_RUNNING and task.worker_id:
        text += f" on worker {task.worker_id}"
    if task.attempts:
        text += f", attempt {task.attempts}/{task.max_attempts}"
    return text


class Waiter:
    def __init__(self, config: PluginConfig, client: BrokerClient, work_dir: pathlib.Path) -> None:
        self.config = config
        self.client = client
        self.work_dir = work_dir
        self.backoff = Backoff(initial_s=config.retry_min_s, max_s=config.retry_max_s)
        self._files = itertools.count()

    async def stage(self, request: C2Request) -> StagedRequest:
        """Move the request's C2 input into a file: the payload to submit."""
        payload = self.work_dir / f"{request.id}-{next(self._files)}.c2-input.json"
        try:
            await asyncio.to_thread(workdir.revive, self.work_dir)
            await asyncio.to_thread(payload.write_bytes, request.task)
        except OSError as exc:
            payload.unlink(missing_ok=True)
            raise exceptions.WorkDirUnusable(path=self.work_dir, detail=str(exc)) from exc
        return StagedRequest(dataclasses.replace(request, task=b""), payload)

    async def prove(self, staged: StagedRequest) -> bytes:
        """The request's proof, checked; a PluginError saying why there is none otherwise.

        The staged file is removed at the end.
        """
        request, trail = staged.request, retry.Trail()
        try:
            async with asyncio.timeout(self.config.deadline_s):
                return await self._prove(request, staged.payload, trail)
        except TimeoutError:
            raise exceptions.GaveUp(
                sector_id=request.sector_id, deadline_s=self.config.deadline_s,
                trail=trail.summary(), url=self.config.url,
            ) from None
        except OSError as exc:
            # Our own files (the downloaded proof); the client's errors are BrokerErrors.
            raise exceptions.WorkDirUnusable(path=self.work_dir, detail=str(exc)) from exc
        finally:
            staged.payload.unlink(missing_ok=True)

    async def _prove(self, request: C2Request, payload: pathlib.Path, trail: retry.Trail) -> bytes:
        rlog = log.bind(request_id=request.id, sector_id=request.sector_id, miner=request.miner)
        task = await self._submitted(request, payload, trail)
        while True:
            rlog = rlog.bind(task_id=task.id)
            ended = await self._wait(request, task, trail, rlog)
            if ended is None:
                rlog.warning("the broker no longer has the task; submitting it again")
                task = await self._submitted(request, payload, trail)
                continue
            if ended.state == tasks_pb2.TASK_STATE_ERROR:
                raise exceptions.TaskFailed(task_id=ended.id, sector_id=request.sector_id,
                                            reason=ended.error_message or "no reason given")
            proof, problem = await self._result(request, ended, trail)
            if problem is None:
                rlog.info("proof ready", proof_bytes=len(proof))
                return proof
            if trail.reruns == MAX_RERUNS:
                raise exceptions.NotAProof(task_id=ended.id, sector_id=request.sector_id,
                                           detail=problem, worker_id=ended.worker_id or "?",
                                           runs=trail.reruns + 1)
            trail.reruns += 1
            rlog.warning("the task finished, but its result cannot be the proof: running it "
                         "again", problem=problem, worker_id=ended.worker_id, rerun=trail.reruns)
            # Submitted again asking for a new run: the input goes up again (the broker
            # dropped it at the finish) before the task can be given to a worker
            task = await self._submitted(request, payload, trail, rerun=(
                f"the plugin dropped its result: {problem}", ended.result_sha256))

    async def _submitted(self, request: C2Request, payload: pathlib.Path, trail: retry.Trail,
                         rerun: tuple[str, str] | None = None) -> tasks_pb2.Task:
        """The task, submitted (again); `rerun`: (why, the result found wrong)."""
        return await self._retrying(
            request, trail, "submit the task",
            lambda: self._submit(request, payload, trail, rerun), also=SUBMIT_ALSO_RETRIED,
        )

    async def _result(self, request: C2Request, task: tasks_pb2.Task,
                      trail: retry.Trail) -> tuple[bytes, str | None]:
        """The finished task's result, and why it cannot be the request's proof (None when
        it can): wrong for the sector's proof type, or lost or damaged in the broker's store."""
        try:
            proof = await self._retrying(request, trail, "download the proof",
                                         lambda: self._download(task))
        except exceptions.Refused as exc:
            cause = exc.__cause__
            if cause is None or retry.code_of(cause) not in RESULT_LOST:
                raise
            return b"", f"the broker cannot give it ({cause})"
        return proof, c2proof.proof_problem(proof, request.registered_proof)

    async def _submit(
        self, request: C2Request, payload: pathlib.Path, trail: retry.Trail,
        rerun: tuple[str, str] | None = None,
    ) -> tasks_pb2.Task:
        why, wrong = rerun or (None, "")
        task = await self.client.submit_file(
            payload, task_type=STAGE, miner=request.miner, comment=request.comment, rerun=why,
            rerun_result=wrong,
        )
        trail.submits += 1
        trail.task_id, trail.state = task.id, describe(task)
        log.info("task submitted", request_id=request.id, sector_id=request.sector_id,
                 task_id=task.id, state=describe(task))
        if task.state != tasks_pb2.TASK_STATE_ERROR:
            return task
        log.info("the task is in error: resetting it to try again", request_id=request.id,
                 task_id=task.id, reason=task.error_message)
        try:
            [task] = await self.client.reset([task.id])
        except BrokerError as exc:
            if retry.code_of(exc) is not grpc.StatusCode.FAILED_PRECONDITION:
                raise
            # Someone else reset it first.
            return await self.client.get_task(task.id)
        trail.resets += 1
        return task

    async def _wait(
        self, request: C2Request, task: tasks_pb2.Task, trail: retry.Trail,
        rlog: structlog.typing.FilteringBoundLogger,
    ) -> tasks_pb2.Task | None:
        """The task once it ended; None when the broker lost it."""
        task_id = task.id
        while task.state not in TERMINAL:
            seen = await self._retrying(request, trail, "wait for the task",
                                        lambda: self._watch(request, task_id, trail, rlog))
            if seen is None:
                return None
            task = seen
        return task

    async def _watch(
        self, request: C2Request, task_id: str, trail: retry.Trail,
        rlog: structlog.typing.FilteringBoundLogger,
    ) -> tasks_pb2.Task | None:
        """The task at the end of one watch (or one poll); None when the broker lost it."""
        last: tasks_pb2.Task | None = None
        try:
            async for last in self.client.watch(task_id):
                self._reached(request, trail)
                if trail.state != describe(last):
                    trail.state = describe(last)
                    rlog.info("task", state=trail.state)
            if last is not None and last.state in TERMINAL:
                return last
            reason = "the watch stream ended before the task did"
        except BrokerError as exc:
            if retry.is_gone(exc):
                return None
            if retry.watch_outage(exc):
                raise
            reason = str(exc)
        (rlog.debug if trail.polls else rlog.warning)(
            "the broker does not hold the watch; reading the task instead",
            every_s=self.config.poll_interval_s, reason=reason,
        )
        await asyncio.sleep(self.config.poll_interval_s)
        trail.polls += 1
        try:
            return await self.client.get_task(task_id)
        except BrokerError as exc:
            if retry.is_gone(exc):
                return None
            raise

    async def _download(self, task: tasks_pb2.Task) -> bytes:
        out = self.work_dir / f"{task.id}-{next(self._files)}.proof"
        await asyncio.to_thread(workdir.revive, self.work_dir)
        try:
            await self.client.download_result(task.id, out)
            return await asyncio.to_thread(out.read_bytes)
        finally:
            out.unlink(missing_ok=True)

    async def _retrying(
        self, request: C2Request, trail: retry.Trail, what: str,
        call: Callable[[], Awaitable[T]], also: frozenset[grpc.StatusCode] = frozenset(),
    ) -> T:
        """`call()`, again after a backoff for as long as it fails transiently."""
        while True:
            try:
                result = await call()
            # A stream the broker ended before our next write says so with InvalidStateError.
            except (BrokerError, asyncio.InvalidStateError) as exc:
                if not retry.is_transient(exc, also):
                    raise exceptions.Refused(url=self.config.url, what=what,
                                             sector_id=request.sector_id, detail=str(exc)) from exc
                trail.failed(what, exc)
                if trail.outage.failed(time.monotonic()):
                    log.warning("broker unreachable; retrying until the deadline",
                                request_id=request.id, sector_id=request.sector_id, what=what,
                                error=str(exc), next=self.client.url)
                await asyncio.sleep(self.backoff.delay_s(trail.outage.attempt))
                continue
            self._reached(request, trail)
            return result

    def _reached(self, request: C2Request, trail: retry.Trail) -> None:
        """The broker answered: the end of an outage, if there was one."""
        down_s = trail.outage.recovered(time.monotonic())
        if down_s is not None:
            log.info("broker reachable again", request_id=request.id,
                     sector_id=request.sector_id, after_s=round(down_s, 1), broker=self.client.url)
