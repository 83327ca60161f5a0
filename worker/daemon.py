"""The worker daemon: one stream to the broker, tasks pushed on it, leases kept by heartbeats.

Read top to bottom. `serve` readies the host (GPU, work folder, worker id, GPU lock, executors)
and runs a `Worker`. `Worker.run` starts three named loops and watches them; if one dies, the
worker says so and stops cleanly:

- connection: keeps the Work stream up: Register (with the tasks still running here, so that a
  broker restart or a network blip within the lease loses no work), Capacity, then whatever
  the broker pushes (Assignment, Revoke). Reconnects with backoff, logging once per outage.
- heartbeat: every heartbeat_s, the tasks held here; the broker renews their leases.
- drain: on SIGTERM/SIGINT, Capacity 0, the running tasks get the grace period, then whatever
  still runs is stopped and handed back at once with ReleaseTask. A second signal ends the
  grace period.

Each task runs in its own asyncio task (`_run_task`): payload, executor, then the result (or the
failure) goes back to the broker, retried across reconnects while the lease is ours.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import secrets
import signal
import socket
import time
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, TypeVar

import structlog

import worker
from broker import exceptions as broker_exceptions
from broker.channels import split, target_of
from broker.client import BrokerClient
from protos.gpuproxy.v1 import tasks_pb2, workers_pb2
from worker import exceptions, executors, gpus, locks, notify, state
from worker.backoff import Backoff, FailureStreak, Outage
from worker.config import WorkerConfig
from worker.executors import Executor
from worker.payloads import Payload, PayloadFetcher
from worker.remote import Remote, Stream, held

log = structlog.get_logger(__name__)

T = TypeVar("T")

REGISTER_TIMEOUT_S = 30.0
#: Payload fetches that fail while the broker looks reachable before the task fails (retryable).
FETCH_ATTEMPTS = 5
#: The same for result uploads: a proof took minutes of GPU time, so try harder (~10 minutes).
UPLOAD_ATTEMPTS = 25
#: How long a stopping worker tries to hand its tasks back before it leaves them to their leases.
RELEASE_WAIT_S = 5.0
#: Reconnection attempts are cheap (one TCP connect): an idle worker is back within 10 s of the
#: broker; a worker holding tasks tries at least once per heartbeat.
RECONNECT_BACKOFF = Backoff(initial_s=0.5, max_s=10.0)
#: After the grace period, a task already sending its result gets this much longer.
REPORT_WAIT_S = 10.0
#: On the way out, how long the broker may take to read what we wrote and end the Work stream.
HANG_UP_WAIT_S = 2.0
#: A task pushed while a slot is still ending its last task (the broker, which has that task's
#: outcome, may push the next one before the report's call has returned here) waits this long
#: for the slot before it is handed back.
SLOT_WAIT_S = 5.0


@dataclasses.dataclass(frozen=True)
class Identity:
    """What the worker tells the broker about itself in Register."""

    worker_id: str
    hostname: str
    addresses: tuple[str, ...]
    version: str
    gpus: tuple[gpus.Gpu, ...]
    #: This process's random token: the broker refuses a second live process with our id.
    instance: str = dataclasses.field(default_factory=lambda: secrets.token_hex(8))


async def serve(config: WorkerConfig) -> int:
    """Run one worker until it is stopped; the exit status."""
    runners = executors.create(config)  # settings errors first, before anything is written
    chosen = await choose_gpus(config)
    label = "-".join([chosen[0].label, *(g.label.removeprefix("gpu") for g in chosen[1:])]
                     ) if chosen else (config.gpu.label if config.gpu is not None else "cpu")
    work_dir = config.work_dir_for(label)
    held_locks = [locks.lock_work_dir(work_dir)]
    remote = Remote(config.url, token=config.token, tls_ca=config.tls_ca)
    try:
        worker_id = state.load_or_create(work_dir, label).worker_id
        structlog.contextvars.bind_contextvars(worker_id=worker_id)
        # Without nvidia-smi there is no UUID: the card is locked by its index.
        lockable = chosen or ([gpus.unlisted(config.gpu.index)] if config.gpu is not None
                              else [])
        held_locks += locks.acquire_all(config.lock_dir, lockable, worker_id)
        fetcher = PayloadFetcher(
            work_dir / "tmp", remote,
            config.fs_resource_path if config.resource_type == "fs" else None,
        )
        if removed := fetcher.remove_leftovers():
            log.info("removed payloads left by a previous run", files=removed)
        if problem := fetcher.shared_folder_problem():
            log.warning(f"--fs-resource-path is {problem}: is the broker's folder mounted? "
                        "Payloads are streamed from the broker meanwhile",
                        fs_resource_path=str(config.fs_resource_path))
        await asyncio.gather(*(e.start() for e in runners.values()))
        identity = Identity(
            worker_id=worker_id, hostname=socket.gethostname(),
            addresses=tuple(await asyncio.to_thread(local_addresses, config.url)),
            # The card it holds, even unlisted: `workers list` must not show it as a CPU worker
            version=worker.__version__, gpus=tuple(lockable),
        )
        log.info("worker ready", broker=config.url, gpus=[g.label for g in lockable] or "none",
                 task_types=list(config.task_types), max_tasks=config.max_tasks,
                 work_dir=str(work_dir))
        notify.notify("READY=1")
        probe = asyncio.create_task(check_other_brokers(config), name="broker check")
        try:
            return await Worker(
                config=config, identity=identity, remote=remote, payloads=fetcher,
                executors=runners,
            ).run()
        finally:
            probe.cancel()
    finally:
        await asyncio.gather(*(e.close() for e in runners.values()), return_exceptions=True)
        await remote.close()
        for lock in held_locks:
            lock.release()


async def choose_gpus(config: WorkerConfig) -> list[gpus.Gpu]:
    """The GPUs this worker uses; with --gpu, also set CUDA_VISIBLE_DEVICES for its children."""
    found = await gpus.inventory(config.nvidia_smi)
    if config.gpu is not None:
        chosen = gpus.resolve(found, config.gpu, config.nvidia_smi)
        os.environ.update(gpus.cuda_env(chosen or config.gpu.index))
        if chosen is None:
            log.warning("no nvidia-smi: GPU used without inventory, locked by its index only",
                        gpu=str(config.gpu), nvidia_smi=config.nvidia_smi)
            return []
        return [chosen]
    if found is None:
        log.info("no nvidia-smi: this is a CPU worker", nvidia_smi=config.nvidia_smi or "(off)")
        return []
    wanted = os.environ.get("CUDA_VISIBLE_DEVICES")
    seen = gpus.visible_or_refused(found, wanted)
    if len(seen) > 1:
        log.warning("no --gpu: this worker uses every visible GPU; run one worker per GPU "
                    "with --gpu, or `gpuproxy-worker supervise`", gpus=[str(g.id) for g in seen])
    elif not seen and found and wanted and wanted.strip() not in ("", "-1"):
        # A MIG UUID mistyped, say: CUDA would find no device either; the prover runs on the CPU
        log.warning("CUDA_VISIBLE_DEVICES names no GPU that nvidia-smi lists: this worker runs "
                    "on the CPU", cuda_visible_devices=wanted,
                    listed=[f"{g.id} {g.uuid}" for g in gpus.usable(found)])
    return seen


async def check_other_brokers(config: WorkerConfig) -> None:
    """Ask each broker after the first, once at start, whether it would take this worker: a
    token, certificate or address wrong down the list is said now, not when the first broker
    goes down and the worker turns to it."""
    for url in split(config.url)[1:]:
        async with BrokerClient(url, timeout_s=10, token=config.token,
                                tls_ca=config.tls_ca) as client:
            try:
                await client.get_task("")  # refused for the id, after the token and TLS
            except (broker_exceptions.AccessDenied, broker_exceptions.TlsFailed,
                    broker_exceptions.NotABroker) as exc:
                log.error("a broker in --gpuproxy-url would refuse this worker: fix it before "
                          "the worker needs it", broker=url, error=str(exc))
            except broker_exceptions.BrokerUnreachable as exc:
                log.info("a broker in --gpuproxy-url cannot be reached now", broker=url,
                         error=str(exc))
            except broker_exceptions.BrokerError:
                pass  # the empty id refused: it is a broker that takes this worker's calls


def local_addresses(url: str) -> list[str]:
    """The address this host reaches the (first) broker from (no packet is sent)."""
    host, _, port = target_of(split(url)[0]).rpartition(":")
    try:
        family, kind, proto, _, address = socket.getaddrinfo(
            host.strip("[]"), int(port), type=socket.SOCK_DGRAM
        )[0]
        with socket.socket(family, kind, proto) as s:
            s.connect(address)
            return [str(s.getsockname()[0])]
    except (OSError, ValueError, IndexError):
        return []


@dataclasses.dataclass
class Running:
    """A task this worker holds, from its assignment until its outcome is delivered."""

    task: tasks_pb2.Task
    fence: int
    runner: asyncio.Task[None] | None = None
    phase: str = "starting"
    payload: Payload | None = None

    @property
    def held(self) -> workers_pb2.HeldTask:
        return held(self.task.id, self.fence)


class Worker:
    def __init__(self, *, config: WorkerConfig, identity: Identity, remote: Remote,
                 payloads: PayloadFetcher, executors: dict[str, Executor]) -> None:
        self.config = config
        self.identity = identity
        self.remote = remote
        self.payloads = payloads
        self.executors = executors
        self.tasks: dict[str, Running] = {}
        #: Revoked tasks still winding down: their slots stay taken, so that a new task does
        #: not share the GPU with a proof that has not stopped yet.
        self.stopping: set[asyncio.Task[None]] = set()
        self.stream: Stream | None = None
        self.connected = asyncio.Event()
        self.draining = asyncio.Event()
        self.stop_now = asyncio.Event()
        self.session_ended = asyncio.Event()  #: the Work stream is over (see _hang_up)
        self.hanging_up = False
        self.release_acks: dict[str, asyncio.Event] = {}  #: ReleaseTask sent, answer awaited
        self.releasing = False
        self.heartbeat_s = 10.0
        self.outage = Outage()
        self.twin = Outage()  #: refusals because a live worker has our id (see _twin_wait_s)
        #: Brokers that refused this worker for good since it last registered (_refused_by)
        self.refusals: dict[str, exceptions.WorkerError] = {}
        self.backoff = RECONNECT_BACKOFF
        self.registered_once = False
        self.lost: exceptions.DeviceLost | None = None  #: the GPU failed for good: stop, exit 1
        self.streak = FailureStreak(limit=config.pause_after_failures)
        self.paused_until = 0.0  #: monotonic time before which no new task is taken (streak)
        self.pause_reason = ""  #: the failure that started or extended the pause
        #: Assignments waiting for a slot whose task is reporting its outcome (SLOT_WAIT_S)
        self.waiting: dict[str, workers_pb2.Assignment] = {}

    # -- the monitor ----------------------------------------------------------------------------

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.on_signal, sig)
        loops = [
            self._spawn("connection", self._connect_forever),
            self._spawn("heartbeat", self._heartbeat_forever),
            self._spawn("drain", self._drain_on_signal),
        ]
        try:
            finished, _ = await asyncio.wait(loops, return_when=asyncio.FIRST_COMPLETED)
            return self._verdict(finished)
        finally:
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.remove_signal_handler(sig)
            self.releasing = True
            self._post_capacity()  # nothing new while the stream closes
            for waiting in list(self.waiting):  # handed back now, not at SLOT_WAIT_S
                self._settle(waiting, waited_out=True)
            if self.tasks:
                await self._release_all("the worker stopped")
            if self.stopping:
                # Revoked tasks still on the device: their executors close after we return,
                # and the GPU lock goes with them.
                log.info("waiting for revoked tasks to stop", tasks=len(self.stopping))
                await asyncio.wait(self.stopping, timeout=self.config.grace_s)
            await self._hang_up()
            for task in loops:
                task.cancel()
            await asyncio.gather(*loops, return_exceptions=True)

    async def _hang_up(self) -> None:
        """End the Work stream from this side and wait for the broker to end it, so that every
        message written reaches the broker before the connection loop is cancelled."""
        self.hanging_up = True
        stream = self.stream
        if stream is None:
            return
        await stream.finish_writing(HANG_UP_WAIT_S)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(HANG_UP_WAIT_S):
                await self.session_ended.wait()

    def _spawn(self, name: str, fn: Callable[[], Coroutine[Any, Any, None]]) -> asyncio.Task[None]:
        return asyncio.create_task(fn(), name=name)

    def _verdict(self, finished: set[asyncio.Task[None]]) -> int:
        if self.lost is not None:
            raise self.lost  # the CLI prints it and exits 1: the service manager restarts us
        for task in finished:
            exc = None if task.cancelled() else task.exception()
            if isinstance(exc, exceptions.WorkerError):
                raise exc  # the CLI prints it with its causes
            if exc is not None:
                log.error("worker loop died; stopping", loop=task.get_name(), exc_info=exc)
                return 1
            if task.get_name() != "drain":
                log.error("worker loop ended; stopping", loop=task.get_name())
                return 1
        return 0

    def on_signal(self, sig: int) -> None:
        name = signal.Signals(sig).name
        if not self.draining.is_set():
            log.info("stopping: no new tasks; running ones get the grace period", signal=name,
                     grace_s=self.config.grace_s, tasks=list(self.tasks))
            self.draining.set()
        else:
            log.warning("second signal: stopping at once", signal=name)
            self.stop_now.set()

    # -- connection loop ----------------------------------------------------------------------

    async def _connect_forever(self) -> None:
        while True:
            url = self.remote.url
            try:
                await self._session()
            except exceptions.BrokerUnavailable as exc:
                error = str(exc)
            except exceptions.RegistrationRefused as exc:
                if exc.code != "ALREADY_EXISTS":
                    error = self._refused_by(url, exc)
                else:
                    await asyncio.sleep(self._twin_wait_s(exc))
                    continue
            except exceptions.TlsFailed as exc:
                error = self._refused_by(url, exc)
            if self.hanging_up:  # the worker ended the stream itself: it is stopping
                return
            self.remote.failover(url, error)  # the next broker, when there are several
            if self.outage.failed(time.monotonic()):
                log.warning("broker unreachable; reconnecting in the background", error=error,
                            tasks=list(self.tasks), next=self.remote.url)
            else:
                log.debug("broker still unreachable", error=error, attempt=self.outage.failures,
                          next=self.remote.url)
            await asyncio.sleep(self._retry_delay_s())

    def _refused_by(self, url: str, refusal: exceptions.WorkerError) -> str:
        """A broker refused this worker for good (its token, TLS, or this worker's settings).
        With other brokers to go to, say so loudly and go on to the next: a mistake in the
        second address must not stop the worker when the first broker goes down. Once every
        broker has refused it, stop (exit 1)."""
        self.refusals[url] = refusal
        if len(self.refusals) >= len(self.remote.brokers.urls):
            raise refusal
        log.error("this broker refused the worker; going on to the next", broker=url,
                  error=str(refusal))
        return str(refusal)

    def _twin_wait_s(self, refusal: exceptions.RegistrationRefused) -> float:
        """Another live worker has our id. It may be this host's previous run, whose stream the
        broker has not yet seen die (a hung host, a cut cable): wait before the next try, for at
        most --twin-wait-s in all; then the refusal stands."""
        now = time.monotonic()
        if self.twin.failed(now):
            log.error("the broker refused this worker; trying again in case the other worker "
                      "is this host's previous run", error=str(refusal),
                      gives_up_in_s=round(self.config.twin_wait_s))
        assert self.twin.since_s is not None
        if now - self.twin.since_s >= self.config.twin_wait_s:
            raise refusal
        return self.backoff.delay_s(self.twin.attempt)

    def _retry_delay_s(self) -> float:
        delay_s = self.backoff.delay_s(self.outage.attempt)
        # Holding tasks, try at least once per heartbeat: a broker back within the lease must
        # see us again before the lease runs out.
        return min(delay_s, self.heartbeat_s) if self.tasks else delay_s

    async def _session(self) -> None:
        stream = self.remote.open_stream()
        self.session_ended.clear()
        try:
            registered = await stream.register(self._register_message(), REGISTER_TIMEOUT_S)
            self._on_registered(registered)
            self.stream = stream
            self.connected.set()
            self._post_capacity()
            while (message := await stream.receive()) is not None:
                self._dispatch(message)
            raise exceptions.BrokerHungUp(url=self.remote.url)
        finally:
            self.connected.clear()
            self.stream = None
            await stream.close()
            self.session_ended.set()

    def _register_message(self) -> workers_pb2.Register:
        me = self.identity
        return workers_pb2.Register(
            worker_id=me.worker_id, hostname=me.hostname, addresses=list(me.addresses),
            version=me.version, task_types=list(self.config.task_types),
            max_tasks=self.config.max_tasks,
            gpus=[workers_pb2.Gpu(index=g.index, name=g.name, uuid=g.uuid,
                                  memory_bytes=g.memory_bytes, mig=g.mig) for g in me.gpus],
            # Waiting assignments too: this broker (or another) must not take them for lost
            held=[t.held for t in self.tasks.values()]
            + [held(a.task.id, a.fence) for a in self.waiting.values()],
            resident_keys=self._resident_keys(), instance=me.instance,
            other_brokers=len(self.remote.brokers.urls) - 1,
        )

    def _resident_keys(self) -> list[str]:
        return sorted({k for e in self.executors.values() for k in e.resident_keys()})

    def _on_registered(self, registered: workers_pb2.Registered) -> None:
        if registered.heartbeat_s > 0:
            self.heartbeat_s = registered.heartbeat_s
        elif registered.lease_s > 0:
            self.heartbeat_s = registered.lease_s / 3
        down_s = self.outage.recovered(time.monotonic())
        self.twin.recovered(time.monotonic())
        self.refusals.clear()
        if registered.worker_id and registered.worker_id != self.identity.worker_id:
            log.warning("the broker knows this worker by another id",
                        broker_worker_id=registered.worker_id)
        what = "reconnected to the broker" if self.registered_once else "registered"
        self.registered_once = True
        log.info(what, broker=self.remote.url, lease_s=registered.lease_s,
                 heartbeat_s=round(self.heartbeat_s, 3), tasks=list(self.tasks),
                 down_s=None if down_s is None else round(down_s, 1))

    def _free(self) -> int:
        if self.draining.is_set() or self.releasing or time.monotonic() < self.paused_until:
            return 0
        return max(0, self.config.max_tasks - self._taken())

    def _taken(self) -> int:
        return len(self.tasks) + len(self.stopping)

    def _post(self, **message: Any) -> None:
        """Queue a message if connected; dropped otherwise (Register says it all again)."""
        if self.stream is not None:
            self.stream.post(workers_pb2.WorkerMessage(**message))

    def _post_capacity(self) -> None:
        capacity = workers_pb2.Capacity(free=self._free())
        if time.monotonic() < self.paused_until:  # said to the broker, for `workers list`
            capacity.paused_until.FromMilliseconds(
                int((time.time() + self.paused_until - time.monotonic()) * 1000))
            capacity.pause_reason = self.pause_reason
        self._post(capacity=capacity)

    def _dispatch(self, message: workers_pb2.BrokerMessage) -> None:
        kind = message.WhichOneof("msg")
        if kind == "assignment":
            self._accept(message.assignment)
        elif kind == "revoke":
            self._revoke(message.revoke)
        else:
            log.warning("unexpected broker message ignored", kind=kind)

    def _accept(self, assignment: workers_pb2.Assignment, waited_out: bool = False) -> None:
        task = assignment.task
        running = self.tasks.get(task.id)
        if running is not None:
            # Same task, new fence (the broker requeued it and gave it back to us): the work
            # in progress is still the right work.
            log.info("task assigned again; it keeps running", task_id=task.id,
                     old_fence=running.fence, fence=assignment.fence)
            running.fence = assignment.fence
            return
        refusal = self._refusal(task)
        if refusal and not waited_out and self._slot_ending():
            # The broker has the outcome of a task still reporting here: take this one once
            # that report's call has returned, rather than hand it back
            if task.id not in self.waiting:
                asyncio.get_running_loop().call_later(SLOT_WAIT_S, self._settle, task.id, True)
            self.waiting[task.id] = assignment  # the newest fence, if assigned again
            return
        self.waiting.pop(task.id, None)
        if refusal:
            log.warning("assignment handed back", task_id=task.id, reason=refusal)
            self._post(release=workers_pb2.ReleaseTask(
                task=held(task.id, assignment.fence), reason=refusal
            ))
            return
        running = Running(task=task, fence=assignment.fence)
        self.tasks[task.id] = running
        running.runner = asyncio.create_task(self._run_task(running), name=f"task {task.id}")

    def _slot_ending(self) -> bool:
        """All slots taken, one of them by a task reporting its outcome, the worker going on."""
        return (self._taken() >= self.config.max_tasks and not self.stopping
                and not self.draining.is_set() and not self.releasing
                and any(r.phase == "reporting" for r in self.tasks.values()))

    def _settle(self, task_id: str, waited_out: bool = False) -> None:
        """A waiting assignment, looked at again: taken if a slot is free, waiting on while
        another slot still reports (until SLOT_WAIT_S is out), handed back otherwise."""
        assignment = self.waiting.get(task_id)
        if assignment is not None:
            self._accept(assignment, waited_out)

    def _refusal(self, task: tasks_pb2.Task) -> str:
        if self.draining.is_set() or self.releasing:
            return "the worker is stopping"
        if self._taken() >= self.config.max_tasks:
            if self.stopping:
                return (f"the worker is still stopping {len(self.stopping)} revoked "
                        f"task{'s' * (len(self.stopping) != 1)}")
            return f"the worker already runs {len(self.tasks)} of {self.config.max_tasks} tasks"
        if task.task_type not in self.executors:
            return f"this worker does not run {task.task_type!r} tasks"
        return ""

    def _revoke(self, revoke: workers_pb2.Revoke) -> None:
        ack = self.release_acks.get(revoke.task_id)
        if ack is not None and revoke.reason == "released":
            ack.set()  # the broker has the task back
            return
        waiting = self.waiting.get(revoke.task_id)
        if waiting is not None and waiting.fence == revoke.fence:
            del self.waiting[revoke.task_id]  # cancelled before a slot was free: never started
            return
        self._drop(revoke)
        self._post_capacity()  # the broker takes no new task here until it hears this

    def _drop(self, revoke: workers_pb2.Revoke) -> None:
        running = self.tasks.get(revoke.task_id)
        if running is None or running.runner is None:
            log.debug("revoke for a task not held here", task_id=revoke.task_id)
            return
        if revoke.fence and revoke.fence != running.fence:
            # An older claim of a task this worker now holds again under a newer fence.
            log.debug("revoke of an older claim ignored", task_id=revoke.task_id,
                      fence=revoke.fence, held_fence=running.fence)
            return
        log.warning("task revoked by the broker; stopping it", task_id=revoke.task_id,
                    reason=revoke.reason)
        running.phase = "revoked"
        running.runner.cancel()
        # Forget it now: a new assignment of the same task must not find the stopping one.
        # Its slot stays taken until it has stopped (the broker has freed it on its side).
        del self.tasks[revoke.task_id]
        self.stopping.add(running.runner)

    # -- heartbeat loop -------------------------------------------------------------------------

    async def _heartbeat_forever(self) -> None:
        while True:
            await self.connected.wait()  # and heartbeat_s is the broker's
            await asyncio.sleep(self.heartbeat_s)
            self._post(heartbeat=workers_pb2.Heartbeat(
                held=[t.held for t in self.tasks.values()], resident_keys=self._resident_keys(),
            ))

    # -- drain loop -----------------------------------------------------------------------------

    async def _drain_on_signal(self) -> None:
        await self.draining.wait()
        notify.notify("STOPPING=1")
        self._post_capacity()
        runners = [t.runner for t in self.tasks.values() if t.runner is not None]
        if runners:
            waiters = [asyncio.ensure_future(asyncio.wait(runners)),
                       asyncio.ensure_future(self.stop_now.wait())]
            await asyncio.wait(waiters, timeout=self.config.grace_s,
                               return_when=asyncio.FIRST_COMPLETED)
            for waiter in waiters:
                waiter.cancel()
        if self.tasks:
            await self._release_all("the worker stopped before the task ended")
        log.info("worker stopped")

    async def _release_all(self, reason: str) -> None:
        """Stop every task and hand it back at once, rather than after its lease runs out."""
        self.releasing = True  # and take no new one meanwhile
        reporting = [t.runner for t in self.tasks.values()
                     if t.phase == "reporting" and t.runner is not None]
        if reporting and not self.stop_now.is_set():
            await asyncio.wait(reporting, timeout=REPORT_WAIT_S)
        stopped = list(self.tasks.values())
        for running in stopped:
            running.phase = "released"
            if running.runner is not None:
                running.runner.cancel()
        await asyncio.gather(*(t.runner for t in stopped if t.runner), return_exceptions=True)
        self.release_acks = {t.task.id: asyncio.Event() for t in stopped}
        releases = [self._deliver(release=workers_pb2.ReleaseTask(task=t.held, reason=reason))
                    for t in stopped]
        try:
            async with asyncio.timeout(RELEASE_WAIT_S):
                await asyncio.gather(*releases)
                # The broker answers each release; only then may the stream close.
                await asyncio.gather(*(ack.wait() for ack in self.release_acks.values()))
            log.info("tasks handed back to the broker", tasks=[t.task.id for t in stopped])
        except TimeoutError:
            log.warning("could not hand tasks back; they return to the queue when their leases "
                        "expire", tasks=[t.task.id for t in stopped])

    # -- one task -------------------------------------------------------------------------------

    async def _run_task(self, running: Running) -> None:
        task = running.task
        bound = log.bind(task_id=task.id, task_type=task.task_type)
        bound.info("task started", fence=running.fence, payload_bytes=task.payload_size)
        started = time.monotonic()
        try:
            outcome = await self._outcome(running)
            running.phase = "reporting"
            if isinstance(outcome, exceptions.DeviceLost) and self.lost is None:
                bound.error("the GPU context is lost; the worker stops so that it starts again "
                            "with a fresh one", error=str(outcome))
                self.lost = outcome
                self.draining.set()
                # Before the failure: the broker must not give the task straight back to us.
                self._post_capacity()
            elif isinstance(outcome, exceptions.TaskFailed):
                self._count_failure(outcome)
            else:
                self.streak.succeeded()
            await self._report(running, outcome)
        except exceptions.TaskLost as exc:
            bound.warning("task dropped", reason=str(exc))
        except Exception as exc:  # a bug here must not leave the slot taken
            bound.error("task handling failed", exc_info=exc)
        finally:
            if running.payload is not None:
                running.payload.discard()
            if self.tasks.get(task.id) is running:
                del self.tasks[task.id]
            if running.runner in self.stopping:
                self.stopping.discard(running.runner)
                bound.info("revoked task stopped; its slot is free",
                           took_s=round(time.monotonic() - started, 1))
            for waiting in list(self.waiting):  # the slot this task held is free
                self._settle(waiting)
            self._post_capacity()
            bound.debug("task ended", phase=running.phase, took_s=round(time.monotonic() - started))

    def _count_failure(self, failure: exceptions.TaskFailed) -> None:
        """Pause taking tasks after too many failures in a row; a malformed payload is the
        submitter's fault and does not count."""
        if not failure.retryable:
            return
        pause_s = self.streak.failed()
        if pause_s <= 0:
            return
        self.paused_until = time.monotonic() + pause_s
        n = self.streak.failures
        self.pause_reason = f"{n} failed task{'s' * (n != 1)} in a row; the last: {failure}"
        log.error("tasks keep failing on this worker; it takes no new task for a while, so "
                  "that other workers get the queue", failures_in_a_row=self.streak.failures,
                  pause_s=round(pause_s), last_error=str(failure))
        self._post_capacity()  # before the failure report frees our slot at the broker
        asyncio.get_running_loop().call_later(pause_s, self._end_pause, self.paused_until)

    def _end_pause(self, until: float) -> None:
        # Cleared here, not left to the clock: a timer may fire a hair before `until`.
        if self.paused_until == until:  # not extended by a later failure meanwhile
            self.paused_until, self.pause_reason = 0.0, ""
            self._post_capacity()

    async def _outcome(self, running: Running) -> bytes | exceptions.TaskFailed:
        try:
            return await self._execute(running)
        except exceptions.TaskFailed as exc:
            return exc
        except exceptions.BrokerRefused as exc:
            return exceptions.TaskFailed(detail=str(exc))
        except (exceptions.TaskLost, asyncio.CancelledError):
            raise
        except Exception as exc:
            log.error("task crashed in the worker", task_id=running.task.id, exc_info=exc)
            return exceptions.TaskFailed(detail=f"the worker crashed: {exc!r}")

    async def _execute(self, running: Running) -> bytes:
        task = running.task

        async def progress(phase: str, fraction: float) -> None:
            running.phase = phase
            self._post(progress=workers_pb2.ReportProgress(
                task=running.held, phase=phase, fraction=max(0.0, min(1.0, fraction))
            ))

        await progress("fetching", 0.0)
        running.payload = await self._retrying(
            "fetch the payload", lambda: self.payloads.fetch(task, running.fence, progress),
            attempts=FETCH_ATTEMPTS,
        )
        job = executors.Job(
            task_id=task.id, task_type=task.task_type, payload=running.payload.path,
            timeout_s=self.config.task_timeout_s, progress=progress, comment=task.comment,
        )
        return await self.executors[task.task_type].run(job)

    async def _report(self, running: Running, outcome: bytes | exceptions.TaskFailed) -> None:
        task_id = running.task.id
        if isinstance(outcome, bytes):
            result = outcome
            try:
                await self._retrying(
                    "upload the result", lambda: self.remote.upload_result(running.held, result),
                    attempts=UPLOAD_ATTEMPTS,
                )
                log.info("task finished", task_id=task_id, result_bytes=len(result))
                return
            except exceptions.BrokerRefused as exc:
                outcome = exceptions.TaskFailed(detail=str(exc))
                outcome.retryable = False
            except exceptions.TaskFailed as exc:
                outcome = exc
        log.warning("task failed", task_id=task_id, error=str(outcome),
                    retryable=outcome.retryable)
        await self._deliver(failure=workers_pb2.ReportFailure(
            task=running.held, message=str(outcome), retryable=outcome.retryable
        ))

    async def _retrying(self, what: str, call: Callable[[], Awaitable[T]],
                        attempts: int | None = None) -> T:
        """`call`, again after each BrokerUnavailable once the Work stream is back up."""
        failures = 0
        while True:
            await self.connected.wait()
            try:
                return await call()
            except exceptions.BrokerUnavailable as exc:
                failures += 1
                if attempts is not None and failures >= attempts:
                    raise exceptions.TaskFailed(detail=f"could not {what}: {exc}") from exc
                log.info("broker call failed; retrying", what=what, error=str(exc))
                await asyncio.sleep(self.backoff.delay_s(failures - 1))

    async def _deliver(self, **message: Any) -> None:
        """Write one message on the Work stream, waiting for (re)connection as long as it takes."""
        while True:
            await self.connected.wait()
            if self.stream is None:
                await asyncio.sleep(0)
                continue
            with contextlib.suppress(exceptions.BrokerUnavailable):
                await self.stream.send(workers_pb2.WorkerMessage(**message))
                return
            await asyncio.sleep(0.1)  # the connection loop notices the break and clears it
