"""The WorkerService gRPC service: the `Work` stream of each worker, fenced payload fetch and
result upload, and the worker registry for operators."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import secrets
from collections.abc import AsyncIterator, Awaitable, Sequence
from typing import Any

import grpc
import structlog

from broker import convert, exceptions, framing, models, policy
from broker.config import BrokerConfig
from broker.dispatcher import Dispatcher, Session
from broker.housekeeper import Serving
from broker.models import Drain, Gpu, TaskFilter, TaskState, WorkerRecord
from broker.outages import Outage
from broker.service import mapped_errors
from broker.tasks import TaskManager
from protos.gpuproxy.v1 import workers_pb2, workers_pb2_grpc

log = structlog.get_logger(__name__)


async def _ignore(_: bool) -> None:
    """No one to tell of changes in whether the broker serves (a service made without one)."""

#: Revoke reason that acknowledges a worker's ReleaseTask.
RELEASED = "released"
#: The longest worker id and host name the store keeps (VARCHAR(255) on MariaDB).
NAME_CHARS = 255


def record_from(reg: workers_pb2.Register, now_ms: int, broker: str = "") -> WorkerRecord:
    if not reg.worker_id:
        raise exceptions.InvalidArgument(detail="register needs a worker_id")
    for field, value in (("worker_id", reg.worker_id), ("hostname", reg.hostname)):
        if len(value) > NAME_CHARS:  # the database's column width
            raise exceptions.InvalidArgument(
                detail=f"{field} is {len(value)} characters long, over {NAME_CHARS}: shorten "
                "the worker's host name, or the worker_id in its work folder's state.json")
    if not reg.task_types:
        raise exceptions.InvalidArgument(detail="register needs at least one task type")
    if reg.max_tasks < 1:
        raise exceptions.InvalidArgument(detail="max_tasks must be at least 1")
    return WorkerRecord(
        worker_id=reg.worker_id, hostname=reg.hostname, addresses=tuple(reg.addresses),
        version=reg.version, task_types=tuple(reg.task_types), max_tasks=reg.max_tasks,
        gpus=tuple(Gpu(index=g.index, name=g.name, uuid=g.uuid, memory_bytes=g.memory_bytes,
                       mig=g.mig if g.HasField("mig") else None) for g in reg.gpus),
        registered_at=now_ms, last_seen_at=now_ms, resident_keys=tuple(reg.resident_keys),
        instance=reg.instance, session=secrets.token_hex(8), broker=broker,
    )


class WorkerService(workers_pb2_grpc.WorkerServiceServicer):
    def __init__(self, tasks: TaskManager, dispatcher: Dispatcher, config: BrokerConfig,
                 serving: Serving | None = None) -> None:
        self.tasks = tasks
        self.store = tasks.store
        self.dispatcher = dispatcher
        self.config = config
        #: What the broker's loops find; a broker that cannot serve sends movable workers away
        self.serving = serving or Serving(_ignore)
        self.name = ""  #: HOST:PORT of this broker, in the records of its workers
        self._bookkeeping_outage = Outage("storing workers' heartbeats and progress")
        self._endings: set[asyncio.Task[None]] = set()  #: cleanups of ended Work streams

    # -- the Work stream -------------------------------------------------------------------

    @mapped_errors
    async def Work(
        self, request_iterator: AsyncIterator[workers_pb2.WorkerMessage],
        context: grpc.aio.ServicerContext,
    ) -> AsyncIterator[workers_pb2.BrokerMessage]:
        register = await framing.opening(request_iterator, "register")
        record = record_from(register, models.now_ms(), self.name)
        if register.other_brokers and self.serving.own_database_down():
            raise exceptions.CannotServeNow(why=self.serving.why_not())
        if twin := self.dispatcher.twin_of(record.worker_id, register.instance):
            raise exceptions.WorkerIdInUse(
                worker_id=record.worker_id,
                hostname=twin.record.hostname if twin.record else "unknown")
        for gpu in record.gpus:  # the per-host lock (--lock-dir) missed a second worker
            if gpu.uuid and (holder := self.dispatcher.gpu_holder(
                    record.worker_id, record.hostname, gpu.uuid)):
                raise exceptions.GpuInUse(
                    uuid=gpu.uuid, name=gpu.name, other=holder.worker_id,
                    hostname=holder.record.hostname if holder.record else "unknown")
        # The same, for a process connected to another broker sharing the database.
        live_ms = int(self.config.lease_s * 1000)
        if held := await self.store.register_worker(record, live_ms):
            raise exceptions.WorkerIdInUse(worker_id=record.worker_id, hostname=held.hostname)
        session = Session(record.worker_id, record.task_types, record.max_tasks,
                          stale_after_s=self.config.lease_s, instance=register.instance,
                          movable=register.other_brokers > 0)
        session.record = record
        await self._resume(session, register.held)
        log.info("worker connected", worker_id=record.worker_id, host=record.hostname,
                 types=list(record.task_types), gpus=[g.uuid for g in record.gpus],
                 resumed=list(session.held))
        yield workers_pb2.BrokerMessage(registered=workers_pb2.Registered(
            worker_id=record.worker_id, lease_s=self.config.lease_s,
            heartbeat_s=self.config.heartbeat_s,
        ))
        self.dispatcher.add(session)
        if session.movable and self.serving.own_database_down():  # (it went meanwhile)
            session.handed_off = True
            session.close()
        reader = asyncio.create_task(self._read(session, request_iterator),
                                     name=f"work-reader-{record.worker_id}")
        try:
            while not session.closed:
                getter = asyncio.ensure_future(session.outbox.get())
                done, _ = await asyncio.wait({getter, reader},
                                             return_when=asyncio.FIRST_COMPLETED)
                if getter not in done:
                    getter.cancel()
                    reader.result()  # the worker hung up, or its message was bad
                    return
                msg = getter.result()
                if msg.WhichOneof("msg") is not None:
                    yield msg
        finally:
            self.dispatcher.remove(session)
            reader.cancel()
            # In a task of its own: a hang-up cancels this handler, and may cancel it again
            # (the call, then its connection) while the cleanup still awaits the database.
            ending = asyncio.create_task(self._stream_ended(session, reader))
            self._endings.add(ending)
            ending.add_done_callback(self._endings.discard)
            await asyncio.shield(ending)

    async def settle(self, timeout_s: float) -> None:
        """Wait for the cleanups of ended streams (what they record), before the store closes:
        a worker id left held would refuse the worker's next process for a lease."""
        if self._endings:
            await asyncio.wait(self._endings, timeout=timeout_s)

    async def _stream_ended(self, session: Session, reader: asyncio.Task[None]) -> None:
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await reader
        await self._hand_back_undelivered(session)
        record = session.record
        assert record is not None
        try:
            await self.store.worker_disconnected(record.worker_id, record.session,
                                                 models.now_ms(), session.handed_off)
        except Exception as exc:  # the id frees itself once the record is a lease old
            log.warning("could not record that the worker disconnected",
                        worker_id=record.worker_id, error=str(exc))
        log.info("worker disconnected", worker_id=record.worker_id, holding=list(session.held))

    async def _resume(self, session: Session, held: Sequence[workers_pb2.HeldTask]) -> None:
        """After a reconnect the worker keeps what is still its own and drops the rest.

        A task still running under this worker's id that the worker does not list (it restarted,
        or an assignment was lost with the old stream) goes back to the queue at once, as a
        failed attempt: a task that kills its worker every time still runs out of attempts.
        """
        listed = {h.task_id for h in held}
        running = await self.store.list_tasks(
            TaskFilter(states=(TaskState.RUNNING,), worker_id=session.worker_id), 1000
        )
        for task in running:
            if task.id not in listed:
                await self._fenced(self.tasks.fail(
                    task.id, task.fence, f"worker {session.worker_id} came back without this "
                    "task (restarted, or the assignment was lost)", retryable=True,
                ), session, task.id)
        for h in held:
            try:
                task = await self.tasks.check_held(h.task_id, h.fence)
                if task.worker_id != session.worker_id:
                    raise exceptions.StaleFence(task_id=h.task_id, fence=h.fence)
                await self.tasks.renew(h.task_id, h.fence)
                session.held[h.task_id] = h.fence
            except (exceptions.StaleFence, exceptions.TaskNotFound) as exc:
                session.revoke(h.task_id, h.fence, str(exc))

    async def _read(
        self, session: Session, requests: AsyncIterator[workers_pb2.WorkerMessage]
    ) -> None:
        async for msg in requests:
            session.seen()
            kind = msg.WhichOneof("msg")
            if kind == "capacity":
                session.accepting = msg.capacity.free > 0
                self.dispatcher.wake()
                await self._bookkeeping(self._pause_changed(session, msg.capacity))
            elif kind == "heartbeat":
                await self._bookkeeping(self._heartbeat(session, msg.heartbeat))
            elif kind == "progress":
                p = msg.progress
                with contextlib.suppress(exceptions.StaleFence):
                    await self._bookkeeping(
                        self.tasks.progress(p.task.task_id, p.task.fence, p.phase, p.fraction))
            elif kind == "failure":
                f = msg.failure
                await self._fenced(self.tasks.fail(
                    f.task.task_id, f.task.fence, f.message, f.retryable
                ), session, f.task.task_id)
                self.dispatcher.done(f.task.task_id, f.task.fence)
            elif kind == "release":
                r = msg.release
                await self._fenced(self.tasks.release(r.task.task_id, r.task.fence, r.reason),
                                   session, r.task.task_id)
                self.dispatcher.done(r.task.task_id, r.task.fence)
                # The acknowledgement: a stopping worker waits for it before it hangs up, so
                # that closing the stream cannot cut the release off.
                session.send(workers_pb2.BrokerMessage(revoke=workers_pb2.Revoke(
                    task_id=r.task.task_id, fence=r.task.fence, reason=RELEASED,
                )))
            else:
                raise exceptions.InvalidArgument(detail=f"unexpected message {kind!r}")

    async def _bookkeeping(self, op: Awaitable[object]) -> None:
        """Store what a worker's periodic messages say (heartbeats, capacity, progress). The
        next message says it again, so while the database is unreachable this is logged, once
        per outage, and the worker's stream stays open: cutting every worker off would not
        bring the database back. (The housekeeper gives leases a grace once it is back.)"""
        try:
            await op
            self._bookkeeping_outage.succeeded()
        except exceptions.StoreUnavailable as exc:
            self._bookkeeping_outage.failed(exc)

    async def _heartbeat(self, session: Session, beat: workers_pb2.Heartbeat) -> None:
        await self.store.touch_worker(session.worker_id, models.now_ms())
        for h in beat.held:
            try:
                await self.tasks.renew(h.task_id, h.fence)
            except (exceptions.StaleFence, exceptions.TaskNotFound) as exc:
                if await self.tasks.finished_result(h.task_id, h.fence) is not None:
                    continue  # its own result, whose answer is on its way: nothing to revoke
                log.warning("heartbeat for a task the worker no longer holds",
                            worker_id=session.worker_id, task_id=h.task_id, fence=h.fence)
                session.revoke(h.task_id, h.fence, str(exc))
        await self._keys_changed(session, tuple(beat.resident_keys))

    async def _pause_changed(self, session: Session, capacity: workers_pb2.Capacity) -> None:
        """Keep the registry's record of a worker's pause (after failures in a row) current."""
        until = (capacity.paused_until.ToMilliseconds()
                 if capacity.HasField("paused_until") else 0)
        reason = policy.clipped(capacity.pause_reason)
        if await self._record_changed(session, paused_until=until, pause_reason=reason) and until:
            log.warning("worker paused after failures in a row", worker_id=session.worker_id,
                        pause_s=round((until - models.now_ms()) / 1000), reason=reason)

    async def _keys_changed(self, session: Session, keys: tuple[str, ...]) -> None:
        """Keep the registry's list of the worker's loaded keys current."""
        await self._record_changed(session, resident_keys=keys)

    async def _record_changed(self, session: Session, **fields: Any) -> bool:
        """Store the worker's record with these fields, unless it already has them; whether it
        changed."""
        record = session.record
        if record is None or all(getattr(record, k) == v for k, v in fields.items()):
            return False
        changed = dataclasses.replace(record, **fields, last_seen_at=models.now_ms())
        await self.store.update_worker(changed)
        session.record = changed  # only once stored: a failed store is tried again
        return True

    async def _fenced(self, op: Awaitable[object], session: Session, task_id: str) -> None:
        """Run a report; one for a claim that is no longer the worker's is logged and dropped."""
        try:
            await op
        except (exceptions.StaleFence, exceptions.TaskNotFound) as exc:
            log.warning("late report refused", worker_id=session.worker_id, task_id=task_id,
                        reason=str(exc))

    async def _hand_back_undelivered(self, session: Session) -> None:
        while not session.outbox.empty():
            msg = session.outbox.get_nowait()
            if msg.WhichOneof("msg") == "assignment":
                a = msg.assignment
                with contextlib.suppress(exceptions.BrokerError):
                    await self.tasks.release(a.task.id, a.fence, "assignment never delivered")

    # -- payload and result ------------------------------------------------------------------

    @mapped_errors
    async def FetchPayload(
        self, request: workers_pb2.FetchPayloadRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[object]:
        task = await self.tasks.check_held(request.task.task_id, request.task.fence)
        chunks = self.tasks.read_payload(task)
        async for msg in framing.blob_chunks(task.payload_size, task.payload_sha256, chunks):
            yield msg

    @mapped_errors
    async def UploadResult(
        self, request_iterator: AsyncIterator[workers_pb2.UploadResultRequest],
        context: grpc.aio.ServicerContext,
    ) -> object:
        h = await framing.opening(request_iterator, "header")
        try:
            await self.tasks.check_held(h.task.task_id, h.task.fence)
        except exceptions.StaleFence:
            self.dispatcher.done(h.task.task_id, h.task.fence)
            again = await self.tasks.finished_result(h.task.task_id, h.task.fence, h.sha256)
            if again is not None:
                return convert.task_to_proto(again)
            log.warning("late result refused", task_id=h.task.task_id, fence=h.task.fence)
            raise
        if h.size > self.config.max_payload_bytes:
            raise exceptions.PayloadTooLarge(size=h.size, limit=self.config.max_payload_bytes)
        try:
            task = await self.tasks.finish(h.task.task_id, h.task.fence, h.size, h.sha256,
                                           framing.chunks(request_iterator))
        except exceptions.StaleFence:
            self.dispatcher.done(h.task.task_id, h.task.fence)
            raise
        # A damaged upload leaves the claim held: the worker sends the result again.
        self.dispatcher.done(h.task.task_id, h.task.fence)
        return convert.task_to_proto(task)

    # -- registry ----------------------------------------------------------------------------

    @mapped_errors
    async def ListWorkers(
        self, request: workers_pb2.ListWorkersRequest, context: grpc.aio.ServicerContext
    ) -> workers_pb2.ListWorkersResponse:
        now = models.now_ms()
        running = await self.store.list_tasks(TaskFilter(states=(TaskState.RUNNING,)), 10_000)
        reply = workers_pb2.ListWorkersResponse()
        drains = {d.worker_id: d for d in await self.store.list_drains()}
        for w in await self.store.list_workers():
            info = reply.workers.add(
                worker_id=w.worker_id, hostname=w.hostname, addresses=list(w.addresses),
                version=w.version, task_types=list(w.task_types), max_tasks=w.max_tasks,
                online=self.online(w, now), broker=w.broker,
                task_ids=[t.id for t in running if t.worker_id == w.worker_id],
                resident_keys=list(w.resident_keys),
            )
            if w.paused_until > now and info.online:
                info.paused_until.FromMilliseconds(w.paused_until)
                info.pause_reason = w.pause_reason
            if drain := drains.get(w.worker_id):
                info.drained_at.FromMilliseconds(drain.drained_at)
                info.drain_reason = drain.reason
            for g in w.gpus:
                info.gpus.add(index=g.index, name=g.name, uuid=g.uuid,
                              memory_bytes=g.memory_bytes, mig=g.mig)
            info.last_seen.FromMilliseconds(w.last_seen_at)
            info.registered_at.FromMilliseconds(w.registered_at)
        return reply

    @mapped_errors
    async def RemoveWorker(
        self, request: workers_pb2.RemoveWorkerRequest, context: grpc.aio.ServicerContext
    ) -> workers_pb2.RemoveWorkerResponse:
        now = models.now_ms()
        for w in await self.store.list_workers():
            if w.worker_id == request.worker_id and self.online(w, now):
                raise exceptions.WorkerOnline(worker_id=w.worker_id)
        if not await self.store.remove_worker(request.worker_id):
            raise exceptions.WorkerNotFound(worker_id=request.worker_id)
        return workers_pb2.RemoveWorkerResponse()

    @mapped_errors
    async def DrainWorker(
        self, request: workers_pb2.DrainWorkerRequest, context: grpc.aio.ServicerContext
    ) -> workers_pb2.DrainWorkerResponse:
        reason = policy.clipped(request.reason)
        if not await self.store.drain_worker(Drain(request.worker_id, reason, models.now_ms())):
            raise exceptions.WorkerNotFound(worker_id=request.worker_id)
        self.dispatcher.drain(request.worker_id, True)  # at once here; elsewhere within 5 s
        log.info("worker drained: no new task", worker_id=request.worker_id, reason=reason)
        return workers_pb2.DrainWorkerResponse()

    @mapped_errors
    async def ResumeWorker(
        self, request: workers_pb2.ResumeWorkerRequest, context: grpc.aio.ServicerContext
    ) -> workers_pb2.ResumeWorkerResponse:
        was_drained = await self.store.resume_worker(request.worker_id)
        if not was_drained and request.worker_id not in {
                w.worker_id for w in await self.store.list_workers()}:
            raise exceptions.WorkerNotFound(worker_id=request.worker_id)
        self.dispatcher.drain(request.worker_id, False)
        log.info("worker resumed", worker_id=request.worker_id, was_drained=was_drained)
        return workers_pb2.ResumeWorkerResponse(was_drained=was_drained)

    def online(self, w: WorkerRecord, now_ms: int) -> bool:
        """Connected here, or heartbeating through another broker: its stream has not ended
        and it was seen within a lease."""
        if any(s.worker_id == w.worker_id for s in self.dispatcher.sessions):
            return True
        return (not w.disconnected_at and not w.handed_off_at
                and now_ms - w.last_seen_at < self.config.lease_s * 1000)
