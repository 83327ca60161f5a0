"""The dispatcher's bookkeeping of claims, and its loop surviving a database outage."""

from __future__ import annotations

import asyncio
import collections.abc
import hashlib
import pathlib
import uuid

import pytest
import structlog

from broker import models, policy
from broker.dispatcher import ELSEWHERE_POLLS, Dispatcher, Session
from broker.models import NewTask, WorkerRecord
from broker.store import Store, open_store

KEY_A, KEY_B = (hashlib.sha256(name).hexdigest() for name in (b"key a", b"key b"))


@pytest.fixture
async def store(tmp_path: pathlib.Path) -> collections.abc.AsyncIterator[Store]:
    s = open_store(f"sqlite:///{tmp_path}/db.sqlite")
    await s.open()
    yield s
    await s.close()


def worker(worker_id: str, *keys: str, types: tuple[str, ...] = ("groth16",)) -> Session:
    """An idle worker's session that holds these proving keys loaded."""
    s = Session(worker_id, types, max_tasks=1, accepting=True)
    s.record = WorkerRecord(
        worker_id=worker_id, hostname="h", addresses=(), version="", task_types=types,
        max_tasks=1, gpus=(), registered_at=0, last_seen_at=0, resident_keys=keys,
    )
    return s


async def submit(store: Store, key: str, created_at: int, task_type: str = "groth16") -> str:
    task, _ = await store.create_task(NewTask(
        id=str(uuid.uuid4()), task_type=task_type, miner="", comment=policy.key_comment(key),
        priority=0, payload_size=1, payload_sha256=hashlib.sha256(b"w").hexdigest(),
        max_attempts=3, created_at=created_at,
    ))
    return task.id


def assigned(s: Session) -> list[str]:
    out = []
    while not s.outbox.empty():
        out.append(s.outbox.get_nowait().assignment.task.id)
    return out


@pytest.mark.parametrize("order", ["cold first", "warm first"])
async def test_a_task_goes_to_the_idle_worker_that_holds_its_key(store: Store, order: str
                                                                 ) -> None:
    # Given two idle workers, only one of which holds key A loaded
    dispatcher = Dispatcher(store, lease_s=30)
    cold, warm = worker("cold"), worker("warm", KEY_A)
    for s in ([cold, warm] if order == "cold first" else [warm, cold]):
        dispatcher.add(s)
    # When a task for key A arrives, it goes to the worker that need not load the key
    task = await submit(store, KEY_A, models.now_ms())
    await dispatcher._assign()
    assert assigned(warm) == [task] and assigned(cold) == []


async def test_each_task_goes_to_the_worker_holding_its_key(store: Store) -> None:
    dispatcher = Dispatcher(store, lease_s=30)
    has_b, has_a = worker("has-b", KEY_B), worker("has-a", KEY_A)
    dispatcher.add(has_b)
    dispatcher.add(has_a)
    now = models.now_ms()
    for_a = await submit(store, KEY_A, now - 2)  # the older: claimed first
    for_b = await submit(store, KEY_B, now - 1)
    await dispatcher._assign()
    assert assigned(has_a) == [for_a] and assigned(has_b) == [for_b]


async def test_without_a_worker_holding_the_key_the_task_still_runs_at_once(store: Store
                                                                            ) -> None:
    # Given the only worker that holds key A is busy, and one idle worker that does not
    dispatcher = Dispatcher(store, lease_s=30)
    busy, idle = worker("busy", KEY_A), worker("idle", KEY_B)
    busy.held["other"] = 1
    dispatcher.add(busy)
    dispatcher.add(idle)
    task = await submit(store, KEY_A, models.now_ms())
    await dispatcher._assign()
    assert assigned(idle) == [task]  # no waiting for the key's holder


async def test_the_head_task_goes_to_a_worker_that_can_run_its_type(store: Store) -> None:
    dispatcher = Dispatcher(store, lease_s=30)
    c2_only = worker("c2-only", KEY_A, types=("c2",))
    both = worker("both", types=("c2", "groth16"))
    dispatcher.add(c2_only)
    dispatcher.add(both)
    now = models.now_ms()
    g16 = await submit(store, KEY_A, now - 2)
    c2 = await submit(store, KEY_A, now - 1, task_type="c2")
    await dispatcher._assign()
    assert assigned(both) == [g16] and assigned(c2_only) == [c2]


@pytest.mark.parametrize("ended", ["failed", "finished, its result dropped"])
async def test_a_task_that_ran_goes_to_another_worker_than_its_last_one_where_one_is_free(
    store: Store, ended: str,
) -> None:
    # Given a task whose attempt failed on worker "last", or whose result from "last" was
    # found wrong and dropped; "last" holds its key
    now = models.now_ms()
    task = await submit(store, KEY_A, now)
    claimed = await store.claim_task("last", ["groth16"], 30_000, now)
    assert claimed is not None
    if ended == "failed":
        await store.fail_task(task, claimed.fence, "GPU fell off the bus", True, now, now)
    else:
        await store.finish_task(task, claimed.fence, 5, "cd" * 32, now)
        await store.rerun_task(task, "cd" * 32, "not a proof", now)
    # When "last" and another idle worker (without the key) are both free, the other takes it
    dispatcher = Dispatcher(store, lease_s=30)
    last, other = worker("last", KEY_A), worker("other")
    dispatcher.add(last)
    dispatcher.add(other)
    await dispatcher._assign()
    assert assigned(other) == [task] and assigned(last) == []


@pytest.mark.parametrize("ready_for_ms", [0, 2_000])
async def test_a_failed_task_waits_a_moment_for_another_worker_before_its_last_one_takes_it(
    store: Store, ready_for_ms: int,
) -> None:
    # Given a task that failed on "flaky", ready to run again, and a later task
    now = models.now_ms()
    task = await submit(store, KEY_A, now - 1)
    later = await submit(store, KEY_A, now)
    claimed = await store.claim_task("flaky", ["groth16"], 30_000, now)
    assert claimed is not None and claimed.id == task
    await store.fail_task(task, claimed.fence, "processor crashed", True, now - ready_for_ms,
                          now)
    # When "flaky" is the only free worker here
    dispatcher = Dispatcher(store, lease_s=30)
    flaky, busy = worker("flaky"), worker("busy")
    busy.held["something"] = 1
    dispatcher.add(flaky)
    dispatcher.add(busy)
    await dispatcher._assign()
    if ready_for_ms < ELSEWHERE_POLLS * dispatcher.poll_s * 1000:
        # Then, just ready, the failed task is left a few polls for a free worker of another
        # broker: "flaky" takes the later task meanwhile
        assert assigned(flaky) == [later]
        assert (await store.get_task(task)).state == models.TaskState.INIT
    else:  # and once ready that long, it takes it itself: no other worker came
        assert assigned(flaky) == [task]
        assert (await store.get_task(later)).state == models.TaskState.INIT


def test_done_frees_only_the_claim_with_that_fence() -> None:
    # Given worker B holding task t under fence 3 (A held it under fence 1 before a requeue)
    dispatcher = Dispatcher(store=None, lease_s=30)  # type: ignore[arg-type]
    b = Session("b", ("c2",), max_tasks=1, accepting=True)
    dispatcher.sessions.append(b)
    b.held["t"] = 3
    # When A's late report of fence 1 arrives, B keeps its claim and gets no second task
    dispatcher.done("t", 1)
    assert b.held == {"t": 3} and b.free == 0
    # When B's own report arrives, its slot is free
    dispatcher.done("t", 3)
    assert b.held == {} and b.free == 1


def test_revoke_of_an_old_fence_keeps_the_newer_claim() -> None:
    s = Session("w", ("c2",), max_tasks=1, accepting=True)
    s.held["t"] = 5
    s.revoke("t", 4, "stale heartbeat")
    assert s.held == {"t": 5}
    assert s.outbox.get_nowait().revoke.fence == 4


async def test_dispatch_loop_survives_a_database_outage(tmp_path: pathlib.Path) -> None:
    store = open_store(f"sqlite:///{tmp_path}/db.sqlite")
    await store.open()
    await store.close()  # every claim now fails, as during an outage
    dispatcher = Dispatcher(store, lease_s=30, poll_s=0.05)
    dispatcher.add(Session("w", ("c2",), max_tasks=1, accepting=True))
    with structlog.testing.capture_logs() as logs:
        loop = asyncio.create_task(dispatcher.run_forever())
        await asyncio.sleep(1.0)
        assert not loop.done()  # still dispatching, not dead
        loop.cancel()
    failures = [e for e in logs if e["event"].startswith("dispatch failed")]
    assert len(failures) == 1  # logged once per outage, not per round
    assert failures[0]["log_level"] == "error" and failures[0]["exc_info"]


async def test_an_idle_round_asks_the_database_once_not_once_per_worker(store: Store) -> None:
    calls: list[str] = []

    class Counting:
        def __getattr__(self, name: str) -> object:
            calls.append(name)
            return getattr(store, name)

    dispatcher = Dispatcher(Counting(), lease_s=30)  # type: ignore[arg-type]
    for n in range(4):
        dispatcher.add(worker(f"w{n}"))
    await dispatcher._assign()
    assert calls == ["next_task"]


async def claimed(dispatcher: Dispatcher, s: Session, store: Store) -> str:
    """Submit a task and let `s` claim it."""
    task = await submit(store, KEY_A, models.now_ms())
    await dispatcher._assign()
    assert assigned(s) == [task]
    return task


async def test_a_cancel_seen_during_an_outage_still_revokes_the_task(store: Store) -> None:
    # Given a worker running a task, and a database that fails the next two reads
    dispatcher = Dispatcher(store, lease_s=30, poll_s=0.02)
    s = worker("w")
    dispatcher.add(s)
    task_id = await claimed(dispatcher, s, store)
    reads = 0
    real_get = store.get_task

    async def flaky_get(task_id: str) -> models.Task:
        nonlocal reads
        reads += 1
        if reads <= 2:
            raise OSError("database unreachable")
        return await real_get(task_id)

    store.get_task = flaky_get  # type: ignore[method-assign]
    # When the task is cancelled while the database is down
    await store.cancel_task(task_id, "cancelled by the operator", models.now_ms())
    with structlog.testing.capture_logs() as logs:
        dispatcher.task_changed(task_id)
        loop = asyncio.create_task(dispatcher.run_forever())
        async with asyncio.timeout(10):
            revoke = (await s.outbox.get()).revoke
            while not any(e["event"] == "dispatch works again" for e in logs):
                await asyncio.sleep(0.01)
        loop.cancel()
    # Then the worker is told once the database answers, and the outage is logged twice:
    # when it starts and when it ends
    assert revoke.task_id == task_id and "cancelled by the operator" in revoke.reason
    assert s.held == {} and reads == 3
    events = [e["event"] for e in logs if e["log_level"] != "debug"
              and e["event"].startswith("dispatch")]
    assert events == ["dispatch failed; retrying until it works again", "dispatch works again"]


async def test_a_held_task_that_was_deleted_is_revoked(store: Store) -> None:
    dispatcher = Dispatcher(store, lease_s=30)
    s = worker("w")
    dispatcher.add(s)
    task_id = await claimed(dispatcher, s, store)
    await store.cancel_task(task_id, "cancelled", models.now_ms())
    await store.delete_task(task_id)
    dispatcher.task_changed(task_id)
    await dispatcher._revoke_lost()
    revoke = s.outbox.get_nowait().revoke
    assert revoke.task_id == task_id and revoke.reason.startswith("task is deleted")
    assert s.held == {}


async def test_a_change_during_a_check_is_checked_again(store: Store) -> None:
    # Given a worker running a task, and a cancel that lands while the dispatcher reads it
    dispatcher = Dispatcher(store, lease_s=30)
    s = worker("w")
    dispatcher.add(s)
    task_id = await claimed(dispatcher, s, store)
    real_get = store.get_task
    reads = 0

    async def read_then_cancel(task_id: str) -> models.Task:
        nonlocal reads
        reads += 1
        row = await real_get(task_id)  # still running
        if reads == 1:
            await store.cancel_task(task_id, "cancelled meanwhile", models.now_ms())
            dispatcher.task_changed(task_id)
        return row

    store.get_task = read_then_cancel  # type: ignore[method-assign]
    dispatcher.task_changed(task_id)
    # When the first check reads the running row, nothing is revoked yet
    await dispatcher._revoke_lost()
    assert s.outbox.empty()
    # Then the change that came during it is checked next, and the worker is told
    await dispatcher._revoke_lost()
    revoke = s.outbox.get_nowait().revoke
    assert revoke.task_id == task_id and "cancelled meanwhile" in revoke.reason


async def test_a_drain_made_here_during_a_read_of_the_drains_is_not_lost(store: Store) -> None:
    # Given a worker drained through another broker, and one drained here while this broker
    # reads the drains (the read started before the second drain was stored)
    dispatcher = Dispatcher(store, lease_s=30)
    for worker_id in ("elsewhere", "here"):
        await store.register_worker(worker(worker_id).record, live_ms=60_000)  # type: ignore[arg-type]
    await store.drain_worker(models.Drain("elsewhere", "", 1))
    real_list = store.list_drains

    async def read_then_drain_here() -> list[models.Drain]:
        rows = await real_list()
        await store.drain_worker(models.Drain("here", "", 2))
        dispatcher.drain("here", True)
        return rows

    store.list_drains = read_then_drain_here  # type: ignore[method-assign]
    # When the read ends, it is stale: the drain made here is kept
    assert not await dispatcher._read_drains()
    assert dispatcher.drained == {"here"}
    # Then the next read has both
    store.list_drains = real_list  # type: ignore[method-assign]
    assert await dispatcher._read_drains()
    assert dispatcher.drained == {"elsewhere", "here"}
    # And a drained worker is given no task
    s = worker("here")
    dispatcher.add(s)
    await submit(store, KEY_A, created_at=1)
    await dispatcher._assign()
    assert assigned(s) == []


async def test_a_task_claimed_while_a_drain_lands_goes_back_to_the_queue(store: Store) -> None:
    # Given an idle worker, and a drain through this broker that lands during a claim for it
    dispatcher = Dispatcher(store, lease_s=30)
    s = worker("w")
    dispatcher.add(s)
    task_id = await submit(store, KEY_A, created_at=1)
    real_claim = store.claim_task

    async def claim_then_drain(*args: object, **kwargs: int) -> models.Task | None:
        task = await real_claim(*args, **kwargs)  # type: ignore[arg-type]
        dispatcher.drain("w", True)
        return task

    store.claim_task = claim_then_drain  # type: ignore[method-assign]
    await dispatcher._assign()
    # Then the worker is not given the task, which waits for another, its attempt not spent
    assert assigned(s) == []
    task = await store.get_task(task_id)
    assert task.state == models.TaskState.INIT and task.attempts == 0


def test_a_gpu_is_held_by_its_uuid_or_by_its_index_on_one_host(store: Store) -> None:
    import dataclasses

    from broker.models import Gpu

    def on(worker_id: str, host: str, uuid: str) -> Session:
        s = worker(worker_id)
        assert s.record is not None
        s.record = dataclasses.replace(s.record, hostname=host, gpus=(
            Gpu(index=0, name="g", uuid=uuid, memory_bytes=0),))
        return s

    dispatcher = Dispatcher(store, lease_s=30)
    dispatcher.add(on("a", "host1", "GPU-5f1c"))
    dispatcher.add(on("b", "host1", "index-0"))  # no nvidia-smi there
    assert dispatcher.gpu_holder("c", "host2", "GPU-5f1c").worker_id == "a"  # type: ignore[union-attr]
    assert dispatcher.gpu_holder("a", "host1", "GPU-5f1c") is None  # itself, reconnecting
    assert dispatcher.gpu_holder("c", "host1", "index-0").worker_id == "b"  # type: ignore[union-attr]
    assert dispatcher.gpu_holder("c", "host2", "index-0") is None  # another host's card 0
    # A MIG device's UUID is as unique as a GPU's (a second container given the same device)
    dispatcher.add(on("d", "container1", "MIG-1111-2222"))
    assert dispatcher.gpu_holder("e", "container2", "MIG-1111-2222").worker_id == "d"  # type: ignore[union-attr]
