"""The broker's side of the worker protocol, driven over the wire by a scripted worker: the
push of assignments, leases and heartbeats, fencing of late results, resume after a reconnect,
and the housekeeper's requeue."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import pathlib
import subprocess
import time
import urllib.parse
from collections.abc import AsyncIterator

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from broker import exceptions
from broker.client import BrokerClient
from broker.dispatcher import RECHECK_HELD_S
from protos.gpuproxy.v1 import tasks_pb2, workers_pb2, workers_pb2_grpc
from tests.e2e.conftest import BIN, BrokerFactory, BrokerProcess, cli_env
from tests.fixtures.tcp_cut import TcpCut

LEASE_S = 1.5


class ScriptedWorker:
    """One `Work` stream whose messages the test writes by hand."""

    def __init__(self, url: str, worker_id: str, types: tuple[str, ...] = ("c2",),
                 instance: str = "", other_brokers: int = 0) -> None:
        self.channel = grpc.aio.insecure_channel(url)
        self.stub = workers_pb2_grpc.WorkerServiceStub(self.channel)
        self.worker_id = worker_id
        self.instance = instance
        self.other_brokers = other_brokers
        self.types = types
        self.call: grpc.aio.StreamStreamCall | None = None

    async def connect(self, held: list[workers_pb2.HeldTask] | None = None,
                      free: int = 1) -> workers_pb2.Registered:
        self.call = self.stub.Work()
        await self.call.write(workers_pb2.WorkerMessage(register=workers_pb2.Register(
            worker_id=self.worker_id, hostname="test", task_types=list(self.types),
            max_tasks=1, held=held or [], instance=self.instance,
            other_brokers=self.other_brokers,
            gpus=[workers_pb2.Gpu(index=0, name="Fake GPU", uuid=f"GPU-{self.worker_id}")],
        )))
        reply = await self.call.read()
        assert reply.WhichOneof("msg") == "registered"
        if free:
            await self.send(capacity=workers_pb2.Capacity(free=free))
        return reply.registered

    async def send(self, **kwargs: object) -> None:
        assert self.call is not None
        await self.call.write(workers_pb2.WorkerMessage(**kwargs))  # type: ignore[arg-type]

    async def next(self, timeout_s: float = 5.0) -> workers_pb2.BrokerMessage:
        assert self.call is not None
        return await asyncio.wait_for(self.call.read(), timeout_s)

    async def heartbeat(self, *held: workers_pb2.HeldTask) -> None:
        await self.send(heartbeat=workers_pb2.Heartbeat(held=list(held)))

    def beating(self, *held: workers_pb2.HeldTask) -> asyncio.Task[None]:
        """Heartbeats every third of a lease, as a live worker sends them, until cancelled."""
        async def heartbeats() -> None:
            while True:
                await self.heartbeat(*held)
                await asyncio.sleep(LEASE_S / 3)

        return asyncio.create_task(heartbeats())

    async def upload(self, held: workers_pb2.HeldTask, result: bytes):  # type: ignore[no-untyped-def]
        async def requests() -> AsyncIterator[workers_pb2.UploadResultRequest]:
            yield workers_pb2.UploadResultRequest(header=workers_pb2.ResultHeader(
                task=held, size=len(result), sha256=hashlib.sha256(result).hexdigest()))
            yield workers_pb2.UploadResultRequest(chunk=result)

        return await self.stub.UploadResult(requests())

    async def fetch(self, held: workers_pb2.HeldTask) -> bytes:
        return b"".join([c.data async for c in self.stub.FetchPayload(
            workers_pb2.FetchPayloadRequest(task=held))])

    async def close(self) -> None:
        """Hang up as a worker process that exits does: the connection closes."""
        if self.call is not None:
            self.call.cancel()
        await self.channel.close()


def held_of(msg: workers_pb2.BrokerMessage) -> workers_pb2.HeldTask:
    assert msg.WhichOneof("msg") == "assignment", msg
    return workers_pb2.HeldTask(task_id=msg.assignment.task.id, fence=msg.assignment.fence)


@pytest.fixture
def broker(sqlite_dsn: str, broker_factory: BrokerFactory):  # type: ignore[no-untyped-def]
    return broker_factory(sqlite_dsn, "fs", extra=[
        "--lease-s", str(LEASE_S), "--retry-backoff-s", "0.1", "--max-attempts", "2",
    ])


async def last_state(url: str, task_id: str):  # type: ignore[no-untyped-def]
    """Wait on the watch stream until the task ends; its final version."""
    async with BrokerClient(url) as client:
        return [t async for t in client.watch(task_id)][-1]


async def submit(url: str, tmp_path: pathlib.Path, data: bytes, miner: str = "f01000") -> str:
    path = tmp_path / hashlib.sha256(data).hexdigest()[:8]
    path.write_bytes(data)
    async with BrokerClient(url) as client:
        return (await client.submit_file(path, task_type="c2", miner=miner)).id


async def test_task_is_pushed_at_once_and_finished_with_its_result(
    broker, tmp_path: pathlib.Path  # type: ignore[no-untyped-def]
) -> None:
    w = ScriptedWorker(broker.url, "w1")
    try:
        reg = await w.connect()
        assert reg.lease_s == LEASE_S and reg.heartbeat_s == pytest.approx(LEASE_S / 3)
        payload = os.urandom(3 * 1024 * 1024 + 1)
        t0 = time.monotonic()
        task_id = await submit(broker.url, tmp_path, payload)
        held = held_of(await w.next())
        latency = time.monotonic() - t0
        assert held.task_id == task_id and latency < 1.0  # pushed, not polled
        assert await w.fetch(held) == payload

        finished = await w.upload(held, b"proof" * 100)
        assert finished.state == 4 and finished.result_size == 500
        async with BrokerClient(broker.url) as client:
            [info] = await client.list_workers()
            assert info.worker_id == "w1" and info.online and info.gpus[0].name == "Fake GPU"
            out = tmp_path / "proof"
            await client.download_result(task_id, out)
            assert out.read_bytes() == b"proof" * 100
        # A heartbeat sent while the answer was on its way revokes nothing: the result is its own
        await w.heartbeat(held)
        with pytest.raises(TimeoutError):  # (waiting ends the stream)
            print(await w.next(timeout_s=1.0))
        assert "no longer holds" not in broker.logs()
        # And the input, which nothing needs any more, is dropped (just after the answer)
        sha = hashlib.sha256(payload).hexdigest()
        stored = tmp_path / "payloads" / sha[:2] / sha[2:4] / sha
        deadline = time.monotonic() + 5
        while stored.exists():
            assert time.monotonic() < deadline, "the finished task's payload stays"
            await asyncio.sleep(0.05)
    finally:
        await w.close()


async def test_heartbeats_keep_a_long_task_and_a_dead_workers_task_moves_on(
    broker, tmp_path: pathlib.Path  # type: ignore[no-untyped-def]
) -> None:
    w1, w2 = ScriptedWorker(broker.url, "w1"), ScriptedWorker(broker.url, "w2")
    try:
        await w1.connect()
        task_id = await submit(broker.url, tmp_path, b"c1 output")
        held = held_of(await w1.next())
        await w2.connect()

        async def idle_heartbeats() -> None:  # w2 is alive and idle
            while True:
                await w2.heartbeat()
                await asyncio.sleep(LEASE_S / 3)

        beating = asyncio.create_task(idle_heartbeats())

        # Given heartbeats for three lease periods, the task stays with w1
        for _ in range(9):
            await w1.heartbeat(held)
            await asyncio.sleep(LEASE_S / 3)
        async with BrokerClient(broker.url) as client:
            task = await client.get_task(task_id)
            assert task.state == 2 and task.worker_id == "w1" and task.attempts == 1

        # When w1 goes silent, w2 gets the task within the lease plus a second
        t0 = time.monotonic()
        moved = held_of(await w2.next(timeout_s=LEASE_S + 1.5))
        assert moved.task_id == task_id and moved.fence > held.fence
        assert time.monotonic() - t0 < LEASE_S + 1.5

        # Then w1's late result is refused, and w1 is told to drop the task
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await w1.upload(held, b"late")
        assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        await w1.heartbeat(held)
        revoke = await w1.next()
        assert revoke.WhichOneof("msg") == "revoke" and revoke.revoke.task_id == task_id
        assert (await w2.upload(moved, b"good")).state == 4
        beating.cancel()
        async with BrokerClient(broker.url) as client:
            shown = await client.get_task(task_id)
        assert [a.outcome for a in shown.history] == ["requeued", "finished"]
        assert "w1 stopped heartbeating" in shown.history[0].reason
    finally:
        await w1.close()
        await w2.close()


def immutable(path: pathlib.Path, on: bool) -> bool:
    """chattr +i / -i (root on ext4 and the like): the one way to make an unlink fail."""
    flag = "+i" if on else "-i"
    return subprocess.run(["chattr", flag, str(path)], capture_output=True).returncode == 0


async def test_a_result_sent_again_is_answered_and_a_failed_payload_delete_frees_the_slot(
    broker, tmp_path: pathlib.Path  # type: ignore[no-untyped-def]
) -> None:
    w = ScriptedWorker(broker.url, "w1")
    payload = b"c1 output that cannot be deleted"
    sha = hashlib.sha256(payload).hexdigest()
    stored = tmp_path / "payloads" / sha[:2] / sha[2:4] / sha
    try:
        await w.connect()
        task_id = await submit(broker.url, tmp_path, payload)
        held = held_of(await w.next())
        if not immutable(stored, True):
            pytest.skip("chattr +i is not available here")

        # The payload cannot be removed: the task still finishes (the cleaner retries later)
        assert (await w.upload(held, b"proof")).state == 4
        # A worker that lost the answer sends the same result again and gets the same answer
        again = await w.upload(held, b"proof")
        assert again.id == task_id and again.state == 4
        # A different result under the same claim is still refused
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await w.upload(held, b"another proof")
        assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION

        # The worker's slot is free: the next task comes to it at once
        second = await submit(broker.url, tmp_path, b"the next c1 output")
        assert held_of(await w.next()).task_id == second
    finally:
        immutable(stored, False)
        await w.close()


async def test_failures_retry_then_end_in_error_listing_each_reason(
    broker, tmp_path: pathlib.Path  # type: ignore[no-untyped-def]
) -> None:
    w = ScriptedWorker(broker.url, "w1")
    beating: asyncio.Task[None] | None = None
    try:
        await w.connect()
        beating = w.beating()  # alive while the retry is left to other workers for a moment
        task_id = await submit(broker.url, tmp_path, b"poison")
        for reason in ("CUDA out of memory", "GPU fell off the bus"):
            held = held_of(await w.next())
            await w.send(failure=workers_pb2.ReportFailure(task=held, message=reason,
                                                           retryable=True))
            await w.send(capacity=workers_pb2.Capacity(free=1))
        task = await last_state(broker.url, task_id)
        assert task.state == 3 and task.attempts == 2
        assert "CUDA out of memory" in task.error_message
        assert "GPU fell off the bus" in task.error_message

        bad = await submit(broker.url, tmp_path, b"malformed")
        held = held_of(await w.next())
        assert held.task_id == bad
        await w.send(failure=workers_pb2.ReportFailure(task=held, message="not JSON",
                                                       retryable=False))
        task = await last_state(broker.url, bad)
        assert task.state == 3 and task.attempts == 1 and "not JSON" in task.error_message
    finally:
        if beating is not None:
            beating.cancel()
        await w.close()


async def test_release_hands_back_at_once_and_reconnect_resumes(
    broker, tmp_path: pathlib.Path  # type: ignore[no-untyped-def]
) -> None:
    w = ScriptedWorker(broker.url, "w1")
    try:
        await w.connect()
        task_id = await submit(broker.url, tmp_path, b"resume me")
        held = held_of(await w.next())

        # A reconnect within the lease keeps the task (no revoke, same fence)
        w.call.cancel()  # type: ignore[union-attr]
        await w.connect(held=[held], free=0)
        await w.heartbeat(held)
        async with BrokerClient(broker.url) as client:
            task = await client.get_task(task_id)
            assert task.state == 2 and task.attempts == 1

            # SIGTERM path: the worker hands it back, and it is init at once
            await w.send(release=workers_pb2.ReleaseTask(task=held, reason="worker stopping"))
            ack = await w.next()  # the broker answers a release once it has the task back
            assert ack.WhichOneof("msg") == "revoke" and ack.revoke.reason == "released"
            assert (await client.get_task(task_id)).state == 1
            for _ in range(50):
                task = await client.get_task(task_id)
                if task.state == 1:
                    break
                await asyncio.sleep(0.05)
            assert task.state == 1 and task.attempts == 0
    finally:
        await w.close()


async def test_cancel_revokes_the_running_task(
    broker, tmp_path: pathlib.Path  # type: ignore[no-untyped-def]
) -> None:
    w = ScriptedWorker(broker.url, "w1")
    try:
        await w.connect()
        task_id = await submit(broker.url, tmp_path, b"cancel me")
        held_of(await w.next())
        async with BrokerClient(broker.url) as client:
            await client.cancel(task_id, "wrong sector")
        revoke = await w.next()
        assert revoke.WhichOneof("msg") == "revoke" and "wrong sector" in revoke.revoke.reason
    finally:
        await w.close()


@contextlib.asynccontextmanager
async def worker_of_b(dsn: str, broker_factory: BrokerFactory
                      ) -> AsyncIterator[tuple[BrokerProcess, ScriptedWorker]]:
    """Brokers a and b on one database, and a connected worker "wb" of b: (a, the worker)."""
    a = broker_factory(dsn, "db")
    b = broker_factory(dsn, "db")
    w = ScriptedWorker(b.url, "wb")
    try:
        await w.connect()
        yield a, w
    finally:
        await w.close()


async def test_two_brokers_on_one_database_hand_out_each_others_tasks(
    mariadb_dsn: str, broker_factory: BrokerFactory, tmp_path: pathlib.Path
) -> None:
    async with worker_of_b(mariadb_dsn, broker_factory) as (a, w):
        t0 = time.monotonic()
        task_id = await submit(a.url, tmp_path, b"through broker a")
        held = held_of(await w.next(timeout_s=3))
        assert held.task_id == task_id and time.monotonic() - t0 < 1.5
        assert await w.fetch(held) == b"through broker a"


async def test_a_cancel_through_another_broker_reaches_the_worker_well_before_a_heartbeat(
    mariadb_dsn: str, broker_factory: BrokerFactory, tmp_path: pathlib.Path
) -> None:
    # Given a worker of broker b proving a task, with a lease of a minute (heartbeats each 20 s)
    async with worker_of_b(mariadb_dsn, broker_factory) as (a, w):
        task_id = await submit(a.url, tmp_path, b"cancel me through a")
        held_of(await w.next(timeout_s=3))
        # When the task is cancelled through broker a, the worker is told within seconds
        async with BrokerClient(a.url) as client:
            await client.cancel(task_id, "wrong sector")
        revoke = await w.next(timeout_s=RECHECK_HELD_S + 3)
        assert revoke.WhichOneof("msg") == "revoke" and "wrong sector" in revoke.revoke.reason


async def test_a_drain_through_another_broker_holds_new_work_back_within_a_recheck(
    mariadb_dsn: str, broker_factory: BrokerFactory, tmp_path: pathlib.Path
) -> None:
    # Given an idle worker of broker b, drained through broker a
    async with worker_of_b(mariadb_dsn, broker_factory) as (a, w):
        async with BrokerClient(a.url) as client:
            await client.drain_worker("wb", "maintenance")
        await asyncio.sleep(RECHECK_HELD_S + 1)  # b reads the drains again
        # When a task is submitted, b gives it no task (a timed-out read would end the stream)
        task_id = await submit(a.url, tmp_path, b"not for a drained worker")
        await asyncio.sleep(1.5)
        async with BrokerClient(a.url) as client:
            assert (await client.get_task(task_id)).state == tasks_pb2.TASK_STATE_INIT
            # Until it is resumed, through a as well: then the task comes within a recheck
            assert await client.resume_worker("wb")
            [info] = await client.list_workers()
        assert not info.HasField("drained_at")
        assert held_of(await w.next(timeout_s=RECHECK_HELD_S + 3)).task_id == task_id


async def test_a_worker_registered_through_another_broker_gets_no_work_from_its_old_stream(
    mariadb_dsn: str, broker_factory: BrokerFactory, tmp_path: pathlib.Path
) -> None:
    a = broker_factory(mariadb_dsn, "db")
    b = broker_factory(mariadb_dsn, "db")
    old = ScriptedWorker(a.url, "wm", instance="i1", other_brokers=1)
    moved = ScriptedWorker(b.url, "wm", instance="i1", other_brokers=1)
    try:
        # Given a worker whose stream to broker a looks alive to a, but which has moved to b
        # (its link to a broke one way, say)
        await old.connect()
        await moved.connect()
        # When a task is submitted through a at once, before a's next recheck
        task_id = await submit(a.url, tmp_path, b"for the moved worker")
        # Then it goes to the worker where it is now, in its first attempt, and a ends the old
        # stream without giving anything into it
        assigned = held_of(await moved.next(timeout_s=5))
        assert assigned.task_id == task_id
        assert old.call is not None
        async with asyncio.timeout(RECHECK_HELD_S + 3):
            assert await old.call.read() is grpc.aio.EOF
        assert "worker registered through another broker; closing its stream here" in a.logs()
        async with BrokerClient(a.url) as client:
            assert (await client.get_task(task_id)).attempts == 1
    finally:
        await asyncio.gather(old.close(), moved.close())


async def test_a_broker_starting_again_extends_the_leases_of_the_workers_it_let_go_only(
    mariadb_dsn: str, broker_factory: BrokerFactory, tmp_path: pathlib.Path
) -> None:
    async with worker_of_b(mariadb_dsn, broker_factory) as (a, wb):
        wa = ScriptedWorker(a.url, "wa")
        try:
            # Given a task on worker wb of broker b, and one on worker wa of broker a
            await wa.connect(free=0)
            await submit(a.url, tmp_path, b"for wb")
            on_b = held_of(await wb.next(timeout_s=3))
            await wa.send(capacity=workers_pb2.Capacity(free=1))
            await submit(a.url, tmp_path, b"for wa")
            on_a = held_of(await wa.next(timeout_s=3))
            # and wb dead: broker b saw its stream end
            await wb.close()
            async with BrokerClient(a.url) as client, asyncio.timeout(10):
                while any(w.online for w in await client.list_workers()
                          if w.worker_id == "wb"):
                    await asyncio.sleep(0.05)
                before = {t.id: t.lease_expires_at.ToMilliseconds()
                          for t in (await client.list_tasks()).tasks}
            # When broker a stops (ending wa's stream: wa is not gone) and starts again
            a.stop()
            await asyncio.to_thread(a.start)
            # Then wa's task has a new lease, and wb's keeps its own: broker b takes it back
            # when it runs out, however often a restarts
            async with BrokerClient(a.url) as client:
                after = {t.id: t.lease_expires_at.ToMilliseconds()
                         for t in (await client.list_tasks()).tasks}
            assert after[on_a.task_id] > before[on_a.task_id]
            assert after[on_b.task_id] == before[on_b.task_id]
        finally:
            await wa.close()


async def test_a_restarted_worker_without_its_task_gives_it_back_at_once(
    broker, tmp_path: pathlib.Path  # type: ignore[no-untyped-def]
) -> None:
    w = ScriptedWorker(broker.url, "w1")
    try:
        await w.connect()
        task_id = await submit(broker.url, tmp_path, b"restart me")
        first = held_of(await w.next())
        # The worker process restarts under the same id and holds nothing
        w.call.cancel()  # type: ignore[union-attr]
        await w.connect()
        beating = w.beating()  # alive while the retry is left to other workers for a moment
        again = held_of(await w.next(timeout_s=3))  # long before the lease would run out
        assert again.task_id == task_id and again.fence > first.fence
        async with BrokerClient(broker.url) as client:
            task = await client.get_task(task_id)
        assert task.attempts == 2  # the lost attempt counts: a crashing task runs out
        assert task.history[0].outcome == "failed"
        assert "came back without this task" in task.history[0].reason
        beating.cancel()
    finally:
        await w.close()


async def refused_as_twin(w: ScriptedWorker) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await w.connect()
    assert refused.value.code() == grpc.StatusCode.ALREADY_EXISTS
    assert "in use by another live worker process (host test)" in str(refused.value.details())


async def test_a_reconnect_of_the_same_process_replaces_its_stream_another_is_refused(
    broker  # type: ignore[no-untyped-def]
) -> None:
    first = ScriptedWorker(broker.url, "w1", instance="aaaa")
    again = ScriptedWorker(broker.url, "w1", instance="aaaa")
    clone = ScriptedWorker(broker.url, "w1", instance="bbbb")
    try:
        await first.connect()
        await refused_as_twin(clone)
        await again.connect()  # the same process after a network blip: its old stream ends
        assert await first.next() == grpc.aio.EOF
    finally:
        for w in (first, again, clone):
            await w.close()


async def test_a_cloned_worker_is_refused_by_every_broker_sharing_the_database(
    mariadb_dsn: str, broker_factory: BrokerFactory, tmp_path: pathlib.Path
) -> None:
    a = broker_factory(mariadb_dsn, "db")
    b = broker_factory(mariadb_dsn, "db")
    wid = f"w-{os.getpid()}-{time.monotonic_ns()}"
    first = ScriptedWorker(a.url, wid, instance="aaaa")
    clone = ScriptedWorker(b.url, wid, instance="bbbb")
    later = ScriptedWorker(b.url, wid, instance="bbbb")
    try:
        # Given a worker holding a task through broker a
        await first.connect()
        task_id = await submit(a.url, tmp_path, b"the original's task")
        held_of(await first.next())
        # When a copy of its state folder registers through broker b, it is refused there too
        await refused_as_twin(clone)
        # And the original keeps its task and attempt (a clone accepted would fail it)
        async with BrokerClient(a.url) as client:
            task = await client.get_task(task_id)
        assert (task.state, task.attempts, task.worker_id) == (2, 1, wid)
        # Once the original's stream has ended, the id is free through any broker
        await first.close()
        for _ in range(50):
            try:
                await later.connect()
                break
            except grpc.aio.AioRpcError:
                later = ScriptedWorker(b.url, wid, instance="bbbb")
                await asyncio.sleep(0.1)
        else:
            raise AssertionError("the id stayed taken after the original hung up")
    finally:
        for w in (first, clone, later):
            await w.close()


async def test_a_broker_with_another_payload_folder_than_its_database_says_so_at_start(
    sqlite_dsn: str, broker_factory: BrokerFactory, tmp_path: pathlib.Path
) -> None:
    # Given a task waiting, its payload in the first broker's folder
    first = broker_factory(sqlite_dsn, "fs", payload_dir=tmp_path / "nfs")
    await submit(first.url, tmp_path, b"a c1 output")
    # When a second broker on that database starts with a folder of its own, it says so
    apart = broker_factory(sqlite_dsn, "fs", payload_dir=tmp_path / "local")
    assert "none of the payloads of the newest waiting tasks is in --fs-resource-path" in (
        apart.logs())
    assert "must use the same --resource-type and payload folder" in apart.logs()
    # And one sharing the folder does not
    shared = broker_factory(sqlite_dsn, "fs", payload_dir=tmp_path / "nfs")
    assert "none of the payloads" not in shared.logs()


async def test_a_broker_that_fails_to_start_leaves_the_leases_alone(
    sqlite_dsn: str, broker_factory: BrokerFactory, tmp_path: pathlib.Path
) -> None:
    # Given a task whose worker stopped heartbeating (its lease runs out in 30 s)
    broker = broker_factory(sqlite_dsn, "fs", extra=["--lease-s", "30"])
    w = ScriptedWorker(broker.url, "w1")
    try:
        await w.connect()
        task_id = await submit(broker.url, tmp_path, b"orphaned")
        held_of(await w.next())
        async with BrokerClient(broker.url) as client:
            before = (await client.get_task(task_id)).lease_expires_at.ToMilliseconds()
            # When another broker on the database fails to start (the port is taken)
            failed = subprocess.run(
                [str(BIN / "gpuproxy"), "run", "--db-dsn", sqlite_dsn, "--url", broker.url,
                 "--fs-resource-path", str(tmp_path / "payloads"), "--lease-s", "600"],
                capture_output=True, text=True, timeout=60, env=cli_env(tmp_path))
            assert failed.returncode == 1 and "cannot listen on" in failed.stderr
            # Then the lease is where the worker left it: the task still comes back in time
            after = (await client.get_task(task_id)).lease_expires_at.ToMilliseconds()
            assert after == before
    finally:
        await w.close()


async def test_a_worker_id_too_long_for_the_database_is_refused(
    broker  # type: ignore[no-untyped-def]
) -> None:
    w = ScriptedWorker(broker.url, "w" * 256)
    try:
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await w.connect()
        assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "worker_id is 256 characters long, over 255" in str(refused.value.details())
    finally:
        await w.close()


async def test_a_waiting_task_whose_payload_was_removed_takes_it_again_on_resubmit(
    broker, tmp_path: pathlib.Path  # type: ignore[no-untyped-def]
) -> None:
    # Given a queued task whose payload a cleanup removed (it raced the submit)
    payload = os.urandom(100_000)
    task_id = await submit(broker.url, tmp_path, payload)
    sha256 = hashlib.sha256(payload).hexdigest()
    [stored] = (tmp_path / "payloads").rglob(sha256)
    stored.unlink()
    # When the same payload is submitted again, it is uploaded again to the same task
    assert await submit(broker.url, tmp_path, payload) == task_id
    assert stored.read_bytes() == payload
    # Then a worker gets the task with its payload
    w = ScriptedWorker(broker.url, "w1")
    try:
        await w.connect()
        assert await w.fetch(held_of(await w.next())) == payload
    finally:
        await w.close()


async def health_of(url: str) -> int:
    async with grpc.aio.insecure_channel(url) as channel:
        reply = await health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service=""), timeout=5)
    return int(reply.status)


async def broker_behind_relay(mariadb_dsn: str, broker_factory: BrokerFactory
                              ) -> tuple[TcpCut, BrokerProcess]:
    """A broker whose database connections go through a relay the test can cut or hush."""
    url = urllib.parse.urlsplit(mariadb_dsn)
    relay = await TcpCut(url.hostname or "127.0.0.1", url.port or 3306).start()
    dsn = url._replace(netloc=f"{url.username}:@127.0.0.1:{relay.port}").geturl()
    # (started from a thread: this loop relays the broker's database connections)
    broker = await asyncio.to_thread(broker_factory, dsn, "fs", extra=["--lease-s", str(LEASE_S)])
    return relay, broker


async def test_a_database_outage_shows_in_health_and_takes_no_task_from_a_live_worker(
    mariadb_dsn: str, broker_factory: BrokerFactory, tmp_path: pathlib.Path
) -> None:
    relay, broker = await broker_behind_relay(mariadb_dsn, broker_factory)
    w = ScriptedWorker(broker.url, "w1")
    try:
        await w.connect()
        task_id = await submit(broker.url, tmp_path, b"c1 output")
        held = held_of(await w.next())
        beating = w.beating(held)
        # Given the database gone for three leases while the worker heartbeats all along
        relay.cut()
        await asyncio.sleep(1.5 * LEASE_S)
        # Then health says the broker cannot serve, and a request is told why
        assert await health_of(broker.url) == health_pb2.HealthCheckResponse.NOT_SERVING
        async with BrokerClient(broker.url) as client:
            with pytest.raises(exceptions.BrokerCannotServe) as refused:
                await client.get_task(task_id)
        assert str(refused.value).startswith(
            f"The broker at {broker.url} answered but cannot serve now: Database ")
        await asyncio.sleep(1.5 * LEASE_S)
        relay.restore()
        await asyncio.sleep(2 * LEASE_S)
        assert await health_of(broker.url) == health_pb2.HealthCheckResponse.SERVING

        # Then the worker's stream stayed open, and its task is still its own: the first
        # attempt's result finishes it
        assert not beating.done() and not w.call.done()  # type: ignore[union-attr]
        beating.cancel()
        finished = await w.upload(held, b"proof")
        assert finished.state == 4 and finished.attempts == 1
        async with BrokerClient(broker.url) as client:
            shown = await client.get_task(task_id)
        assert [a.outcome for a in shown.history] == ["finished"]
        logs = broker.logs()
        assert "storing workers' heartbeats and progress failed" in logs
        assert "leases of running tasks extended for their workers to renew them" in logs
    finally:
        await w.close()
        await relay.close()


async def test_a_broker_that_loses_its_database_sends_the_workers_that_know_others_to_them(
    mariadb_dsn: str, broker_factory: BrokerFactory, tmp_path: pathlib.Path
) -> None:
    relay, a = await broker_behind_relay(mariadb_dsn, broker_factory)
    b = await asyncio.to_thread(broker_factory, mariadb_dsn, "fs",
                                extra=["--lease-s", str(LEASE_S)])
    movable = ScriptedWorker(a.url, "wm", other_brokers=1)
    staying = ScriptedWorker(a.url, "ws")
    moved = ScriptedWorker(b.url, "wm", other_brokers=1)
    try:
        await movable.connect()
        await staying.connect(free=0)
        await submit(a.url, tmp_path, b"c1 output")
        held = held_of(await movable.next())
        beating = movable.beating(held)
        # When broker a loses its database
        relay.cut()
        # Then it ends the stream of the worker that knows another broker, not the other's
        assert movable.call is not None and staying.call is not None
        async with asyncio.timeout(10):
            assert await movable.call.read() is grpc.aio.EOF
        beating.cancel()
        assert not staying.call.done()
        # and refuses it, saying why, while it cannot serve
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await ScriptedWorker(a.url, "wm", other_brokers=1).connect()
        assert refused.value.code() is grpc.StatusCode.UNAVAILABLE
        assert "cannot serve now: its database does not answer" in (
            refused.value.details() or "")
        # The worker goes on through broker b with the same attempt: its heartbeats are stored
        # there, so no broker takes the task back after a lease
        await moved.connect(held=[held], free=0)
        beating = moved.beating(held)
        await asyncio.sleep(3 * LEASE_S)
        beating.cancel()
        finished = await moved.upload(held, b"proof")
        assert finished.state == tasks_pb2.TASK_STATE_FINISHED and finished.attempts == 1
        assert "the workers that know other brokers were sent to them" in a.logs()
    finally:
        await asyncio.gather(*(w.close() for w in (movable, staying, moved)))
        await relay.close()


async def test_a_database_link_gone_silent_fails_in_seconds_and_a_dead_workers_task_comes_back(
    mariadb_dsn: str, broker_factory: BrokerFactory, tmp_path: pathlib.Path
) -> None:
    relay, broker = await broker_behind_relay(mariadb_dsn, broker_factory)
    w = ScriptedWorker(broker.url, "w1")
    try:
        await w.connect()
        task_id = await submit(broker.url, tmp_path, b"c1 output")
        held_of(await w.next())
        # Given every database connection open now gone silent for good (a dead route: no
        # reset, and the kernel would wait about 15 minutes), new ones getting through
        relay.hush()
        # When the worker dies with the task
        await w.close()
        # Then the broker gives up on the silent connections within seconds, and the task
        # comes back to the queue by itself
        deadline = time.monotonic() + 45
        async with BrokerClient(broker.url) as client:
            while True:
                with contextlib.suppress(exceptions.BrokerError):
                    if (await client.get_task(task_id)).state == tasks_pb2.TASK_STATE_INIT:
                        break
                assert time.monotonic() < deadline, broker.logs()
                await asyncio.sleep(0.5)
        assert "no answer in 5 s (a network link gone silent" in broker.logs()
    finally:
        await w.close()
        await relay.close()


async def test_a_payload_folder_gone_from_under_the_broker_fails_no_task_for_good(
    broker, tmp_path: pathlib.Path  # type: ignore[no-untyped-def]
) -> None:
    payload = os.urandom(1000)
    task_id = await submit(broker.url, tmp_path, payload)
    # Given the shared folder gone from under the broker: an NFS share come unmounted leaves
    # the empty folder it was mounted on
    (tmp_path / "payloads").rename(tmp_path / "payloads.away")
    (tmp_path / "payloads").mkdir()
    deadline = time.monotonic() + 10
    while await health_of(broker.url) != health_pb2.HealthCheckResponse.NOT_SERVING:
        assert time.monotonic() < deadline, broker.logs()
        await asyncio.sleep(0.2)
    w = ScriptedWorker(broker.url, "w1")
    beating: asyncio.Task[None] | None = None
    try:
        await w.connect()
        held = held_of(await w.next())
        beating = w.beating(held)
        # When a worker asks for the task's payload, it is told to wait, not that it is gone
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await w.fetch(held)
        assert refused.value.code() is grpc.StatusCode.UNAVAILABLE
        assert "marker file .gpuproxy-payloads is gone" in (refused.value.details() or "")
        new_input = tmp_path / "c1"
        new_input.write_bytes(b"new input")
        async with BrokerClient(broker.url) as client:  # nor is the empty folder written into
            with pytest.raises(exceptions.BrokerCannotServe, match="marker file"):
                await client.submit_file(new_input, task_type="c2", miner="f01000")
        # Then once the share is back, the broker serves, and the same attempt goes on
        (tmp_path / "payloads").rmdir()
        (tmp_path / "payloads.away").rename(tmp_path / "payloads")
        deadline = time.monotonic() + 10
        while await health_of(broker.url) != health_pb2.HealthCheckResponse.SERVING:
            assert time.monotonic() < deadline, broker.logs()
            await asyncio.sleep(0.2)
        assert await w.fetch(held) == payload
        finished = await w.upload(held, b"proof")
        assert finished.state == tasks_pb2.TASK_STATE_FINISHED and finished.attempts == 1
        assert finished.id == task_id
    finally:
        if beating is not None:
            beating.cancel()
        await w.close()
