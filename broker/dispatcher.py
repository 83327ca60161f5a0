"""Pushes tasks to connected workers as soon as a task and a free slot meet.

Each connected worker has a session with its free capacity and an outbox that its `Work` stream
drains. The dispatcher claims tasks for sessions with free slots when woken (a submit, a reset,
a requeue, new capacity) and also every `poll_s`, which is how tasks submitted through another
broker sharing the database reach this broker's workers.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time

import structlog

from broker import convert, exceptions, metrics, models, policy
from broker.models import Task, TaskState, WorkerRecord
from broker.outages import Outage
from broker.store import Store
from protos.gpuproxy.v1 import workers_pb2

log = structlog.get_logger(__name__)

#: How often held tasks and drains are read again, for changes made through another broker.
RECHECK_HELD_S = 5.0
#: A task ready to run again waits this many polls before its last worker may take it back:
#: time for a free worker of another broker (which finds it by polling) to get it first.
ELSEWHERE_POLLS = 3


@dataclasses.dataclass(eq=False)
class Session:
    """One live `Work` stream."""

    worker_id: str
    task_types: tuple[str, ...]
    max_tasks: int
    accepting: bool = False  #: the worker announced capacity and is not draining
    held: dict[str, int] = dataclasses.field(default_factory=dict)  #: task id -> fence
    outbox: asyncio.Queue[workers_pb2.BrokerMessage] = dataclasses.field(
        default_factory=asyncio.Queue
    )
    closed: bool = False
    stale_after_s: float = 60.0  #: a worker silent this long (hung, stopped) gets no new work
    last_seen: float = dataclasses.field(default_factory=time.monotonic)
    record: WorkerRecord | None = None  #: the registration, kept current (loaded keys)
    instance: str = ""  #: the worker process's random token ("" from workers that send none)
    movable: bool = False  #: the worker knows other brokers of this database (other_brokers)
    #: The broker ended the stream (stopping, or sending the worker elsewhere): the worker is
    #: not gone, and its tasks keep their grace at a broker's start (housekeeper.grant_grace)
    handed_off: bool = False
    added: int = 0  #: the dispatcher's count of streams when this one was added

    def seen(self) -> None:
        self.last_seen = time.monotonic()

    @property
    def alive(self) -> bool:
        return not self.closed and time.monotonic() - self.last_seen <= self.stale_after_s

    @property
    def free(self) -> int:
        # Counted here, not from the worker's number, so that assignments in flight count.
        if not self.accepting or not self.alive:
            return 0
        return max(self.max_tasks - len(self.held), 0)

    def close(self) -> None:
        """End the stream: its handler wakes on the empty message and sees `closed`."""
        self.closed = True
        self.outbox.put_nowait(workers_pb2.BrokerMessage())

    def send(self, msg: workers_pb2.BrokerMessage) -> None:
        if not self.closed:
            self.outbox.put_nowait(msg)

    def revoke(self, task_id: str, fence: int, reason: str) -> None:
        """Tell the worker to drop this claim (only this fence: a newer claim stays). Its slot
        is free only once the worker says so: the work may take a moment to stop."""
        if self.held.get(task_id) == fence:
            del self.held[task_id]
            self.accepting = False  # until the worker's next Capacity
        self.send(workers_pb2.BrokerMessage(
            revoke=workers_pb2.Revoke(task_id=task_id, reason=reason, fence=fence)
        ))


class Dispatcher:
    def __init__(self, store: Store, *, lease_s: float, poll_s: float = 0.5) -> None:
        self.store = store
        self.lease_ms = int(lease_s * 1000)
        self.poll_s = poll_s
        self.sessions: list[Session] = []
        #: Workers an operator drained (DrainWorker): no new task; read from the database
        #: every RECHECK_HELD_S, for drains made through another broker.
        self.drained: set[str] = set()
        self._drains_changed = 0  #: drains and resumes made here: a read racing one is stale
        self._drains_read = False  #: no task is given before the drains were read once
        self._wake = asyncio.Event()
        self._checks: set[str] = set()
        self._added = 0  #: streams added so far (a registration read before one is stale)
        self.stopping = False  #: the broker stops: a stream added now is handed off at once

    def twin_of(self, worker_id: str, instance: str) -> Session | None:
        """A live stream of another worker process registered under this id, if any: two
        processes sharing an id would take each other's tasks back at every reconnect."""
        return next((s for s in self.sessions if s.worker_id == worker_id and s.alive
                     and instance and s.instance and s.instance != instance), None)

    def gpu_holder(self, worker_id: str, hostname: str, gpu_uuid: str) -> Session | None:
        """A live stream of another worker that serves this GPU, if any. A card known by its
        index only (no nvidia-smi: "index-0") is the same card on the same host only; a GPU's
        or a MIG device's UUID is unique everywhere."""
        def same(s: Session) -> bool:
            assert s.record is not None
            return any(g.uuid == gpu_uuid for g in s.record.gpus) and (
                gpu_uuid.startswith(("GPU-", "MIG-")) or s.record.hostname == hostname)

        return next((s for s in self.sessions if s.worker_id != worker_id and s.alive
                     and s.record and same(s)), None)

    def add(self, session: Session) -> None:
        # A worker that reconnects before its old stream was noticed dead replaces it.
        for old in [s for s in self.sessions if s.worker_id == session.worker_id]:
            log.info("worker reconnected; closing its previous stream", worker_id=old.worker_id)
            self.remove(old)
        self._added += 1
        session.added = self._added
        self.sessions.append(session)
        if self.stopping:  # registered as the broker stopped: it goes on elsewhere
            session.handed_off = True
            self.remove(session)
        metrics.WORKERS.set(len(self.sessions))
        self.wake()

    def close_movable(self) -> int:
        """End the Work streams of workers that know other brokers (this one cannot serve):
        they go on through one of those; how many."""
        movable = [s for s in self.sessions if s.movable]
        for s in movable:
            s.handed_off = True
            self.remove(s)
        return len(movable)

    def close_all(self) -> None:
        """End every Work stream (broker shutdown); workers reconnect and resume elsewhere."""
        self.stopping = True
        for s in list(self.sessions):
            s.handed_off = True
            self.remove(s)

    def remove(self, session: Session) -> None:
        if not session.closed:
            session.close()
        if session in self.sessions:
            self.sessions.remove(session)
        metrics.WORKERS.set(len(self.sessions))

    def done(self, task_id: str, fence: int) -> None:
        """The claim (task, fence) ended: finished, failed, released or found stale. Only that
        claim's slot is freed; a newer claim of the same task elsewhere keeps its slot."""
        for s in self.sessions:
            if s.held.get(task_id) == fence:
                del s.held[task_id]
        self.wake()

    def wake(self) -> None:
        self._wake.set()

    def drain(self, worker_id: str, drained: bool) -> None:
        """An operator drained (or resumed) a worker through this broker: at once here."""
        self._drains_changed += 1
        if drained:
            self.drained.add(worker_id)
        else:
            self.drained.discard(worker_id)
            self.wake()

    def task_changed(self, task_id: str) -> None:
        """A task changed here: maybe new work, maybe a held task was cancelled."""
        if any(task_id in s.held for s in self.sessions):
            self._checks.add(task_id)
        self.wake()

    async def run_forever(self) -> None:
        """Dispatch until cancelled; a failed round (database down) is logged and retried."""
        outage = Outage("dispatch")
        rechecked = time.monotonic()
        drains_due = True
        while True:
            try:
                await asyncio.wait_for(self._wake.wait(), self.poll_s)
            except TimeoutError:
                pass
            self._wake.clear()
            if time.monotonic() - rechecked >= RECHECK_HELD_S:
                # A task cancelled or taken back through another broker sharing the database
                # is not heard of here: look, rather than wait for its worker's next heartbeat.
                rechecked = time.monotonic()
                self._checks.update(t for s in self.sessions for t in s.held)
                drains_due = True
            try:
                if drains_due:
                    await self._close_replaced()
                    drains_due = not await self._read_drains()
                await self._revoke_lost()
                if self._drains_read:
                    await self._assign()
                outage.succeeded()
            except Exception as exc:
                await asyncio.sleep(outage.failed(exc))
                self._wake.set()

    async def _close_replaced(self) -> None:
        """End the streams of workers registered since through another broker (a worker given
        several brokers that moved on while its stream here looked alive), idle ones too.
        Streams added during the read are not judged by it."""
        added = self._added
        current = {w.worker_id: w.session for w in await self.store.list_workers()}
        for s in [s for s in self.sessions if s.added <= added and s.record is not None]:
            assert s.record is not None
            if current.get(s.worker_id, s.record.session) != s.record.session:
                self._close_moved(s)

    async def _replaced(self, s: Session) -> bool:
        """Whether the worker has registered through another broker since this stream was
        opened (its stream here may look alive yet nobody reads it): then the task just
        claimed for it is given back, not sent into the stream."""
        record = await self.store.get_worker(s.worker_id)
        if record is None or s.record is None or record.session == s.record.session:
            return False
        self._close_moved(s)
        return True

    def _close_moved(self, s: Session) -> None:
        log.info("worker registered through another broker; closing its stream here",
                 worker_id=s.worker_id)
        s.handed_off = True
        self.remove(s)

    async def _read_drains(self) -> bool:
        """Take the drains from the database; False when one made here during the read made
        it stale (it is kept, and the drains are read again next round)."""
        changed = self._drains_changed
        read = {d.worker_id for d in await self.store.list_drains()}
        if changed != self._drains_changed:
            return False
        self.drained = read
        self._drains_read = True
        return True

    async def _revoke_lost(self) -> None:
        for task_id in list(self._checks):
            # Taken before the read: a change that arrives during it is checked again.
            self._checks.discard(task_id)
            try:
                task: Task | None = await self.store.get_task(task_id)
            except exceptions.TaskNotFound:
                task = None
            except BaseException:
                self._checks.add(task_id)  # the database is down: check it once it answers
                raise
            for s in self.sessions:
                fence = s.held.get(task_id)
                if fence is None or (task and _held_by(task, s.worker_id, fence)):
                    continue
                if task and task.state == TaskState.FINISHED and task.fence == fence:
                    del s.held[task_id]  # its own result: the slot is free, nothing to revoke
                    continue
                state = task.state.name.lower() if task else "deleted"
                log.info("task revoked", task_id=task_id, worker_id=s.worker_id, state=state)
                s.revoke(task_id, fence, f"task is {state}: "
                         f"{(task and task.error_message) or 'taken back by the broker'}")

    async def _assign(self) -> None:
        """Claim for hungry sessions until nothing is left, one claim at a time: each goes to
        the session best placed for the task at the head of the queue, the others waiting
        their turn (round-robin); a session that finds nothing to claim leaves the round."""
        hungry = [s for s in self.sessions if self._takes_work(s)]
        while hungry:
            s = await self._placed(hungry)
            if s is None:  # nothing any of them could claim: one query, not one per session
                return
            task = await self.store.claim_task(
                s.worker_id, s.task_types, self.lease_ms, models.now_ms(),
                elsewhere_ms=int(ELSEWHERE_POLLS * self.poll_s * 1000),
            )
            hungry.remove(s)
            gone = "worker disconnected" if s.closed else "worker drained" if (
                s.worker_id in self.drained) else ""
            if task is not None and not gone and await self._replaced(s):
                gone = "worker registered through another broker"
            if task is None or gone:
                if task is not None:  # the stream closed, or a drain came, meanwhile
                    await self.store.release_task(task.id, task.fence, gone, models.now_ms())
                continue
            self.assign(s, task)
            if self._takes_work(s):
                hungry.append(s)

    def _takes_work(self, s: Session) -> bool:
        return s.free > 0 and not s.closed and s.worker_id not in self.drained

    async def _placed(self, hungry: list[Session]) -> Session | None:
        """The first hungry session that can run the next task and holds its proving key
        loaded (loading a key takes seconds to minutes), else the first that can run it; None
        when no task waits for any of them. A task that ran before goes, where another can
        take it, to another worker than the one its last attempt ran on: a faulty GPU or C2
        processor would otherwise spend every attempt of the tasks it fails (or, for a result
        found wrong and dropped, make it again)."""
        if len(hungry) == 1:
            return hungry[0]
        head = await self.store.next_task(
            sorted({t for s in hungry for t in s.task_types}), models.now_ms()
        )
        if head is None:
            return None
        able = [s for s in hungry if head.task_type in s.task_types] or hungry
        if head.worker_id:  # it ran: an attempt, or a finished run whose result was dropped
            able = [s for s in able if s.worker_id != head.worker_id] or able
        key = policy.task_key(head.comment)
        return next((s for s in able if key and s.record and key in s.record.resident_keys),
                    able[0])

    def assign(self, s: Session, task: Task) -> None:
        s.held[task.id] = task.fence
        msg = workers_pb2.Assignment(task=convert.task_to_proto(task), fence=task.fence)
        ts = convert.timestamp(task.lease_expires_at)
        if ts is not None:
            msg.lease_expires_at.CopyFrom(ts)
        s.send(workers_pb2.BrokerMessage(assignment=msg))
        metrics.ASSIGNED.labels(task.task_type).inc()
        # Waiting since creation, or since the requeue/backoff that made it claimable again.
        since = max(task.created_at, task.not_before)
        metrics.DISPATCH_SECONDS.observe(max(models.now_ms() - since, 0) / 1000)
        log.info("task assigned", task_id=task.id, worker_id=s.worker_id, fence=task.fence,
                 attempt=task.attempts)


def _held_by(task: Task, worker_id: str, fence: int) -> bool:
    return task.state == TaskState.RUNNING and task.worker_id == worker_id and task.fence == fence
