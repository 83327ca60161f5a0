"""An asyncio client of the TaskBroker API, used by the CLI, the plugin and the worker.

Payloads and results stream from and to files in chunks; nothing is held whole in memory.
"""

from __future__ import annotations

import hashlib
import os
import pathlib
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any, NamedTuple, TypeVar, cast

import grpc

from broker import access, exceptions, tls
from broker.channels import CHANNEL_OPTIONS, Brokers, uses_tls
from broker.payloads import CHUNK_BYTES
from protos.gpuproxy.v1 import tasks_pb2, tasks_pb2_grpc, workers_pb2, workers_pb2_grpc

T = TypeVar("T")

#: Downloads are written to `.<name>.<random>.part` beside their target, then renamed.
PART_SUFFIX = ".part"


def file_sha256(path: pathlib.Path) -> tuple[int, str]:
    digest = hashlib.sha256()
    size = 0
    with path.open("rb") as f:
        while block := f.read(CHUNK_BYTES):
            digest.update(block)
            size += len(block)
    return size, digest.hexdigest()


class Target(NamedTuple):
    """One broker's stubs, and its address for the messages of the calls made through them."""

    url: str
    stub: tasks_pb2_grpc.TaskBrokerStub
    workers: workers_pb2_grpc.WorkerServiceStub


class BrokerClient:
    def __init__(
        self, url: str, *, timeout_s: float = 30.0, options: Sequence[tuple[str, Any]] = (),
        token: str = "", tls_ca: bytes | None = None,
    ) -> None:
        """`url`: the broker, or several sharing a database, comma-separated (broker.channels);
        `options`: channel options added to CHANNEL_OPTIONS (e.g. a reconnect backoff);
        `token`: the broker's access token, sent with every call; `tls_ca`: the roots that the
        broker's TLS certificate is checked against (broker.access, open_channel)."""
        self.timeout_s = timeout_s
        self.metadata = access.metadata(token)
        self.brokers = Brokers(url, [*CHANNEL_OPTIONS, *options], tls_ca)
        self._targets: dict[str, Target] = {}

    @property
    def url(self) -> str:
        """The broker called now."""
        return self.brokers.url

    def target(self) -> Target:
        """The stubs of the broker called now (a call keeps them, and names that broker)."""
        url = self.brokers.url
        if url not in self._targets:
            channel = self.brokers.channel
            self._targets[url] = Target(url, tasks_pb2_grpc.TaskBrokerStub(channel),
                                        workers_pb2_grpc.WorkerServiceStub(channel))
        return self._targets[url]

    async def close(self) -> None:
        await self.brokers.close()

    async def __aenter__(self) -> BrokerClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def translate(self, exc: grpc.aio.AioRpcError, url: str) -> exceptions.BrokerError:
        """`exc` of a call to the broker at `url` as a BrokerError; one that says the broker is
        down (or hung: out of time) moves this client to the next broker, if it has several."""
        answered = any(key == exceptions.ERROR_METADATA_KEY
                       for key, _ in exc.trailing_metadata() or ())
        err: exceptions.BrokerError
        detail = exc.details() or ""
        if exc.code() is grpc.StatusCode.UNAVAILABLE and answered:
            err = exceptions.BrokerCannotServe(url=url, detail=detail)
        elif advice := tls.failure(detail):
            err = exceptions.TlsFailed(url=url, advice=advice, detail=detail)
        elif exc.code() is grpc.StatusCode.UNAVAILABLE:
            hint = tls.plain_hint(detail, uses_tls(url, self.brokers.tls_ca))
            err = exceptions.BrokerUnreachable(url=url,
                                               detail=f"{hint}: {detail}" if hint else detail)
        elif exc.code() is grpc.StatusCode.UNIMPLEMENTED or "http2 header with status" in detail:
            # A gRPC server without our service, or an HTTP server or proxy answering 404.
            err = exceptions.NotABroker(url=url, detail=detail)
        elif exc.code() is grpc.StatusCode.UNAUTHENTICATED:
            err = exceptions.AccessDenied(url=url, detail=detail)
        else:
            err = exceptions.RemoteError(detail=detail or exc.code().name)
        err.code = exc.code()  # type: ignore[union-attr]
        if isinstance(err, exceptions.BrokerUnreachable) or (
                exc.code() is grpc.StatusCode.DEADLINE_EXCEEDED):
            self.brokers.failover(url, reason=str(err))
        return err

    async def _real_status(self, exc: grpc.aio.AioRpcError, url: str) -> exceptions.BrokerError:
        """`exc` translated; but a stream the broker ended before our first write (a token
        refused as it opened) can fail the write as INTERNAL "Internal error from Core", its
        status lost: a unary call then says what the refusal was."""
        if exc.code() is not grpc.StatusCode.INTERNAL:
            return self.translate(exc, url)
        try:
            target = self._targets.get(url) or self.target()  # (the broker the stream was to)
            await self._call(target.stub.GetTask, url, tasks_pb2.GetTaskRequest(id=""))
        except (exceptions.AccessDenied, exceptions.TlsFailed,
                exceptions.BrokerUnreachable) as refusal:
            return refusal  # (unreachable: the broker went away in the middle of the stream)
        except exceptions.BrokerError:
            pass  # refused for the empty id, as it should be: the stream failed otherwise
        return self.translate(exc, url)

    async def _unary(self, method: Callable[[Target], Any], request: Any,
                     changes: bool = False) -> Any:
        """`method` of a broker that answers (see _on_a_broker); `changes`: a call that
        changes what it acts on (a cancel, a reset), not to be made twice."""
        return await self._on_a_broker(
            lambda target: self._call(method(target), target.url, request),
            after_deadline=not changes)

    async def _on_a_broker(self, call: Callable[[Target], Awaitable[T]],
                           after_deadline: bool = True) -> T:
        """`call` on the broker called now; again on the next one while a broker is down (a
        call that reached no broker, or one that could not serve it, did nothing). For calls
        that may be made twice: reads, and writes the broker takes once (a submit, a key).
        A short call whose deadline passed is made again too (`after_deadline`): its broker
        may be a host gone silent, which the channel's pings find only later. Not a call that
        changes something (the broker may have done it late, and the next one would answer
        that it is done), nor an upload (sent again whole; a silent host fails it anyway)."""
        failures: list[exceptions.BrokerError] = []
        for _ in self.brokers.urls:
            target = self.target()
            try:
                return await call(target)
            except exceptions.BrokerError as exc:
                late = getattr(exc, "code", None) is grpc.StatusCode.DEADLINE_EXCEEDED
                if not (isinstance(exc, exceptions.BrokerUnreachable)
                        or (after_deadline and late)):
                    raise
                failures.append(exc)
                if self.url == target.url:  # no other broker to call
                    break
        if len(failures) == 1:
            raise failures[0]
        detail = "; ".join(map(str, failures))
        err: exceptions.BrokerError
        if all(isinstance(f, exceptions.BrokerUnreachable) for f in failures):
            err = exceptions.NoBrokerAnswered(url=", ".join(self.brokers.urls), detail=detail)
            err.code = getattr(failures[-1], "code", None)  # type: ignore[attr-defined]
        else:  # a broker took the call and did not answer in time: slow, not unreachable
            err = exceptions.RemoteError(detail=f"no broker answered within {self.timeout_s:g} "
                                         f"s ({', '.join(self.brokers.urls)}): {detail}")
            err.code = grpc.StatusCode.DEADLINE_EXCEEDED  # type: ignore[attr-defined]
        raise err from failures[-1]

    async def _call(self, method: Any, url: str, request: Any) -> Any:
        try:
            return await method(request, timeout=self.timeout_s, wait_for_ready=False,
                                metadata=self.metadata)
        except grpc.aio.AioRpcError as exc:
            raise self.translate(exc, url) from exc

    # -- tasks -----------------------------------------------------------------------------

    async def submit_file(
        self, path: pathlib.Path, *, task_type: str, miner: str, comment: str = "",
        priority: int = 0, max_attempts: int = 0, rerun: str | None = None,
        rerun_result: str = "",
    ) -> tasks_pb2.Task:
        """Submit a file as a task's payload; uploads only when the broker lacks it. With
        `rerun` (why), a finished task of this payload drops its result and runs again (only
        while its result is `rerun_result`, when given)."""
        task, _ = await self.submit(path, task_type=task_type, miner=miner, comment=comment,
                                    priority=priority, max_attempts=max_attempts, rerun=rerun,
                                    rerun_result=rerun_result)
        return task

    async def submit(
        self, path: pathlib.Path, *, task_type: str, miner: str, comment: str = "",
        priority: int = 0, max_attempts: int = 0, rerun: str | None = None,
        rerun_result: str = "",
    ) -> tuple[tasks_pb2.Task, bool]:
        """`submit_file`, also saying whether the task existed already (the same payload,
        miner and type were submitted before: that task, as it is, is the answer)."""
        size, sha = file_sha256(path)
        header = tasks_pb2.SubmitHeader(
            task_type=task_type, miner=miner, comment=comment, priority=priority,
            payload_size=size, payload_sha256=sha, max_attempts=max_attempts,
            rerun=rerun is not None, rerun_reason=rerun or "", rerun_result_sha256=rerun_result,
        )

        # (made twice, through another broker, it finds the task the first one made)
        async def attempt(target: Target) -> tuple[tasks_pb2.Task, bool]:
            call = target.stub.SubmitTask(metadata=self.metadata)
            try:
                await call.write(tasks_pb2.SubmitTaskRequest(header=header))
                first = await call.read()
                if first is grpc.aio.EOF or first.WhichOneof("msg") != "ack":
                    raise exceptions.RemoteError(
                        detail="the broker did not acknowledge the header")
                if first.ack.send_payload:
                    with path.open("rb") as f:
                        while block := f.read(CHUNK_BYTES):
                            await call.write(tasks_pb2.SubmitTaskRequest(chunk=block))
                await call.done_writing()
                reply = await call.read()
                if reply is grpc.aio.EOF or reply.WhichOneof("msg") != "task":
                    raise exceptions.RemoteError(
                        detail="the broker ended the submit without a task")
                return reply.task, first.ack.task_existed
            except grpc.aio.AioRpcError as exc:
                raise await self._real_status(exc, target.url) from exc
            finally:
                call.cancel()

        return await self._on_a_broker(attempt)

    async def get_task(self, task_id: str) -> tasks_pb2.Task:
        return await self._unary(lambda t: t.stub.GetTask, tasks_pb2.GetTaskRequest(id=task_id))

    async def list_tasks(
        self, *, states: Sequence[int] = (), task_types: Sequence[str] = (), miner: str = "",
        worker_id: str = "", page_size: int = 100, page_token: str = "",
    ) -> tasks_pb2.ListTasksResponse:
        return await self._unary(lambda t: t.stub.ListTasks, tasks_pb2.ListTasksRequest(
            states=cast(Any, list(states)), task_types=list(task_types), miner=miner,
            worker_id=worker_id, page_size=page_size, page_token=page_token,
        ))

    async def watch(self, task_id: str) -> AsyncIterator[tasks_pb2.Task]:
        """Every version of the task until a terminal state (no polling)."""
        target = self.target()
        call = target.stub.WatchTask(tasks_pb2.WatchTaskRequest(id=task_id),
                                     metadata=self.metadata)
        try:
            async for task in call:
                yield task
        except grpc.aio.AioRpcError as exc:
            raise self.translate(exc, target.url) from exc
        finally:
            call.cancel()

    async def reset(self, task_ids: Sequence[str]) -> list[tasks_pb2.Task]:
        reply = await self._unary(
            lambda t: t.stub.ResetTasks, tasks_pb2.ResetTasksRequest(ids=list(task_ids)),
            changes=True)
        return list(reply.tasks)

    async def cancel(self, task_id: str, reason: str = "") -> tasks_pb2.Task:
        return await self._unary(
            lambda t: t.stub.CancelTask, tasks_pb2.CancelTaskRequest(id=task_id, reason=reason),
            changes=True)

    async def stat_resource(self, sha256: str) -> tasks_pb2.Resource | None:
        try:
            return await self._unary(
                lambda t: t.stub.StatResource, tasks_pb2.StatResourceRequest(sha256=sha256)
            )
        except exceptions.RemoteError as exc:
            if getattr(exc, "code", None) is grpc.StatusCode.NOT_FOUND:
                return None
            raise

    async def list_resources(self) -> list[tasks_pb2.Resource]:
        reply = await self._unary(lambda t: t.stub.ListResources, tasks_pb2.ListResourcesRequest())
        return list(reply.resources)

    async def delete_resource(self, sha256: str) -> tasks_pb2.Resource:
        return await self._unary(lambda t: t.stub.DeleteResource,
                                 tasks_pb2.DeleteResourceRequest(sha256=sha256), changes=True)

    async def upload_resource(self, path: pathlib.Path) -> tasks_pb2.Resource:
        """Upload a file as a resource unless the broker holds it already."""
        size, sha = file_sha256(path)
        existing = await self.stat_resource(sha)
        if existing is not None:
            return existing

        async def requests() -> AsyncIterator[tasks_pb2.PutResourceRequest]:
            yield tasks_pb2.PutResourceRequest(header=tasks_pb2.ResourceHeader(
                name=path.name, size=size, sha256=sha))
            with path.open("rb") as f:
                while block := f.read(CHUNK_BYTES):
                    yield tasks_pb2.PutResourceRequest(chunk=block)

        async def attempt(target: Target) -> tasks_pb2.Resource:
            try:
                resource: tasks_pb2.Resource = await target.stub.PutResource(
                    requests(), timeout=max(self.timeout_s, 600), metadata=self.metadata)
            except grpc.aio.AioRpcError as exc:
                raise self.translate(exc, target.url) from exc
            return resource

        return await self._on_a_broker(attempt, after_deadline=False)

    async def download_resource(self, sha256: str, out: pathlib.Path) -> tuple[int, str]:
        """Stream a resource into `out` (temp file, checked, then renamed)."""
        return await self._on_a_broker(lambda target: self._download(
            target.stub.GetResource(tasks_pb2.GetResourceRequest(sha256=sha256),
                                    metadata=self.metadata), target.url, f"resource {sha256}",
            out))

    async def list_workers(self) -> list[workers_pb2.WorkerInfo]:
        reply = await self._unary(lambda t: t.workers.ListWorkers,
                                  workers_pb2.ListWorkersRequest())
        return list(reply.workers)

    async def drain_worker(self, worker_id: str, reason: str) -> None:
        await self._unary(lambda t: t.workers.DrainWorker,
                          workers_pb2.DrainWorkerRequest(worker_id=worker_id, reason=reason),
                          changes=True)

    async def resume_worker(self, worker_id: str) -> bool:
        """Whether the worker was drained."""
        reply = await self._unary(lambda t: t.workers.ResumeWorker,
                                  workers_pb2.ResumeWorkerRequest(worker_id=worker_id),
                                  changes=True)
        return bool(reply.was_drained)

    async def remove_worker(self, worker_id: str) -> None:
        await self._unary(
            lambda t: t.workers.RemoveWorker, workers_pb2.RemoveWorkerRequest(worker_id=worker_id),
            changes=True)

    async def download_result(self, task_id: str, out: pathlib.Path) -> tuple[int, str]:
        """Stream the task's result into `out` (temp file, checked, then renamed)."""
        return await self._on_a_broker(lambda target: self._download(
            target.stub.GetResult(tasks_pb2.GetResultRequest(id=task_id),
                                  metadata=self.metadata), target.url,
            f"result of task {task_id}", out))

    async def download_payload(self, task_id: str, out: pathlib.Path) -> tuple[int, str]:
        """Stream the task's payload into `out` (temp file, checked, then renamed)."""
        return await self._on_a_broker(lambda target: self._download(
            target.stub.GetPayload(tasks_pb2.GetPayloadRequest(id=task_id),
                                   metadata=self.metadata), target.url,
            f"payload of task {task_id}", out))

    async def _download(self, call: Any, url: str, what: str, out: pathlib.Path
                        ) -> tuple[int, str]:
        # A name of its own: two workers sharing a params folder may fetch one key at once
        tmp = out.with_name(f".{out.name}.{secrets.token_hex(4)}{PART_SUFFIX}")
        digest = hashlib.sha256()
        size, expected_size, expected_sha = 0, -1, ""
        try:
            with tmp.open("wb") as f:
                async for chunk in call:
                    if expected_size < 0:
                        expected_size, expected_sha = chunk.size, chunk.sha256
                    f.write(chunk.data)
                    digest.update(chunk.data)
                    size += len(chunk.data)
                f.flush()
                os.fsync(f.fileno())
            if (size, digest.hexdigest()) != (expected_size, expected_sha):
                raise exceptions.RemoteError(
                    detail=f"{what} arrived damaged ({size} bytes, sha256 "
                    f"{digest.hexdigest()}; expected {expected_size} bytes, {expected_sha}); "
                    "download it again"
                )
            tmp.replace(out)
            return size, expected_sha
        except grpc.aio.AioRpcError as exc:
            raise self.translate(exc, url) from exc
        finally:
            call.cancel()
            tmp.unlink(missing_ok=True)
