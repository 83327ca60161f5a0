"""An assignment pushed while the worker's slot still reports its last task's outcome: it waits
for that slot (the broker already has the outcome), and is handed back if the slot stays taken."""

from __future__ import annotations

import asyncio
import pathlib
from collections.abc import AsyncIterator

import pytest

from protos.gpuproxy.v1 import tasks_pb2, workers_pb2
from worker import daemon
from worker.config import WorkerConfig
from worker.daemon import Identity, Running, Worker
from worker.executors.noop import NoopExecutor
from worker.payloads import PayloadFetcher
from worker.remote import Remote


class Outbox:
    """The Work stream as `Worker._post` uses it."""

    def __init__(self) -> None:
        self.sent: list[workers_pb2.WorkerMessage] = []

    def post(self, message: workers_pb2.WorkerMessage) -> None:
        self.sent.append(message)


@pytest.fixture
async def worker(tmp_path: pathlib.Path) -> AsyncIterator[Worker]:
    config = WorkerConfig(task_types=("noop",), nvidia_smi="")
    remote = Remote("127.0.0.1:1")
    w = Worker(config=config, remote=remote,
               identity=Identity(worker_id="w", hostname="h", addresses=(), version="t", gpus=()),
               payloads=PayloadFetcher(tmp_path, remote), executors={})
    w.stream = Outbox()  # type: ignore[assignment]
    yield w
    await remote.close()


def assignment(task_id: str) -> workers_pb2.Assignment:
    return workers_pb2.Assignment(task=tasks_pb2.Task(id=task_id, task_type="noop"), fence=1)


async def test_an_assignment_waits_for_a_slot_that_reports_and_is_handed_back_if_it_stays(
    worker: Worker, monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(daemon, "SLOT_WAIT_S", 0.2)
    outbox: Outbox = worker.stream  # type: ignore[assignment]
    # Given the one slot taken by a task that is reporting its result
    worker.tasks["a"] = Running(task=tasks_pb2.Task(id="a"), fence=1, phase="reporting")
    # When the broker pushes the next task meanwhile, it is neither taken nor handed back yet
    worker._accept(assignment("b"))
    assert list(worker.waiting) == ["b"] and outbox.sent == []
    # Then, the slot still taken after SLOT_WAIT_S (the report hangs), it goes back, saying why
    await asyncio.sleep(0.4)
    assert worker.waiting == {}
    [message] = outbox.sent
    assert message.release.task.task_id == "b"
    assert message.release.reason == "the worker already runs 1 of 1 tasks"


async def test_a_slot_running_its_task_hands_a_second_assignment_back_at_once(
    worker: Worker,
) -> None:
    outbox: Outbox = worker.stream  # type: ignore[assignment]
    worker.tasks["a"] = Running(task=tasks_pb2.Task(id="a"), fence=1, phase="proving")
    worker._accept(assignment("b"))
    assert worker.waiting == {} and [m.release.task.task_id for m in outbox.sent] == ["b"]


async def test_a_stopping_worker_hands_waiting_assignments_back(worker: Worker) -> None:
    outbox: Outbox = worker.stream  # type: ignore[assignment]
    worker.tasks["a"] = Running(task=tasks_pb2.Task(id="a"), fence=1, phase="reporting")
    worker._accept(assignment("b"))
    worker.releasing = True  # as run() does on its way out, before settling what waits
    for task_id in list(worker.waiting):
        worker._settle(task_id)
    assert [m.release.reason for m in outbox.sent] == ["the worker is stopping"]


async def test_a_waiting_assignment_revoked_meanwhile_is_dropped(worker: Worker) -> None:
    outbox: Outbox = worker.stream  # type: ignore[assignment]
    worker.tasks["a"] = Running(task=tasks_pb2.Task(id="a"), fence=1, phase="reporting")
    worker._accept(assignment("b"))
    # When the broker takes b back (cancelled) before the slot is free, b never starts
    worker._revoke(workers_pb2.Revoke(task_id="b", fence=1, reason="task is error: cancelled"))
    del worker.tasks["a"]
    worker._settle("b")
    assert worker.waiting == {} and "b" not in worker.tasks and outbox.sent == []


async def test_with_two_slots_reporting_each_waiting_assignment_takes_the_slot_that_frees(
    tmp_path: pathlib.Path,
) -> None:
    config = WorkerConfig(task_types=("noop",), nvidia_smi="", max_tasks=2)
    remote = Remote("127.0.0.1:1")
    w = Worker(config=config, remote=remote,
               identity=Identity(worker_id="w", hostname="h", addresses=(), version="t", gpus=()),
               payloads=PayloadFetcher(tmp_path, remote),
               executors={"noop": NoopExecutor(config)})
    outbox = Outbox()
    w.stream = outbox  # type: ignore[assignment]
    started: list[str] = []

    async def run_task(running: Running) -> None:
        started.append(running.task.id)

    w._run_task = run_task  # type: ignore[method-assign]
    try:
        # Given both slots reporting their tasks' outcomes, and two tasks pushed meanwhile
        for name in ("a1", "a2"):
            w.tasks[name] = Running(task=tasks_pb2.Task(id=name), fence=1, phase="reporting")
        w._accept(assignment("b1"))
        w._accept(assignment("b2"))
        # When the worker reconnects meanwhile, it tells the broker it holds them
        assert {h.task_id for h in w._register_message().held} == {"a1", "a2", "b1", "b2"}
        # When a1's slot frees, one takes it and the other waits on for a2's
        del w.tasks["a1"]
        for task_id in list(w.waiting):
            w._settle(task_id)
        await asyncio.sleep(0)
        assert started == ["b1"] and list(w.waiting) == ["b2"] and outbox.sent == []
        # and takes a2's once it frees too: nothing handed back
        del w.tasks["a2"]
        w._settle("b2")
        await asyncio.sleep(0)
        assert started == ["b1", "b2"] and w.waiting == {} and outbox.sent == []
    finally:
        await remote.close()
