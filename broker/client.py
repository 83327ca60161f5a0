"""An asyncio client of the TaskBroker API, used by the CLI, the plugin and the worker.

Payloads and results stream from and to files in chunks; nothing is held whole in memory.
"""

from __future__ import annotations

import hashlib
import os
import pathlib
import secrets
from collections.abc import AsyncIterator, Sequence
from typing import Any, cast

import grpc

from broker import access, exceptions, tls
from broker.payloads import CHUNK_BYTES
from protos.gpuproxy.v1 import tasks_pb2, tasks_pb2_grpc, workers_pb2, workers_pb2_grpc

#: Downloads are written to `.<name>.<random>.part` beside their target, then renamed.
PART_SUFFIX = ".part"

CHANNEL_OPTIONS = [
    ("grpc.max_receive_message_length", 4 * 1024 * 1024),
    ("grpc.max_send_message_length", 4 * 1024 * 1024),
    ("grpc.keepalive_time_ms", 20_000),
    ("grpc.keepalive_timeout_ms", 10_000),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.max_pings_without_data", 0),
    # Reconnect within seconds of a broker restart, not after gRPC's default of up to 2 min.
    ("grpc.initial_reconnect_backoff_ms", 500),
    ("grpc.min_reconnect_backoff_ms", 500),
    ("grpc.max_reconnect_backoff_ms", 2000),
]


def target_of(url: str) -> str:
    """Accept gpuproxy's http://HOST:PORT, and https://HOST:PORT, as well as HOST:PORT."""
    for prefix in ("http://", "https://", "grpc://"):
        if url.startswith(prefix):
            url = url[len(prefix):]
    return url.rstrip("/")


def uses_tls(url: str, tls_ca: bytes | None) -> bool:
    """Whether a client of `url` with these roots speaks TLS (see open_channel)."""
    return tls_ca is not None or url.strip().startswith("https://")


def open_channel(url: str, options: Sequence[tuple[str, Any]], tls_ca: bytes | None = None
                 ) -> grpc.aio.Channel:
    """A channel to the broker at `url`: TLS when `tls_ca` (PEM roots to trust: a private CA or
    the broker's self-signed certificate) is given or the address is https:// (the system's
    roots), plain otherwise."""
    if uses_tls(url, tls_ca):
        return grpc.aio.secure_channel(
            target_of(url), grpc.ssl_channel_credentials(root_certificates=tls_ca),
            options=list(options))
    return grpc.aio.insecure_channel(target_of(url), options=list(options))


def file_sha256(path: pathlib.Path) -> tuple[int, str]:
    digest = hashlib.sha256()
    size = 0
    with path.open("rb") as f:
        while block := f.read(CHUNK_BYTES):
            digest.update(block)
            size += len(block)
    return size, digest.hexdigest()


class BrokerClient:
    def __init__(
        self, url: str, *, timeout_s: float = 30.0, options: Sequence[tuple[str, Any]] = (),
        token: str = "", tls_ca: bytes | None = None,
    ) -> None:
        """`options`: channel options added to CHANNEL_OPTIONS (e.g. a reconnect backoff);
        `token`: the broker's access token, sent with every call; `tls_ca`: the roots that the
        broker's TLS certificate is checked against (broker.access, open_channel)."""
        self.url = url
        self.timeout_s = timeout_s
        self.metadata = access.metadata(token)
        self.tls = uses_tls(url, tls_ca)
        self.channel = open_channel(url, [*CHANNEL_OPTIONS, *options], tls_ca)
        self.stub = tasks_pb2_grpc.TaskBrokerStub(self.channel)
        self.workers = workers_pb2_grpc.WorkerServiceStub(self.channel)

    async def close(self) -> None:
        await self.channel.close()

    async def __aenter__(self) -> BrokerClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def translate(self, exc: grpc.aio.AioRpcError) -> exceptions.BrokerError:
        answered = any(key == exceptions.ERROR_METADATA_KEY
                       for key, _ in exc.trailing_metadata() or ())
        err: exceptions.BrokerError
        detail = exc.details() or ""
        if exc.code() is grpc.StatusCode.UNAVAILABLE and answered:
            err = exceptions.BrokerCannotServe(url=self.url, detail=detail)
        elif advice := tls.failure(detail):
            err = exceptions.TlsFailed(url=self.url, advice=advice, detail=detail)
        elif exc.code() is grpc.StatusCode.UNAVAILABLE:
            hint = tls.plain_hint(detail, self.tls)
            err = exceptions.BrokerUnreachable(url=self.url,
                                               detail=f"{hint}: {detail}" if hint else detail)
        elif exc.code() is grpc.StatusCode.UNIMPLEMENTED or "http2 header with status" in detail:
            # A gRPC server without our service, or an HTTP server or proxy answering 404.
            err = exceptions.NotABroker(url=self.url, detail=detail)
        elif exc.code() is grpc.StatusCode.UNAUTHENTICATED:
            err = exceptions.AccessDenied(url=self.url, detail=detail)
        else:
            err = exceptions.RemoteError(detail=detail or exc.code().name)
        err.code = exc.code()  # type: ignore[union-attr]
        return err

    async def _real_status(self, exc: grpc.aio.AioRpcError) -> exceptions.BrokerError:
        """`exc` translated; but a stream the broker ended before our first write (a token
        refused as it opened) can fail the write as INTERNAL "Internal error from Core", its
        status lost: a unary call then says what the refusal was."""
        if exc.code() is not grpc.StatusCode.INTERNAL:
            return self.translate(exc)
        try:
            await self._unary(self.stub.GetTask, tasks_pb2.GetTaskRequest(id=""))
        except (exceptions.AccessDenied, exceptions.TlsFailed,
                exceptions.BrokerUnreachable) as refusal:
            return refusal  # (unreachable: the broker went away in the middle of the stream)
        except exceptions.BrokerError:
            pass  # refused for the empty id, as it should be: the stream failed otherwise
        return self.translate(exc)

    async def _unary(self, method: Any, request: Any) -> Any:
        try:
            return await method(request, timeout=self.timeout_s, wait_for_ready=False,
                                metadata=self.metadata)
        except grpc.aio.AioRpcError as exc:
            raise self.translate(exc) from exc

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
        call = self.stub.SubmitTask(metadata=self.metadata)
        try:
            await call.write(tasks_pb2.SubmitTaskRequest(header=header))
            first = await call.read()
            if first is grpc.aio.EOF or first.WhichOneof("msg") != "ack":
                raise exceptions.RemoteError(detail="the broker did not acknowledge the header")
            if first.ack.send_payload:
                with path.open("rb") as f:
                    while block := f.read(CHUNK_BYTES):
                        await call.write(tasks_pb2.SubmitTaskRequest(chunk=block))
            await call.done_writing()
            reply = await call.read()
            if reply is grpc.aio.EOF or reply.WhichOneof("msg") != "task":
                raise exceptions.RemoteError(detail="the broker ended the submit without a task")
            return reply.task, first.ack.task_existed
        except grpc.aio.AioRpcError as exc:
            raise await self._real_status(exc) from exc
        finally:
            call.cancel()

    async def get_task(self, task_id: str) -> tasks_pb2.Task:
        return await self._unary(self.stub.GetTask, tasks_pb2.GetTaskRequest(id=task_id))

    async def list_tasks(
        self, *, states: Sequence[int] = (), task_types: Sequence[str] = (), miner: str = "",
        worker_id: str = "", page_size: int = 100, page_token: str = "",
    ) -> tasks_pb2.ListTasksResponse:
        return await self._unary(self.stub.ListTasks, tasks_pb2.ListTasksRequest(
            states=cast(Any, list(states)), task_types=list(task_types), miner=miner,
            worker_id=worker_id, page_size=page_size, page_token=page_token,
        ))

    async def watch(self, task_id: str) -> AsyncIterator[tasks_pb2.Task]:
        """Every version of the task until a terminal state (no polling)."""
        call = self.stub.WatchTask(tasks_pb2.WatchTaskRequest(id=task_id),
                                   metadata=self.metadata)
        try:
            async for task in call:
                yield task
        except grpc.aio.AioRpcError as exc:
            raise self.translate(exc) from exc
        finally:
            call.cancel()

    async def reset(self, task_ids: Sequence[str]) -> list[tasks_pb2.Task]:
        reply = await self._unary(
            self.stub.ResetTasks, tasks_pb2.ResetTasksRequest(ids=list(task_ids))
        )
        return list(reply.tasks)

    async def cancel(self, task_id: str, reason: str = "") -> tasks_pb2.Task:
        return await self._unary(
            self.stub.CancelTask, tasks_pb2.CancelTaskRequest(id=task_id, reason=reason)
        )

    async def stat_resource(self, sha256: str) -> tasks_pb2.Resource | None:
        try:
            return await self._unary(
                self.stub.StatResource, tasks_pb2.StatResourceRequest(sha256=sha256)
            )
        except exceptions.RemoteError as exc:
            if getattr(exc, "code", None) is grpc.StatusCode.NOT_FOUND:
                return None
            raise

    async def list_resources(self) -> list[tasks_pb2.Resource]:
        reply = await self._unary(self.stub.ListResources, tasks_pb2.ListResourcesRequest())
        return list(reply.resources)

    async def delete_resource(self, sha256: str) -> tasks_pb2.Resource:
        return await self._unary(self.stub.DeleteResource,
                                 tasks_pb2.DeleteResourceRequest(sha256=sha256))

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

        try:
            return await self.stub.PutResource(requests(), timeout=max(self.timeout_s, 600),
                                               metadata=self.metadata)
        except grpc.aio.AioRpcError as exc:
            raise self.translate(exc) from exc

    async def download_resource(self, sha256: str, out: pathlib.Path) -> tuple[int, str]:
        """Stream a resource into `out` (temp file, checked, then renamed)."""
        call = self.stub.GetResource(tasks_pb2.GetResourceRequest(sha256=sha256),
                                     metadata=self.metadata)
        return await self._download(call, f"resource {sha256}", out)

    async def list_workers(self) -> list[workers_pb2.WorkerInfo]:
        reply = await self._unary(self.workers.ListWorkers, workers_pb2.ListWorkersRequest())
        return list(reply.workers)

    async def drain_worker(self, worker_id: str, reason: str) -> None:
        await self._unary(self.workers.DrainWorker,
                          workers_pb2.DrainWorkerRequest(worker_id=worker_id, reason=reason))

    async def resume_worker(self, worker_id: str) -> bool:
        """Whether the worker was drained."""
        reply = await self._unary(self.workers.ResumeWorker,
                                  workers_pb2.ResumeWorkerRequest(worker_id=worker_id))
        return bool(reply.was_drained)

    async def remove_worker(self, worker_id: str) -> None:
        await self._unary(
            self.workers.RemoveWorker, workers_pb2.RemoveWorkerRequest(worker_id=worker_id)
        )

    async def download_result(self, task_id: str, out: pathlib.Path) -> tuple[int, str]:
        """Stream the task's result into `out` (temp file, checked, then renamed)."""
        call = self.stub.GetResult(tasks_pb2.GetResultRequest(id=task_id),
                                   metadata=self.metadata)
        return await self._download(call, f"result of task {task_id}", out)

    async def download_payload(self, task_id: str, out: pathlib.Path) -> tuple[int, str]:
        """Stream the task's payload into `out` (temp file, checked, then renamed)."""
        call = self.stub.GetPayload(tasks_pb2.GetPayloadRequest(id=task_id),
                                    metadata=self.metadata)
        return await self._download(call, f"payload of task {task_id}", out)

    async def _download(self, call: Any, what: str, out: pathlib.Path) -> tuple[int, str]:
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
            raise self.translate(exc) from exc
        finally:
            call.cancel()
            tmp.unlink(missing_ok=True)
