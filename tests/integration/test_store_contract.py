"""The store contract: every method of `broker.store.base.Store`, one body for every backend."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
import itertools
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from broker import exceptions, policy
from broker.models import (
    Drain,
    NewTask,
    PageCursor,
    Resource,
    Task,
    TaskFilter,
    TaskState,
    WorkerRecord,
)
from broker.store import Store, open_store

T0 = 1_700_000_000_000
LEASE_MS = 30_000
_seq = itertools.count()


def new_task(**overrides: Any) -> NewTask:
    n = next(_seq)
    fields: dict[str, Any] = {
        "id": str(uuid.uuid4()),
        "task_type": "c2-32g",
        "miner": "f01000",
        "comment": f"sector {n}",
        "priority": 0,
        "payload_size": 1000 + n,
        "payload_sha256": hashlib.sha256(f"payload {n}".encode()).hexdigest(),
        "max_attempts": 3,
        "created_at": T0 + n,
    }
    fields.update(overrides)
    return NewTask(**fields)


Submit = Callable[..., Awaitable[Task]]


@pytest.fixture
def submit(store: Store) -> Submit:
    """Factory: create a task in the store under test and return it."""

    async def _submit(**overrides: Any) -> Task:
        task, created = await store.create_task(new_task(**overrides))
        assert created
        return task

    return _submit


async def claimed(store: Store, submit: Submit, **overrides: Any) -> Task:
    """A new task claimed by worker w1 at T0."""
    task = await submit(task_type="claim-me", **overrides)
    got = await store.claim_task("w1", ["claim-me"], LEASE_MS, T0)
    assert got is not None and got.id == task.id
    return got


# -- create, get, list, delete ---------------------------------------------------------------------


async def test_create_stores_an_init_task_and_is_idempotent(store: Store) -> None:
    new = new_task(comment="first", priority=5)

    task, created = await store.create_task(new)
    again, created_again = await store.create_task(
        new_task(id=new.id, comment="second", priority=9)
    )

    assert created and not created_again
    assert again == task == await store.get_task(new.id)
    assert (task.state, task.comment, task.priority) == (TaskState.INIT, "first", 5)
    assert (task.attempts, task.fence, task.version, task.worker_id) == (0, 0, 1, "")
    assert task.payload_sha256 == new.payload_sha256 and task.max_attempts == 3
    assert await store.get_attempts(new.id) == []


async def test_get_unknown_task_raises_task_not_found(store: Store) -> None:
    with pytest.raises(exceptions.TaskNotFound, match="no-such-id"):
        await store.get_task("no-such-id")


async def test_list_filters_by_state_type_miner_and_worker(
    store: Store, submit: Submit
) -> None:
    a = await submit(task_type="c2-32g", miner="f01")
    b = await submit(task_type="c2-64g", miner="f02")
    c = await submit(task_type="c2-32g", miner="f02")
    running = await store.claim_task("w7", ["c2-64g"], LEASE_MS, T0)
    assert running is not None and running.id == b.id

    async def ids(**flt: Any) -> list[str]:
        return [t.id for t in await store.list_tasks(TaskFilter(**flt), 100)]

    assert await ids() == [c.id, b.id, a.id]
    assert await ids(states=(TaskState.INIT,)) == [c.id, a.id]
    assert await ids(states=(TaskState.RUNNING, TaskState.ERROR)) == [b.id]
    assert await ids(task_types=("c2-32g",)) == [c.id, a.id]
    assert await ids(task_types=("c2-32g", "c2-64g")) == [c.id, b.id, a.id]
    assert await ids(miner="f02") == [c.id, b.id]
    assert await ids(miner="f02", task_types=("c2-32g",)) == [c.id]
    assert await ids(worker_id="w7") == [b.id]
    assert await ids(worker_id="w8") == []


async def test_task_counts_by_type_and_state_with_the_oldest(
    store: Store, submit: Submit
) -> None:
    assert await store.task_counts() == []
    a = await submit(task_type="c2-32g")
    b = await submit(task_type="c2-32g")
    c = await submit(task_type="c2-64g")
    running = await store.claim_task("w1", ["c2-32g"], LEASE_MS, T0)
    assert running is not None and running.id == a.id
    await store.cancel_task(c.id, "wrong sector", T0)
    counts = {(n.task_type, n.state): (n.count, n.oldest_since)
              for n in await store.task_counts()}
    assert counts == {
        ("c2-32g", TaskState.RUNNING): (1, a.created_at),
        ("c2-32g", TaskState.INIT): (1, b.created_at),
        ("c2-64g", TaskState.ERROR): (1, c.created_at),
    }
    # A task retried after two hours has waited since its backoff ended, not since its submit
    await store.fail_task(a.id, running.fence, "GPU fell off", True, T0 + 7_200_000,
                          T0 + 7_100_000)
    await store.cancel_task(b.id, "only a left waiting", T0)
    [waiting] = [n for n in await store.task_counts() if n.state == TaskState.INIT]
    assert waiting.oldest_since == T0 + 7_200_000


async def test_list_pages_newest_first_without_duplicates_or_gaps(
    store: Store, submit: Submit
) -> None:
    # Given 25 tasks, several created in the same millisecond (ties broken by id)
    tasks = [await submit(created_at=T0 + i // 3) for i in range(25)]
    expected = sorted(tasks, key=lambda t: (t.created_at, t.id), reverse=True)

    # When paging 4 at a time with the cursor of each page's last task
    seen: list[Task] = []
    cursor: PageCursor | None = None
    while page := await store.list_tasks(TaskFilter(), 4, cursor):
        assert len(page) <= 4
        seen += page
        cursor = PageCursor(created_at=page[-1].created_at, task_id=page[-1].id)

    # Then every task comes exactly once, newest first
    assert [t.id for t in seen] == [t.id for t in expected]


async def test_delete_task_removes_it_and_its_history(store: Store, submit: Submit) -> None:
    task = await claimed(store, submit)

    await store.delete_task(task.id)

    with pytest.raises(exceptions.TaskNotFound):
        await store.get_task(task.id)
    assert await store.get_attempts(task.id) == []
    await store.delete_task(task.id)  # deleting again is harmless


# -- claim -----------------------------------------------------------------------------------------


async def test_claim_takes_highest_priority_then_oldest(store: Store, submit: Submit) -> None:
    old_low = await submit(priority=0, created_at=T0)
    new_high = await submit(priority=5, created_at=T0 + 20)
    old_high = await submit(priority=5, created_at=T0 + 10)
    new_low = await submit(priority=0, created_at=T0 + 30)

    order = []
    while (task := await store.claim_task("w1", ["c2-32g"], LEASE_MS, T0 + 100)) is not None:
        order.append(task.id)

    assert order == [old_high.id, new_high.id, old_low.id, new_low.id]


async def test_claim_orders_across_several_types(store: Store, submit: Submit) -> None:
    low = await submit(task_type="a", priority=1)
    high = await submit(task_type="b", priority=2)
    other = await submit(task_type="c", priority=9)

    first = await store.claim_task("w1", ["a", "b"], LEASE_MS, T0 + 100)
    second = await store.claim_task("w1", ["a", "b"], LEASE_MS, T0 + 100)

    assert first is not None and second is not None
    assert (first.id, second.id) == (high.id, low.id)
    assert await store.claim_task("w1", ["a", "b"], LEASE_MS, T0 + 100) is None
    assert (await store.get_task(other.id)).state == TaskState.INIT


async def test_next_task_is_what_a_claim_would_take_without_taking_it(
    store: Store, submit: Submit
) -> None:
    low = await submit(task_type="a", priority=1)
    high = await submit(task_type="b", priority=2)
    await submit(task_type="c", priority=9)

    peeked = await store.next_task(["a", "b"], T0 + 100)
    assert peeked is not None and peeked.id == high.id
    assert (await store.get_task(high.id)).state == TaskState.INIT  # still waiting
    first = await store.claim_task("w1", ["a", "b"], LEASE_MS, T0 + 100)
    assert first is not None and first.id == high.id
    after = await store.next_task(["a", "b"], T0 + 100)
    assert after is not None and after.id == low.id
    assert await store.next_task([], T0 + 100) is None
    # A task waiting out its retry delay is not next until the delay is over
    again = await store.claim_task("w1", ["a"], LEASE_MS, T0 + 100)
    assert again is not None
    await store.fail_task(again.id, again.fence, "oom", True, T0 + 60_000, T0 + 101)
    assert await store.next_task(["a"], T0 + 59_999) is None
    retry = await store.next_task(["a"], T0 + 60_000)
    assert retry is not None and retry.id == low.id


async def test_claim_respects_types_and_not_before(store: Store, submit: Submit) -> None:
    task = await claimed(store, submit)
    retry_at = T0 + 60_000
    await store.fail_task(task.id, task.fence, "oom", True, retry_at, T0 + 1)

    assert await store.claim_task("w2", ["other-type"], LEASE_MS, retry_at) is None
    assert await store.claim_task("w2", [], LEASE_MS, retry_at) is None
    assert await store.claim_task("w2", ["claim-me"], LEASE_MS, retry_at - 1) is None
    again = await store.claim_task("w2", ["claim-me"], LEASE_MS, retry_at)
    assert again is not None and again.id == task.id


async def test_a_task_ready_again_goes_to_another_worker_first_for_a_moment(
    store: Store, submit: Submit
) -> None:
    # Given a task that failed on w1, ready to run again at T0 + 10
    task = await claimed(store, submit)
    await store.fail_task(task.id, task.fence, "boom", True, T0 + 10, T0 + 1)
    # Then w1 may not take it back within the moment left for another worker
    assert await store.claim_task("w1", ["claim-me"], LEASE_MS, T0 + 500, 1000) is None
    # but may after it, or at once when no moment is asked for, and another worker may at once
    assert await store.claim_task("w1", ["claim-me"], LEASE_MS, T0 + 1010, 1000) is not None
    again = await store.fail_task(task.id, task.fence + 1, "boom", True, T0 + 2000, T0 + 1500)
    assert again.worker_id == "w1"
    assert (await store.claim_task("w2", ["claim-me"], LEASE_MS, T0 + 2000, 1000)) is not None


async def test_claim_sets_lease_fence_attempts_and_an_attempt_row(
    store: Store, submit: Submit
) -> None:
    task = await submit(task_type="claim-me")

    got = await store.claim_task("w1", ["claim-me"], LEASE_MS, T0 + 5)

    assert got is not None
    assert got == await store.get_task(task.id)
    assert (got.state, got.worker_id, got.attempts, got.fence) == (TaskState.RUNNING, "w1", 1, 1)
    assert (got.started_at, got.lease_expires_at) == (T0 + 5, T0 + 5 + LEASE_MS)
    assert got.version == task.version + 1
    [attempt] = await store.get_attempts(task.id)
    assert (attempt.number, attempt.worker_id, attempt.outcome) == (1, "w1", "running")
    assert (attempt.started_at, attempt.ended_at) == (T0 + 5, None)


# -- the holder of a claim -------------------------------------------------------------------------


async def test_renew_and_progress_change_the_running_task(store: Store, submit: Submit) -> None:
    task = await claimed(store, submit)

    renewed = await store.renew_lease(task.id, task.fence, 60_000, T0 + 10_000)
    await store.set_progress(task.id, task.fence, "msm", 0.5)

    now = await store.get_task(task.id)
    assert renewed.lease_expires_at == now.lease_expires_at == T0 + 70_000
    assert (now.progress_phase, now.progress_fraction) == ("msm", 0.5)
    assert now.version == task.version + 2 and now.fence == task.fence


async def test_finish_stores_the_result_and_closes_the_attempt(
    store: Store, submit: Submit
) -> None:
    task = await claimed(store, submit)

    done = await store.finish_task(task.id, task.fence, 1920, "ab" * 32, T0 + 500)

    assert done == await store.get_task(task.id)
    assert (done.state, done.result_size, done.result_sha256) == (
        TaskState.FINISHED, 1920, "ab" * 32
    )
    assert (done.finished_at, done.lease_expires_at) == (T0 + 500, None)
    [attempt] = await store.get_attempts(task.id)
    assert (attempt.outcome, attempt.ended_at) == ("finished", T0 + 500)


async def test_a_stale_fence_is_refused_everywhere(store: Store, submit: Submit) -> None:
    task = await claimed(store, submit)
    stale = task.fence - 1
    calls: list[Callable[[], Awaitable[Any]]] = [
        lambda: store.renew_lease(task.id, stale, LEASE_MS, T0 + 1),
        lambda: store.set_progress(task.id, stale, "msm", 0.1),
        lambda: store.finish_task(task.id, stale, 1, "cd" * 32, T0 + 1),
        lambda: store.fail_task(task.id, stale, "boom", True, T0 + 1, T0 + 1),
        lambda: store.release_task(task.id, stale, "shutdown", T0 + 1),
        lambda: store.renew_lease("no-such-task", 1, LEASE_MS, T0 + 1),
    ]

    for call in calls:
        with pytest.raises(exceptions.StaleFence):
            await call()

    assert await store.get_task(task.id) == task


async def test_fail_retryable_requeues_with_backoff_until_attempts_run_out(
    store: Store, submit: Submit
) -> None:
    # Given a task of 3 attempts
    task = await submit(task_type="gpu", max_attempts=3)
    reasons = ["CUDA out of memory", "lease expired", "bad proof"]

    # When each of 3 workers claims it and fails retryably
    for n, reason in enumerate(reasons, 1):
        now = T0 + n * 1000
        got = await store.claim_task(f"w{n}", ["gpu"], LEASE_MS, now)
        assert got is not None and got.attempts == n
        after = await store.fail_task(task.id, got.fence, reason, True, now + 500, now + 1)
        if n < 3:
            # Then it waits in init for its retry time
            assert (after.state, after.not_before, after.worker_id) == (
                TaskState.INIT, now + 500, f"w{n}"
            )

    # Then the last failure ends it in error, listing every attempt's reason
    assert after.state == TaskState.ERROR and after.finished_at == T0 + 3001
    assert after.error_message == (
        "failed after 3 attempts: #1 on worker w1: CUDA out of memory; "
        "#2 on worker w2: lease expired; #3 on worker w3: bad proof"
    )
    history = await store.get_attempts(task.id)
    assert [(a.number, a.outcome, a.reason) for a in history] == [
        (1, "failed", reasons[0]), (2, "failed", reasons[1]), (3, "failed", reasons[2])
    ]


async def test_fail_not_retryable_ends_in_error_at_once(store: Store, submit: Submit) -> None:
    task = await claimed(store, submit, max_attempts=5)

    after = await store.fail_task(task.id, task.fence, "invalid C1 output", False, T0, T0 + 9)

    assert after.state == TaskState.ERROR and after.attempts == 1
    assert after.error_message == "failed after 1 attempt: #1 on worker w1: invalid C1 output"
    assert await store.claim_task("w2", ["claim-me"], LEASE_MS, T0 + 10) is None


async def test_release_hands_the_task_back_without_using_an_attempt(
    store: Store, submit: Submit
) -> None:
    task = await claimed(store, submit)

    back = await store.release_task(task.id, task.fence, "worker shutting down", T0 + 5)

    assert (back.state, back.attempts, back.lease_expires_at) == (TaskState.INIT, 0, None)
    assert [(a.outcome, a.reason) for a in await store.get_attempts(task.id)] == [
        ("released", "worker shutting down")
    ]
    again = await store.claim_task("w2", ["claim-me"], LEASE_MS, T0 + 5)
    assert again is not None and (again.attempts, again.fence) == (1, task.fence + 1)
    assert back.worker_id == ""  # no attempt counts: no worker to keep a retry away from


async def test_release_after_a_failure_names_the_worker_that_failed_it_again(
    store: Store, submit: Submit
) -> None:
    # A task failed on w1, then w2 claimed it and handed it back (shutting down): the task
    # names w1 again, so that the dispatcher keeps its retry away from w1, not from w2
    task = await claimed(store, submit)
    failed = await store.fail_task(task.id, task.fence, "GPU fell off the bus", True, T0 + 1,
                                   T0 + 1)
    assert failed.worker_id == "w1"
    taken = await store.claim_task("w2", ["claim-me"], LEASE_MS, T0 + 2)
    assert taken is not None and taken.worker_id == "w2"
    back = await store.release_task(taken.id, taken.fence, "worker shutting down", T0 + 3)
    assert (back.state, back.attempts, back.worker_id) == (TaskState.INIT, 1, "w1")


# -- housekeeping ----------------------------------------------------------------------------------


async def test_requeue_expired_takes_back_tasks_whose_lease_expired(
    store: Store, submit: Submit
) -> None:
    task = await claimed(store, submit)
    expiry = T0 + LEASE_MS

    assert await store.requeue_expired(expiry - 1, {}) == []
    [back] = await store.requeue_expired(expiry, {})

    assert back == await store.get_task(task.id)
    assert (back.state, back.fence, back.not_before) == (TaskState.INIT, task.fence + 1, expiry)
    [attempt] = await store.get_attempts(task.id)
    assert (attempt.outcome, attempt.reason, attempt.ended_at) == (
        "requeued", f"lease expired: worker {task.worker_id} stopped heartbeating", expiry
    )
    assert await store.requeue_expired(expiry + 1, {}) == []
    with pytest.raises(exceptions.StaleFence):
        await store.finish_task(task.id, task.fence, 1, "ef" * 32, expiry + 1)


async def test_requeue_expired_enforces_the_processing_timeout_of_each_type(
    store: Store, submit: Submit
) -> None:
    task = await claimed(store, submit)
    # The worker keeps its lease alive, but the type allows 10 minutes of processing.
    now = T0 + 600_000
    await store.renew_lease(task.id, task.fence, LEASE_MS, now - 1)

    assert await store.requeue_expired(now - 1, {"claim-me": 600_000}) == []
    assert await store.requeue_expired(now, {"other-type": 1}) == []
    [back] = await store.requeue_expired(now, {"claim-me": 600_000})

    assert back.state == TaskState.INIT
    [attempt] = await store.get_attempts(task.id)
    assert attempt.outcome == "requeued" and "processing timeout of 600 s" in attempt.reason


async def test_requeue_expired_of_the_last_attempt_ends_in_error(
    store: Store, submit: Submit
) -> None:
    task = await submit(task_type="gpu", max_attempts=2)
    first = await store.claim_task("w1", ["gpu"], LEASE_MS, T0)
    assert first is not None
    await store.fail_task(task.id, first.fence, "segfault", True, T0 + 1, T0 + 1)
    second = await store.claim_task("w2", ["gpu"], LEASE_MS, T0 + 2)
    assert second is not None

    [dead] = await store.requeue_expired(T0 + 2 + LEASE_MS, {})

    assert (dead.state, dead.fence) == (TaskState.ERROR, second.fence + 1)
    assert dead.error_message == (
        "failed after 2 attempts: #1 on worker w1: segfault; #2 on worker w2: lease expired: "
            "worker w2 stopped heartbeating"
    )


async def test_a_task_whose_attempts_left_huge_reasons_still_ends_in_error(
    store: Store, submit: Submit
) -> None:
    # Given a task whose first four attempts failed with 4 MiB messages (a processor's whole
    # output; together over MariaDB's 16 MiB max_allowed_packet), and another expired task
    task = await submit(task_type="gpu", max_attempts=5)
    for n in range(4):
        held = await store.claim_task(f"w{n}", ["gpu"], LEASE_MS, T0 + n)
        assert held is not None
        await store.fail_task(task.id, held.fence, "x" * (4 << 20), True, T0 + n, T0 + n)
    assert await store.claim_task("w4", ["gpu"], LEASE_MS, T0 + 10) is not None
    other = await claimed(store, submit)
    # When both leases run out, both are taken back in the same sweep
    back = await store.requeue_expired(T0 + 10 + LEASE_MS, {})
    assert {t.id for t in back} == {task.id, other.id}
    # Then the task's error lists all five attempts, each reason cut to a readable size
    dead = await store.get_task(task.id)
    assert dead.state == TaskState.ERROR and len(dead.error_message) <= policy.ERROR_MESSAGE_CHARS
    assert dead.error_message.startswith("failed after 5 attempts: #1 on worker w0: xxx")
    assert dead.error_message.count("more characters cut]") == 4
    assert dead.error_message.endswith("#5 on worker w4: lease expired: worker w4 stopped "
                                       "heartbeating")


async def test_a_task_the_database_refuses_does_not_hold_back_the_others(
    store: Store, submit: Submit, monkeypatch: pytest.MonkeyPatch
) -> None:
    first, second = await claimed(store, submit), await claimed(store, submit)
    requeue = store._requeue_if_expired  # type: ignore[attr-defined]

    async def refuse_first(tx: Any, task_id: str, *args: Any) -> Task | None:
        if task_id == first.id:
            raise exceptions.StoreRefused(dsn="db", detail="packet too large (error 1153)")
        return await requeue(tx, task_id, *args)  # type: ignore[no-any-return]

    monkeypatch.setattr(store, "_requeue_if_expired", refuse_first)
    [back] = await store.requeue_expired(T0 + LEASE_MS, {})
    assert back.id == second.id and back.state == TaskState.INIT
    assert (await store.get_task(first.id)).state == TaskState.RUNNING  # the next sweep tries


async def test_requeue_expired_honours_its_limit(store: Store, submit: Submit) -> None:
    for _ in range(5):
        await submit(task_type="claim-me")
        assert await store.claim_task("w1", ["claim-me"], LEASE_MS, T0) is not None

    first = await store.requeue_expired(T0 + LEASE_MS, {}, limit=3)
    rest = await store.requeue_expired(T0 + LEASE_MS, {}, limit=3)

    assert (len(first), len(rest)) == (3, 2)
    assert not {t.id for t in first} & {t.id for t in rest}


async def test_a_cancelled_call_leaves_the_store_consistent_and_usable(
    store: Store, submit: Submit
) -> None:
    # Given claims cancelled at different points of their transaction (0 to 2 ms in)
    for n in range(10):
        task = await submit(task_type=f"cancel-{n}")
        call = asyncio.ensure_future(store.claim_task("w1", [task.task_type], LEASE_MS, T0))
        await asyncio.sleep(n * 0.0002)
        call.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await call

        # Then the claim happened entirely or not at all, and the store still works
        await asyncio.sleep(0.05)  # let a shielded transaction finish
        now = await store.get_task(task.id)
        history = await store.get_attempts(task.id)
        assert (now.state == TaskState.RUNNING) == (len(history) == 1)
        assert now.attempts == len(history) == now.fence
        await store.cancel_task(task.id, "cleanup", T0 + 1)


# -- operator actions ------------------------------------------------------------------------------


async def test_reset_sends_an_error_task_back_and_keeps_the_old_error(
    store: Store, submit: Submit
) -> None:
    # Given a task that failed for good
    task = await claimed(store, submit)
    failed = await store.fail_task(task.id, task.fence, "bad params", False, T0, T0 + 1)

    # When it is reset
    reset = await store.reset_task(task.id, T0 + 2)

    # Then it is init again with a fresh budget, and the history keeps the old error
    assert reset == await store.get_task(task.id)
    assert (reset.state, reset.attempts, reset.worker_id, reset.error_message) == (
        TaskState.INIT, 0, "", ""
    )
    history = await store.get_attempts(task.id)
    assert [(a.number, a.outcome, a.reason) for a in history] == [
        (1, "failed", "bad params"), (2, "reset", failed.error_message)
    ]
    # And a later exhaustion counts only the attempts since the reset
    again = await store.claim_task("w9", ["claim-me"], LEASE_MS, T0 + 3)
    assert again is not None and again.attempts == 1
    final = await store.fail_task(task.id, again.fence, "still bad", False, T0, T0 + 4)
    assert final.error_message == "failed after 1 attempt: #1 on worker w9: still bad"


async def test_reset_refuses_a_task_not_in_error(store: Store, submit: Submit) -> None:
    task = await submit()

    with pytest.raises(exceptions.WrongState, match="is init"):
        await store.reset_task(task.id, T0)
    with pytest.raises(exceptions.TaskNotFound):
        await store.reset_task("no-such-task", T0)
    assert await store.get_task(task.id) == task


async def test_a_finished_task_runs_again_when_asked_its_result_dropped(
    store: Store, submit: Submit
) -> None:
    # Given a task finished on worker w1 with a result found wrong
    task = await claimed(store, submit)
    await store.finish_task(task.id, task.fence, 100, "ab" * 32, T0 + 1)
    with pytest.raises(exceptions.WrongState, match="submit --rerun"):
        await store.reset_task(task.id, T0 + 2)  # a reset leaves finished tasks be
    with pytest.raises(exceptions.WrongState, match="not the " + "cd" * 32):
        await store.rerun_task(task.id, "cd" * 32, "late", T0 + 2)  # another run's result

    # When it is asked to run again, naming that result
    again = await store.rerun_task(task.id, "ab" * 32, "100 bytes", T0 + 2)

    # Then it waits to run with a fresh budget and no result, still naming w1 (the
    # dispatcher gives it to another worker where it can), which the history says too
    assert again == await store.get_task(task.id)
    assert (again.state, again.attempts, again.result_size, again.result_sha256,
            again.worker_id, again.finished_at) == (TaskState.INIT, 0, 0, "", "w1", None)
    history = await store.get_attempts(task.id)
    assert [(a.outcome, a.worker_id, a.reason) for a in history] == [
        ("finished", "w1", ""), ("reset", "w1", "100 bytes")]
    assert "ab" * 32 not in await store.referenced_blobs()  # the cleaner may remove it
    assert await store.payload_needed(task.payload_sha256)
    # And a run handed back by a worker going away names w1 again
    run = await store.claim_task("w2", ["claim-me"], LEASE_MS, T0 + 3)
    assert run is not None
    released = await store.release_task(task.id, run.fence, "worker draining", T0 + 4)
    assert (released.state, released.attempts, released.worker_id) == (TaskState.INIT, 0, "w1")
    # Only a finished task runs again
    with pytest.raises(exceptions.WrongState, match="only a finished task runs again"):
        await store.rerun_task(task.id, "", "again", T0 + 5)


async def test_an_upload_in_progress_counts_from_its_latest_chunk(store: Store) -> None:
    # An upload longer than the orphan age must not be cleaned away under its sender
    await store.blob_begin("slow", "ab" * 32, 10, T0)
    await store.blob_put_chunk("slow", 0, b"x", now_ms=T0 + 60_000)
    [row] = await store.blob_list()
    assert row.created_at == T0 + 60_000 and not row.ready


async def test_cancel_an_init_task(store: Store, submit: Submit) -> None:
    task = await submit()

    cancelled = await store.cancel_task(task.id, "operator", T0 + 1)

    assert cancelled == await store.get_task(task.id)
    assert (cancelled.state, cancelled.error_message) == (TaskState.ERROR, "cancelled: operator")
    assert await store.claim_task("w1", ["c2-32g"], LEASE_MS, T0 + 2) is None


async def test_cancel_a_running_task_fences_its_late_result(
    store: Store, submit: Submit
) -> None:
    task = await claimed(store, submit)

    cancelled = await store.cancel_task(task.id, "wrong sector", T0 + 1)

    assert cancelled.state == TaskState.ERROR and cancelled.fence == task.fence + 1
    [attempt] = await store.get_attempts(task.id)
    assert (attempt.outcome, attempt.reason) == ("cancelled", "wrong sector")
    with pytest.raises(exceptions.StaleFence):
        await store.finish_task(task.id, task.fence, 1, "ab" * 32, T0 + 2)
    with pytest.raises(exceptions.WrongState, match="is error"):
        await store.cancel_task(task.id, "twice", T0 + 3)
    with pytest.raises(exceptions.TaskNotFound):
        await store.cancel_task("no-such-task", "x", T0 + 3)


# -- retention and payload references --------------------------------------------------------------


async def test_delete_terminal_before_removes_only_old_finished_and_error_tasks(
    store: Store, submit: Submit
) -> None:
    old_done = await claimed(store, submit)
    await store.finish_task(old_done.id, old_done.fence, 1, "ab" * 32, T0 + 10)
    old_error = await submit()
    await store.cancel_task(old_error.id, "x", T0 + 10)
    new_error = await submit()
    await store.cancel_task(new_error.id, "x", T0 + 100)
    waiting = await submit()

    assert await store.delete_terminal_before(T0 + 50, limit=1) == 1
    assert await store.delete_terminal_before(T0 + 50) == 1
    assert await store.delete_terminal_before(T0 + 50) == 0

    left = {t.id for t in await store.list_tasks(TaskFilter(), 100)}
    assert left == {new_error.id, waiting.id}
    assert await store.get_attempts(old_done.id) == []


async def test_referenced_blobs_and_payload_needed(store: Store, submit: Submit) -> None:
    waiting = await submit()
    done = await claimed(store, submit)
    await store.finish_task(done.id, done.fence, 1, "ab" * 32, T0 + 1)
    failed = await submit()
    await store.cancel_task(failed.id, "x", T0 + 1)

    assert await store.referenced_blobs() == {
        waiting.payload_sha256, failed.payload_sha256, "ab" * 32
    }
    assert await store.payload_needed(waiting.payload_sha256)
    assert await store.payload_needed(failed.payload_sha256)
    assert not await store.payload_needed(done.payload_sha256)
    assert not await store.payload_needed("00" * 32)


# -- blobs -----------------------------------------------------------------------------------------


async def put_blob(store: Store, data: bytes, chunk_bytes: int, now_ms: int = T0) -> str:
    upload_id = uuid.uuid4().hex
    await store.blob_begin(upload_id, hashlib.sha256(data).hexdigest(), len(data), now_ms)
    for seq, start in enumerate(range(0, len(data), chunk_bytes)):
        await store.blob_put_chunk(upload_id, seq, data[start : start + chunk_bytes])
    return upload_id


async def test_blob_upload_is_invisible_until_committed(store: Store) -> None:
    data = bytes(range(256)) * 40
    sha256 = hashlib.sha256(data).hexdigest()

    upload_id = await put_blob(store, data, 4096)
    assert await store.blob_find(sha256) is None
    [pending] = await store.blob_list()
    assert (pending.upload_id, pending.ready, pending.size) == (upload_id, False, len(data))

    await store.blob_commit(upload_id)

    row = await store.blob_find(sha256)
    assert row is not None and (row.upload_id, row.ready, row.created_at) == (upload_id, True, T0)
    chunks = [await store.blob_read_chunk(upload_id, seq) for seq in range(3)]
    assert b"".join(c for c in chunks if c is not None) == data
    assert [len(c or b"") for c in chunks] == [4096, 4096, len(data) - 8192]
    assert await store.blob_read_chunk(upload_id, 3) is None


async def test_a_duplicate_commit_keeps_exactly_one_upload(store: Store) -> None:
    data = b"the same payload" * 100
    first = await put_blob(store, data, 1000)
    second = await put_blob(store, data, 1000, now_ms=T0 + 1)

    await store.blob_commit(first)
    await store.blob_commit(second)

    [row] = await store.blob_list()
    assert row.upload_id == first and row.ready
    assert await store.blob_read_chunk(second, 0) is None


async def test_blob_delete_removes_row_and_chunks(store: Store) -> None:
    data = b"x" * 50_000
    upload_id = await put_blob(store, data, 1000)  # 50 chunks: several delete transactions
    await store.blob_commit(upload_id)

    await store.blob_delete(upload_id)

    assert await store.blob_list() == []
    assert await store.blob_find(hashlib.sha256(data).hexdigest()) is None
    assert await store.blob_read_chunk(upload_id, 0) is None
    with pytest.raises(exceptions.PayloadNotFound):
        await store.blob_put_chunk(upload_id, 0, b"late chunk")


async def test_blob_list_shows_ready_and_unready_uploads(store: Store) -> None:
    ready = await put_blob(store, b"a" * 10, 10)
    await store.blob_commit(ready)
    pending = await put_blob(store, b"b" * 10, 10, now_ms=T0 + 1)

    rows = await store.blob_list()

    assert [(r.upload_id, r.ready) for r in rows] == [(ready, True), (pending, False)]


# -- versions --------------------------------------------------------------------------------------


async def test_every_change_bumps_the_version(store: Store, submit: Submit) -> None:
    task = await submit(task_type="v")
    versions = [task.version]

    async def step(change: Awaitable[Any]) -> int:
        """Run one change; the task's fence after it."""
        await change
        now = await store.get_task(task.id)
        versions.append(now.version)
        return now.fence

    fence = await step(store.claim_task("w1", ["v"], LEASE_MS, T0))
    await step(store.renew_lease(task.id, fence, LEASE_MS, T0 + 1))
    await step(store.set_progress(task.id, fence, "fft", 0.2))
    await step(store.fail_task(task.id, fence, "oom", True, T0, T0 + 2))
    fence = await step(store.claim_task("w1", ["v"], LEASE_MS, T0 + 3))
    await step(store.release_task(task.id, fence, "bye", T0 + 4))
    await step(store.claim_task("w1", ["v"], LEASE_MS, T0 + 5))
    await step(store.requeue_expired(T0 + 5 + LEASE_MS, {}))
    await step(store.cancel_task(task.id, "stop", T0 + 6))
    await step(store.reset_task(task.id, T0 + 7))
    fence = await step(store.claim_task("w1", ["v"], LEASE_MS, T0 + 8))
    await step(store.finish_task(task.id, fence, 1, "ab" * 32, T0 + 9))

    assert versions == list(range(1, 14))


async def test_extend_leases_gives_running_tasks_time_to_come_back(
    store: Store, submit: Submit
) -> None:
    # Given a running task whose lease ran out while the broker was down
    task = await claimed(store, submit)
    restart = T0 + LEASE_MS + 5_000

    # When the broker starts again
    assert await store.extend_leases(restart + LEASE_MS, LEASE_MS) == 1

    # Then the housekeeper leaves it to its worker, who can still renew with its fence
    assert await store.requeue_expired(restart, {}) == []
    renewed = await store.renew_lease(task.id, task.fence, LEASE_MS, restart + 1)
    assert renewed.state == TaskState.RUNNING and renewed.attempts == 1
    assert await store.extend_leases(restart, LEASE_MS) == 0  # never shortens a lease


async def test_extend_leases_passes_over_the_tasks_of_workers_known_gone(
    store: Store, submit: Submit
) -> None:
    # Given tasks running on two workers, the first of which died (its broker saw it go)
    gone = await claimed(store, submit)
    await submit(task_type="other")
    kept = await store.claim_task("w2", ["other"], LEASE_MS, T0)
    assert kept is not None
    # When a broker starts, the other's lease is extended, the dead one's is not
    later = T0 + 2 * LEASE_MS
    assert await store.extend_leases(later, LEASE_MS, {"w1"}) == 1
    assert (await store.get_task(gone.id)).lease_expires_at == T0 + LEASE_MS
    assert (await store.get_task(kept.id)).lease_expires_at == later


async def test_extend_leases_gives_a_worker_one_grace_until_it_is_heard_from_again(
    store: Store, submit: Submit
) -> None:
    # Given a task of a worker last heard from at T0, when it was claimed
    live_ms = 60_000
    assert await store.register_worker(worker_record("aaaa", T0), live_ms) is None
    await submit(task_type="graced")
    task = await store.claim_task("gpu0-abc", ["graced"], LEASE_MS, T0)
    assert task is not None
    # When brokers start again and again, the worker silent all along (it died as its broker
    # stopped), its task gets one more lease, not one at each start
    first = T0 + 2 * LEASE_MS
    assert await store.extend_leases(first + LEASE_MS, LEASE_MS) == 1
    assert await store.extend_leases(first + 1000 + LEASE_MS, LEASE_MS) == 0
    assert (await store.get_task(task.id)).lease_expires_at == first + LEASE_MS
    # Once it is heard from again, a later start gives it one again
    await store.touch_worker("gpu0-abc", first + 2000)
    assert await store.extend_leases(first + 3000 + LEASE_MS, LEASE_MS) == 1


async def test_resources_are_kept_and_count_as_referenced(store: Store) -> None:
    from broker.models import Resource

    key = Resource(sha256="ab" * 32, name="circuit.zkey", size=1234, created_at=T0)
    assert await store.get_resource(key.sha256) is None
    assert await store.add_resource(key) == key
    # Uploading again keeps the first record
    again = Resource(sha256=key.sha256, name="renamed.zkey", size=1234, created_at=T0 + 1)
    assert await store.add_resource(again) == key
    assert await store.get_resource(key.sha256) == key
    assert key.sha256 in await store.referenced_blobs()
    assert await store.payload_needed(key.sha256)


async def test_reset_tasks_is_all_or_nothing(store: Store, submit: Submit) -> None:
    # Given one task in error and one still waiting
    task = await claimed(store, submit)
    await store.fail_task(task.id, task.fence, "bad params", False, T0, T0 + 1)
    waiting = await submit(comment="waiting")

    # When both are reset together, the waiting one refuses and neither changes
    with pytest.raises(exceptions.WrongState, match="is init"):
        await store.reset_tasks([task.id, waiting.id], T0 + 2)
    assert (await store.get_task(task.id)).state == TaskState.ERROR
    assert [a.outcome for a in await store.get_attempts(task.id)] == ["failed"]

    # And alone, the task in error is reset
    [reset] = await store.reset_tasks([task.id], T0 + 3)
    assert reset.state == TaskState.INIT


def worker_record(instance: str, seen_at: int) -> WorkerRecord:
    return WorkerRecord(
        worker_id="gpu0-abc", hostname=f"host-{instance}", addresses=("10.0.0.7",),
        version="1", task_types=("c2",), max_tasks=1, gpus=(), registered_at=seen_at,
        last_seen_at=seen_at, instance=instance, session=f"s-{instance}-{seen_at}",
    )


async def test_a_worker_id_is_held_by_one_live_process_at_a_time(store: Store) -> None:
    live_ms = 60_000
    first = worker_record("aaaa", T0)
    assert await store.register_worker(first, live_ms) is None
    # Another process with the id is refused while the first one's record is live
    held = await store.register_worker(worker_record("bbbb", T0 + 1000), live_ms)
    assert held is not None and held.hostname == "host-aaaa"
    # The same process registering again (a reconnect) is not
    again = worker_record("aaaa", T0 + 2000)
    assert await store.register_worker(again, live_ms) is None
    # A late update of a registration that a newer one replaced changes nothing, nor does the
    # end of its stream
    assert not await store.update_worker(dataclasses.replace(first, resident_keys=("k",)))
    assert await store.update_worker(dataclasses.replace(again, resident_keys=("k2",)))
    await store.worker_disconnected(first.worker_id, first.session, T0 + 2500)
    assert await store.register_worker(worker_record("bbbb", T0 + 3000), live_ms) is not None
    # The end of the current one frees the id; and it keeps its first registration time
    await store.worker_disconnected(again.worker_id, again.session, T0 + 3500)
    assert await store.register_worker(worker_record("bbbb", T0 + 4000), live_ms) is None
    [kept] = await store.list_workers()
    assert kept.instance == "bbbb" and kept.registered_at == T0
    assert kept.resident_keys == ()  # the new registration's, not the replaced one's "k2"
    # A process silent for longer than live_ms (its host hung) holds the id no more
    assert await store.register_worker(worker_record("cccc", T0 + 4000 + live_ms), live_ms) is None


async def test_a_stream_the_broker_ended_frees_the_id_without_calling_the_worker_gone(
    store: Store,
) -> None:
    live_ms = 60_000
    first = worker_record("aaaa", T0)
    assert await store.register_worker(first, live_ms) is None
    # A broker that stops (or sends the worker to another broker) ends its stream
    await store.worker_disconnected(first.worker_id, first.session, T0 + 100, handed_off=True)
    [handed] = await store.list_workers()
    assert handed.instance == "" and handed.disconnected_at == 0
    assert handed.handed_off_at == T0 + 100 and await store.get_worker("gpu0-abc") == handed
    assert await store.get_worker("nobody") is None
    assert await store.register_worker(worker_record("bbbb", T0 + 200), live_ms) is None
    # while a stream the worker ended records when it went
    second = worker_record("bbbb", T0 + 200)
    await store.worker_disconnected(second.worker_id, second.session, T0 + 300)
    [gone] = await store.list_workers()
    assert gone.instance == "" and gone.disconnected_at == T0 + 300


async def test_a_drain_outlives_reconnects_and_goes_with_its_worker(store: Store) -> None:
    live_ms = 60_000
    worker = worker_record("aaaa", T0)
    # An unknown worker cannot be drained
    assert not await store.drain_worker(Drain("gpu0-abc", "maintenance", T0))
    assert await store.register_worker(worker, live_ms) is None
    assert await store.drain_worker(Drain("gpu0-abc", "maintenance", T0 + 1))
    # Drained again: the first time stays, the reason is the new one (when one is given)
    assert await store.drain_worker(Drain("gpu0-abc", "new fans", T0 + 2))
    assert await store.drain_worker(Drain("gpu0-abc", "", T0 + 2))
    assert await store.list_drains() == [Drain("gpu0-abc", "new fans", T0 + 1)]
    # A reconnect (a new registration) keeps the drain
    assert await store.register_worker(worker_record("aaaa", T0 + 3), live_ms) is None
    assert [d.worker_id for d in await store.list_drains()] == ["gpu0-abc"]
    # Resumed once; resuming again says it was not drained
    assert await store.resume_worker("gpu0-abc")
    assert not await store.resume_worker("gpu0-abc")
    assert await store.list_drains() == []
    # A removed worker leaves no drain behind
    assert await store.drain_worker(Drain("gpu0-abc", "", T0 + 4))
    assert await store.remove_worker("gpu0-abc")
    assert await store.list_drains() == []
    # A drained worker away longer than the retention is not forgotten (a card sent for
    # repair comes back drained); once resumed, it is
    assert await store.register_worker(worker_record("bbbb", T0 + 5), live_ms) is None
    assert await store.drain_worker(Drain("gpu0-abc", "repair", T0 + 6))
    assert await store.forget_workers_seen_before(T0 + 10) == 0
    assert [w.worker_id for w in await store.list_workers()] == ["gpu0-abc"]
    assert await store.resume_worker("gpu0-abc")
    assert await store.forget_workers_seen_before(T0 + 10) == 1


async def test_a_resource_is_removed_only_when_no_unfinished_task_names_it(
    store: Store, submit: Submit
) -> None:
    sha = hashlib.sha256(b"a proving key").hexdigest()
    await store.add_resource(Resource(sha256=sha, name="k.zkey", size=13, created_at=T0))
    assert [r.sha256 for r in await store.list_resources()] == [sha]
    task = await submit(comment=f"zkey={sha} sector 7")
    assert await store.delete_resource(sha) == task.id
    # The worker reads the key's name in any case: so does this (MariaDB compares case)
    upper = await submit(comment=f"ZKEY={sha.upper()}")
    assert await store.delete_resource(sha) in (task.id, upper.id)
    await store.cancel_task(upper.id, "test", T0)
    assert [r.sha256 for r in await store.list_resources()] == [sha]
    await store.cancel_task(task.id, "test", T0)
    assert await store.delete_resource(sha) is None
    assert await store.list_resources() == [] and await store.get_resource(sha) is None


async def test_two_first_registrations_of_one_id_at_once_let_one_in(
    store_dsn: str, store: Store
) -> None:
    # Two brokers (two stores on one database) register a new id for two processes at once
    other = open_store(store_dsn)
    await other.open()
    try:
        for n in range(10):
            records = [dataclasses.replace(worker_record(i, T0), worker_id=f"race-{n}")
                       for i in ("aaaa", "bbbb")]
            refusals = await asyncio.gather(store.register_worker(records[0], 60_000),
                                            other.register_worker(records[1], 60_000))
            assert sorted(r is None for r in refusals) == [False, True], n
    finally:
        await other.close()
