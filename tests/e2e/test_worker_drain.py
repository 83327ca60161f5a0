"""An operator drains a worker for maintenance (`gpuproxy workers drain`): the proof it runs
goes on, it takes no new task, through a reconnect and a broker restart too, until resumed."""

from __future__ import annotations

import asyncio
import json
import pathlib
import signal
from typing import Any

from broker.client import BrokerClient
from protos.gpuproxy.v1 import tasks_pb2
from tests.e2e.conftest import BrokerFactory, WorkerFactory
from tests.e2e.test_worker_e2e import c2_input, final, submit, until_proving

Run = Any  # the gpuproxy fixture: run(*args) -> CompletedProcess


async def test_a_drained_worker_finishes_its_proof_and_takes_no_new_task_until_resumed(
    sqlite_dsn: str, broker_factory: BrokerFactory, worker_factory: WorkerFactory,
    gpuproxy: Run, tmp_path: pathlib.Path,
) -> None:
    payloads = tmp_path / "payloads"
    broker = broker_factory(sqlite_dsn, "fs", payloads, extra=["--lease-s", "6"])
    worker = worker_factory(broker.url, env={"FAKE_C2_SLEEP_S": "1.5"})
    worker.wait_for("registered")
    async with BrokerClient(broker.url) as client:
        [info] = await client.list_workers()
    # Given a worker proving a task
    first = await submit(broker.url, tmp_path, json.dumps(c2_input(1)).encode())
    await until_proving(broker.url, first)
    # When the operator drains it
    drained = gpuproxy("workers", "drain", info.worker_id, "--url", broker.url,
                       "--reason", "new fans")
    assert drained.returncode == 0, drained.stderr
    assert drained.stdout.startswith(f"{info.worker_id} drained: it takes no new task")
    listed = gpuproxy("workers", "list", "--url", broker.url)
    assert " draining " in listed.stdout.splitlines()[1]  # its row
    assert f"{info.worker_id} drained since " in listed.stdout and ": new fans" in listed.stdout
    # Then the proof it runs finishes, and a task submitted meanwhile waits
    second = await submit(broker.url, tmp_path, json.dumps(c2_input(2)).encode())
    assert (await final(broker.url, first)).state == tasks_pb2.TASK_STATE_FINISHED
    idle = gpuproxy("workers", "list", "--url", broker.url)
    assert " drained " in idle.stdout.splitlines()[1]
    # ... through a restart of the broker and a reconnect of the worker, too
    broker.stop(signal.SIGKILL)
    broker = broker_factory(sqlite_dsn, "fs", payloads, extra=["--lease-s", "6"],
                            port=int(broker.url.rsplit(":", 1)[1]))
    worker.wait_for("reconnected to the broker")
    await asyncio.sleep(1.5)  # a few dispatch rounds
    async with BrokerClient(broker.url) as client:
        assert (await client.get_task(second)).state == tasks_pb2.TASK_STATE_INIT
    # When it is resumed, it takes the waiting task
    resumed = gpuproxy("workers", "resume", info.worker_id, "--url", broker.url)
    assert resumed.stdout.strip() == f"{info.worker_id} takes tasks again"
    assert (await final(broker.url, second)).state == tasks_pb2.TASK_STATE_FINISHED
    again = gpuproxy("workers", "resume", info.worker_id, "--url", broker.url)
    assert again.stdout.strip() == f"{info.worker_id} was not drained: nothing changed"
    # An unknown worker is named as such
    unknown = gpuproxy("workers", "drain", "no-such-worker", "--url", broker.url)
    assert unknown.returncode == 1
    assert "No worker no-such-worker: check the id with `gpuproxy workers list`" in unknown.stderr
