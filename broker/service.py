"""The TaskBroker gRPC service: protobuf in, task operations, protobuf out.

Domain errors map to gRPC status codes here and only here. Unexpected exceptions become
INTERNAL with a generic message and a logged traceback.
"""

from __future__ import annotations

import base64
import functools
import inspect
import json
from collections.abc import AsyncIterator, Callable
from typing import Any, TypeVar

import grpc
import structlog

from broker import convert, exceptions, framing, models
from broker.models import PageCursor, TaskFilter, TaskState
from broker.tasks import SubmitHeader, TaskManager, last_failure
from protos.gpuproxy.v1 import tasks_pb2, tasks_pb2_grpc

log = structlog.get_logger(__name__)

STATUS: dict[type[exceptions.BrokerError], grpc.StatusCode] = {
    exceptions.InvalidArgument: grpc.StatusCode.INVALID_ARGUMENT,
    exceptions.ConfigError: grpc.StatusCode.INVALID_ARGUMENT,
    exceptions.TaskNotFound: grpc.StatusCode.NOT_FOUND,
    exceptions.ResultNotFound: grpc.StatusCode.NOT_FOUND,
    exceptions.PayloadNotFound: grpc.StatusCode.NOT_FOUND,
    exceptions.PayloadDropped: grpc.StatusCode.NOT_FOUND,
    exceptions.WorkerNotFound: grpc.StatusCode.NOT_FOUND,
    exceptions.ResourceNotFound: grpc.StatusCode.NOT_FOUND,
    exceptions.WrongState: grpc.StatusCode.FAILED_PRECONDITION,
    exceptions.WorkerOnline: grpc.StatusCode.FAILED_PRECONDITION,
    exceptions.ResourceInUse: grpc.StatusCode.FAILED_PRECONDITION,
    exceptions.StaleFence: grpc.StatusCode.FAILED_PRECONDITION,
    exceptions.WorkerIdInUse: grpc.StatusCode.ALREADY_EXISTS,
    exceptions.GpuInUse: grpc.StatusCode.ALREADY_EXISTS,
    exceptions.PayloadTooLarge: grpc.StatusCode.RESOURCE_EXHAUSTED,
    exceptions.StoreUnavailable: grpc.StatusCode.UNAVAILABLE,
    exceptions.PayloadStoreUnavailable: grpc.StatusCode.UNAVAILABLE,
    exceptions.CannotServeNow: grpc.StatusCode.UNAVAILABLE,
    exceptions.PayloadDamagedInStore: grpc.StatusCode.DATA_LOSS,
}


def status_of(exc: exceptions.BrokerError) -> grpc.StatusCode:
    for cls in type(exc).__mro__:
        if cls in STATUS:
            return STATUS[cls]
    return grpc.StatusCode.INTERNAL


async def _abort(exc: BaseException, context: grpc.aio.ServicerContext, method: str) -> None:
    if isinstance(exc, exceptions.BrokerError):
        code = status_of(exc)
        log.info("request refused", method=method, code=code.name, error=str(exc))
        await context.abort(code, str(exc), trailing_metadata=(
            (exceptions.ERROR_METADATA_KEY, type(exc).__name__),))
    log.error("request failed", method=method, exc_info=exc)
    await context.abort(grpc.StatusCode.INTERNAL, "internal broker error; see the broker's log")


F = TypeVar("F", bound=Callable[..., Any])


def mapped_errors(fn: F) -> F:
    """Turn our exceptions into statuses for unary and streaming handlers alike."""
    if inspect.isasyncgenfunction(fn):

        @functools.wraps(fn)
        async def stream(self: Any, request: Any, context: Any) -> AsyncIterator[Any]:
            try:
                async for item in fn(self, request, context):
                    yield item
            except Exception as exc:
                if isinstance(exc, grpc.aio.AbortError):
                    raise
                await _abort(exc, context, fn.__name__)

        return stream  # type: ignore[return-value]

    @functools.wraps(fn)
    async def unary(self: Any, request: Any, context: Any) -> Any:
        try:
            return await fn(self, request, context)
        except Exception as exc:
            if isinstance(exc, grpc.aio.AbortError):
                raise
            await _abort(exc, context, fn.__name__)

    return unary  # type: ignore[return-value]


def encode_cursor(cursor: PageCursor | None) -> str:
    if cursor is None:
        return ""
    raw = json.dumps([cursor.created_at, cursor.task_id]).encode()
    return base64.urlsafe_b64encode(raw).decode()


def decode_cursor(token: str) -> PageCursor | None:
    if not token:
        return None
    try:
        created_at, task_id = json.loads(base64.urlsafe_b64decode(token.encode()))
        return PageCursor(created_at=int(created_at), task_id=str(task_id))
    except (ValueError, TypeError, RecursionError) as exc:
        raise exceptions.InvalidArgument(
            detail="page_token is not one this broker returned; start from an empty token"
        ) from exc


def filter_from(request: tasks_pb2.ListTasksRequest) -> TaskFilter:
    try:
        states = tuple(TaskState(s) for s in request.states)
    except ValueError as exc:
        raise exceptions.InvalidArgument(detail="states must be 1 (init) to 4 (finished)") from exc
    return TaskFilter(
        states=states,
        task_types=tuple(request.task_types),
        miner=request.miner,
        worker_id=request.worker_id,
    )


#: ListTasks and GetTask replies stay under this size, well inside gRPC's 4 MiB message limit:
#: a page of tasks with long error messages ends early, and the history of a task reset many
#: times keeps its newest attempts (the reply says how many older ones it left out).
REPLY_BUDGET_BYTES = 3 * 1024 * 1024
FIELD_OVERHEAD_BYTES = 8  #: a repeated field's tag and length, at most


class TaskBrokerService(tasks_pb2_grpc.TaskBrokerServicer):
    def __init__(self, tasks: TaskManager) -> None:
        self.tasks = tasks

    @mapped_errors
    async def SubmitTask(
        self, request_iterator: AsyncIterator[tasks_pb2.SubmitTaskRequest],
        context: grpc.aio.ServicerContext,
    ) -> AsyncIterator[tasks_pb2.SubmitTaskResponse]:
        h = await framing.opening(request_iterator, "header")
        plan = await self.tasks.plan_submit(SubmitHeader(
            task_type=h.task_type, miner=h.miner, comment=h.comment, priority=h.priority,
            payload_size=h.payload_size, payload_sha256=h.payload_sha256,
            max_attempts=h.max_attempts, rerun=h.rerun, rerun_reason=h.rerun_reason,
            rerun_result_sha256=h.rerun_result_sha256,
        ))
        yield tasks_pb2.SubmitTaskResponse(ack=tasks_pb2.SubmitAck(
            task_id=plan.new.id, send_payload=plan.send_payload,
            task_existed=plan.existing is not None,
        ))
        chunks = framing.chunks(request_iterator) if plan.send_payload else None
        try:
            task = await self.tasks.complete_submit(plan, chunks)
        except exceptions.PayloadStoreUnavailable:
            # Refused half-way: the client is still writing and must hear why.
            await framing.drain(request_iterator, h.payload_size)
            raise
        yield tasks_pb2.SubmitTaskResponse(task=convert.task_to_proto(task))

    @mapped_errors
    async def GetTask(
        self, request: tasks_pb2.GetTaskRequest, context: grpc.aio.ServicerContext
    ) -> tasks_pb2.Task:
        task, history = await self.tasks.get(request.id)
        msg = convert.task_to_proto(task)
        msg.last_failure = last_failure(task, history)
        rows = [convert.attempt_to_proto(a) for a in history]
        room = REPLY_BUDGET_BYTES - msg.ByteSize()
        first = len(rows)  # the newest attempts that fit
        while first and room >= rows[first - 1].ByteSize() + FIELD_OVERHEAD_BYTES:
            first -= 1
            room -= rows[first].ByteSize() + FIELD_OVERHEAD_BYTES
        msg.history.extend(rows[first:])
        msg.history_omitted = first
        return msg

    @mapped_errors
    async def ListTasks(
        self, request: tasks_pb2.ListTasksRequest, context: grpc.aio.ServicerContext
    ) -> tasks_pb2.ListTasksResponse:
        tasks, cursor = await self.tasks.list_tasks(
            filter_from(request), request.page_size, decode_cursor(request.page_token)
        )
        reply = tasks_pb2.ListTasksResponse()
        size = 0
        failures = await self.tasks.last_failures(tasks)
        for i, task in enumerate(tasks):
            msg = convert.task_to_proto(task)
            msg.last_failure = failures.get(task.id, "")
            size += msg.ByteSize() + FIELD_OVERHEAD_BYTES
            if i and size > REPLY_BUDGET_BYTES:  # the page ends early; the next starts here
                last = tasks[i - 1]
                cursor = PageCursor(created_at=last.created_at, task_id=last.id)
                break
            reply.tasks.append(msg)
        reply.next_page_token = encode_cursor(cursor)
        return reply

    @mapped_errors
    async def WatchTask(
        self, request: tasks_pb2.WatchTaskRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[tasks_pb2.Task]:
        async for task in self.tasks.watch(request.id):
            yield convert.task_to_proto(task)

    @mapped_errors
    async def ResetTasks(
        self, request: tasks_pb2.ResetTasksRequest, context: grpc.aio.ServicerContext
    ) -> tasks_pb2.ResetTasksResponse:
        if not request.ids:
            raise exceptions.InvalidArgument(detail="give at least one task id to reset")
        tasks = await self.tasks.reset(list(request.ids))
        return tasks_pb2.ResetTasksResponse(tasks=[convert.task_to_proto(t) for t in tasks])

    @mapped_errors
    async def CancelTask(
        self, request: tasks_pb2.CancelTaskRequest, context: grpc.aio.ServicerContext
    ) -> tasks_pb2.Task:
        return convert.task_to_proto(await self.tasks.cancel(request.id, request.reason))

    @mapped_errors
    async def GetResult(
        self, request: tasks_pb2.GetResultRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[tasks_pb2.BlobChunk]:
        task, chunks = await self.tasks.open_result(request.id)
        async for msg in framing.blob_chunks(task.result_size, task.result_sha256, chunks):
            yield msg

    @mapped_errors
    async def GetPayload(
        self, request: tasks_pb2.GetPayloadRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[tasks_pb2.BlobChunk]:
        task, chunks = await self.tasks.open_payload(request.id)
        async for msg in framing.blob_chunks(task.payload_size, task.payload_sha256, chunks):
            yield msg


    @mapped_errors
    async def StatResource(
        self, request: tasks_pb2.StatResourceRequest, context: grpc.aio.ServicerContext
    ) -> tasks_pb2.Resource:
        return _resource_proto(await self.tasks.get_resource(request.sha256))

    @mapped_errors
    async def PutResource(
        self, request_iterator: AsyncIterator[tasks_pb2.PutResourceRequest],
        context: grpc.aio.ServicerContext,
    ) -> tasks_pb2.Resource:
        h = await framing.opening(request_iterator, "header")
        resource = await self.tasks.put_resource(
            h.name, h.size, h.sha256, framing.chunks(request_iterator)
        )
        return _resource_proto(resource)

    @mapped_errors
    async def GetResource(
        self, request: tasks_pb2.GetResourceRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[tasks_pb2.BlobChunk]:
        resource, chunks = await self.tasks.open_resource(request.sha256)
        async for msg in framing.blob_chunks(resource.size, resource.sha256, chunks):
            yield msg

    @mapped_errors
    async def ListResources(
        self, request: tasks_pb2.ListResourcesRequest, context: grpc.aio.ServicerContext
    ) -> tasks_pb2.ListResourcesResponse:
        resources = await self.tasks.list_resources()
        return tasks_pb2.ListResourcesResponse(resources=[_resource_proto(r) for r in resources])

    @mapped_errors
    async def DeleteResource(
        self, request: tasks_pb2.DeleteResourceRequest, context: grpc.aio.ServicerContext
    ) -> tasks_pb2.Resource:
        return _resource_proto(await self.tasks.delete_resource(request.sha256))


def _resource_proto(r: models.Resource) -> tasks_pb2.Resource:
    msg = tasks_pb2.Resource(sha256=r.sha256, name=r.name, size=r.size)
    msg.created_at.FromMilliseconds(r.created_at)
    return msg


