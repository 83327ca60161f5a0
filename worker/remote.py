"""The worker's side of the broker's WorkerService, and the only module that knows gRPC.

gRPC errors become worker errors here: `BrokerUnavailable` (try again later), `TaskLost` (the
fence is stale or the task gone: drop the work), `BrokerRefused` (anything else), and
`RegistrationRefused` for a Work stream the broker will never accept.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
from collections.abc import AsyncIterator

import grpc

from broker import access, tls
from broker import exceptions as broker_exceptions
from broker.channels import CHANNEL_OPTIONS, Brokers
from protos.gpuproxy.v1 import tasks_pb2, workers_pb2, workers_pb2_grpc
from worker import exceptions

#: Chunk size of result uploads; gRPC messages stay far below the 4 MiB limit.
CHUNK_BYTES = 1024 * 1024


TRANSIENT = frozenset({
    grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.CANCELLED,
    grpc.StatusCode.UNKNOWN, grpc.StatusCode.ABORTED, grpc.StatusCode.INTERNAL,
})
LOST = frozenset({grpc.StatusCode.FAILED_PRECONDITION, grpc.StatusCode.NOT_FOUND})
#: Codes that refuse a Work stream for good: retrying the same registration cannot help.
FATAL_FOR_REGISTRATION = frozenset({
    grpc.StatusCode.UNIMPLEMENTED, grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.UNAUTHENTICATED,
    grpc.StatusCode.ALREADY_EXISTS,  # a live worker has this id (the daemon waits it out a while)
})


def held(task_id: str, fence: int) -> workers_pb2.HeldTask:
    return workers_pb2.HeldTask(task_id=task_id, fence=fence)


class Remote:
    """One channel to the broker, shared by the Work stream and the payload and result calls;
    with several brokers (comma-separated), the daemon moves it to the next one when the Work
    stream to this one fails (`failover`)."""

    def __init__(self, url: str, *, timeout_s: float = 60.0, token: str = "",
                 tls_ca: bytes | None = None) -> None:
        self.timeout_s = timeout_s
        self.metadata = access.metadata(token)  #: sent with every call
        self.brokers = Brokers(url, CHANNEL_OPTIONS, tls_ca)
        self._stubs: dict[str, workers_pb2_grpc.WorkerServiceStub] = {}

    @property
    def url(self) -> str:
        return self.brokers.url

    @property
    def tls(self) -> bool:
        return self.brokers.tls

    @property
    def stub(self) -> workers_pb2_grpc.WorkerServiceStub:
        if self.url not in self._stubs:
            self._stubs[self.url] = workers_pb2_grpc.WorkerServiceStub(self.brokers.channel)
        return self._stubs[self.url]

    def failover(self, failed_url: str, reason: str) -> bool:
        """Call the next broker from now on, if there are several (broker.channels)."""
        return self.brokers.failover(failed_url, reason)

    async def close(self) -> None:
        await self.brokers.close()

    def translate(self, exc: BaseException, what: str, task_id: str = "") -> exceptions.WorkerError:
        if not isinstance(exc, grpc.aio.AioRpcError):
            # A call that ended before our write (asyncio.InvalidStateError) is a broken stream.
            return exceptions.BrokerUnavailable(url=self.url, detail=f"{what}: {exc!r}")
        code, detail = exc.code(), exc.details() or exc.code().name
        if advice := tls.failure(detail):
            return exceptions.TlsFailed(url=self.url, advice=advice, detail=detail)
        if code is grpc.StatusCode.UNAVAILABLE and any(
                key == broker_exceptions.ERROR_METADATA_KEY
                for key, _ in exc.trailing_metadata() or ()):
            return exceptions.BrokerCannotServe(url=self.url, detail=f"{what}: {detail}")
        if code in TRANSIENT:
            hint = tls.plain_hint(detail, self.tls)
            return exceptions.BrokerUnavailable(
                url=self.url, detail=f"{what}: {hint + ': ' if hint else ''}{detail}")
        if code in LOST and task_id:
            return exceptions.TaskLost(task_id=task_id, detail=detail)
        return exceptions.BrokerRefused(what=what, code=code.name, detail=detail)

    def open_stream(self) -> Stream:
        return Stream(self, self.stub.Work(metadata=self.metadata))

    async def fetch_payload(self, task: workers_pb2.HeldTask) -> AsyncIterator[tasks_pb2.BlobChunk]:
        """The payload's chunks; the first carries the size and sha256 of the whole."""
        call = self.stub.FetchPayload(workers_pb2.FetchPayloadRequest(task=task),
                                      metadata=self.metadata)
        try:
            async for chunk in call:
                yield chunk
        except grpc.aio.AioRpcError as exc:
            if exc.code() is grpc.StatusCode.NOT_FOUND:
                # The task is ours (a stale fence is FAILED_PRECONDITION) but its payload is gone.
                raise exceptions.PayloadMissing(task_id=task.task_id, detail=exc.details()) from exc
            if exc.code() is grpc.StatusCode.DATA_LOSS:  # the broker's stored copy is damaged
                raise exceptions.StoredPayloadDamaged(task_id=task.task_id,
                                                      detail=exc.details()) from exc
            raise self.translate(exc, "send the payload", task.task_id) from exc
        finally:
            call.cancel()

    async def upload_result(self, task: workers_pb2.HeldTask, result: bytes) -> tasks_pb2.Task:
        """Header (size, sha256), then chunks; the broker answers with the finished task."""
        header = workers_pb2.ResultHeader(
            task=task, size=len(result), sha256=hashlib.sha256(result).hexdigest()
        )

        async def requests() -> AsyncIterator[workers_pb2.UploadResultRequest]:
            yield workers_pb2.UploadResultRequest(header=header)
            for offset in range(0, len(result), CHUNK_BYTES):
                yield workers_pb2.UploadResultRequest(chunk=result[offset:offset + CHUNK_BYTES])

        try:
            task_pb: tasks_pb2.Task = await self.stub.UploadResult(
                requests(), timeout=self.timeout_s, metadata=self.metadata
            )
        except grpc.aio.AioRpcError as exc:
            raise self.translate(exc, "take the result", task.task_id) from exc
        return task_pb


class Stream:
    """The Work stream: messages out through one writer task, messages in through `receive`.

    One writer, because grpc cancels a whole call when a task is cancelled in the middle of a
    write: a task that gets revoked while reporting progress must not break the stream.
    """

    def __init__(self, remote: Remote, call: grpc.aio.StreamStreamCall) -> None:
        self.remote = remote
        self.call = call
        #: Messages to write with their "written" futures; None ends the writer.
        self._outbox: asyncio.Queue[
            tuple[workers_pb2.WorkerMessage, asyncio.Future[None]] | None
        ] = asyncio.Queue()
        self._broken: exceptions.WorkerError | None = None
        self._closing = False
        self._half_closed = False
        self._writer = asyncio.create_task(self._write_all(), name="stream writer")

    async def register(
        self, message: workers_pb2.Register, timeout_s: float
    ) -> workers_pb2.Registered:
        """Send Register; the broker's Registered, or RegistrationRefused / BrokerUnavailable."""
        try:
            async with asyncio.timeout(timeout_s):
                await self.send(workers_pb2.WorkerMessage(register=message))
                reply = await self.call.read()
        except TimeoutError:
            raise exceptions.BrokerUnavailable(
                url=self.remote.url, detail=f"no answer to Register within {timeout_s:g} s"
            ) from None
        except grpc.aio.AioRpcError as exc:
            # (a certificate naming the host in its CN alone fails as UNAUTHENTICATED: TLS)
            if exc.code() in FATAL_FOR_REGISTRATION and not tls.failure(
                    exc.details() or ""):
                raise exceptions.RegistrationRefused(
                    url=self.remote.url, code=exc.code().name, detail=exc.details() or ""
                ) from exc
            raise self.remote.translate(exc, "register") from exc
        except exceptions.BrokerRefused as exc:
            # The broker ended the call before Register was written (an access token refused
            # as the stream opened): the same refusal, seen by the writer
            if exc.code in {code.name for code in FATAL_FOR_REGISTRATION}:
                raise exceptions.RegistrationRefused(
                    url=self.remote.url, code=exc.code, detail=exc.detail) from exc
            raise
        if reply is grpc.aio.EOF:
            raise exceptions.BrokerUnavailable(
                url=self.remote.url, detail="the stream ended before Registered"
            )
        if reply.WhichOneof("msg") != "registered":
            raise exceptions.RegistrationRefused(
                url=self.remote.url, code="PROTOCOL",
                detail=f"it answered Register with {reply.WhichOneof('msg')}, not Registered",
            )
        registered: workers_pb2.Registered = reply.registered
        return registered

    async def receive(self) -> workers_pb2.BrokerMessage | None:
        """The next broker message; None when the broker ended the stream."""
        try:
            message = await self.call.read()
        except grpc.aio.AioRpcError as exc:
            raise self.remote.translate(exc, "keep the Work stream") from exc
        return None if message is grpc.aio.EOF else message

    async def send(self, message: workers_pb2.WorkerMessage) -> None:
        """Write one message; returns once written. BrokerUnavailable when the stream broke."""
        done = self.post(message)
        await asyncio.shield(done)

    def post(self, message: workers_pb2.WorkerMessage) -> asyncio.Future[None]:
        """Queue one message without waiting (heartbeats, progress, capacity)."""
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        # Nobody may wait on it: retrieve its outcome so that it is never reported as lost.
        done.add_done_callback(lambda f: f.cancelled() or f.exception())
        if self._broken is not None or self._closing:
            done.set_exception(self._broken or exceptions.BrokerUnavailable(
                url=self.remote.url, detail="stream closing"
            ))
        else:
            self._outbox.put_nowait((message, done))
        return done

    async def finish_writing(self, timeout_s: float = 2.0) -> None:
        """Send what is queued, then half-close: the broker reads it all and ends the stream,
        which `receive` then returns as its end. The way to hang up while a task reads: a task
        cancelled in the middle of a read cancels the whole call, and what was written but not
        yet sent is lost (a failure report just before the worker exits, say)."""
        if not self._closing:
            self._closing = True
            self._outbox.put_nowait(None)
        with contextlib.suppress(grpc.aio.AioRpcError, asyncio.InvalidStateError, TimeoutError):
            async with asyncio.timeout(timeout_s):
                await asyncio.shield(self._writer)
                if not self._half_closed:
                    self._half_closed = True
                    await self.call.done_writing()

    async def close(self, timeout_s: float = 2.0) -> None:
        """End the stream cleanly: what is queued goes out, then a half-close, then we wait for
        the broker to end it (so that a last ReleaseTask is read, not cut off), then cancel."""
        await self.finish_writing(timeout_s)
        with contextlib.suppress(grpc.aio.AioRpcError, asyncio.InvalidStateError, TimeoutError):
            async with asyncio.timeout(timeout_s):
                while await self.call.read() is not grpc.aio.EOF:
                    pass
        self._writer.cancel()
        self._fail(exceptions.BrokerUnavailable(url=self.remote.url, detail="stream closed"))
        self.call.cancel()

    async def _write_all(self) -> None:
        while (item := await self._outbox.get()) is not None:
            message, done = item
            try:
                await self.call.write(message)
            except (grpc.aio.AioRpcError, asyncio.InvalidStateError) as exc:
                self._fail(self.remote.translate(exc, "write to the Work stream"))
                if not done.done():
                    done.set_exception(self._broken or exc)
                return
            if not done.done():
                done.set_result(None)

    def _fail(self, error: exceptions.WorkerError) -> None:
        self._broken = self._broken or error
        while not self._outbox.empty():
            item = self._outbox.get_nowait()
            if item is not None and not item[1].done():
                item[1].set_exception(self._broken)
