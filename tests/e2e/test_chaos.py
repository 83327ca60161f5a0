"""A queue of C2 tasks through a broker (on SQLite, then MariaDB) and two workers while workers
and the broker are killed outright (kill -9) and started again, over and over: every task must
end finished exactly once, with the right proof, and nothing may be left running. (A run here:
14 worker kills and 3 broker kills over 30 tasks, 45 attempts in all, 15 s.)"""

from __future__ import annotations

import asyncio
import json
import pathlib
import random
import signal
import time

from broker.client import BrokerClient
from protos.gpuproxy.v1 import tasks_pb2
from tests.e2e.conftest import BrokerFactory, WorkerFactory, WorkerProcess, _alive, _pids, free_port
from tests.e2e.test_worker_e2e import c2_input
from tests.fixtures import fake_c2

TASKS = 30
LEASE_S = 1.5
#: Room for bad luck: a requeued task goes to the next free worker, often the one just started
#: again, and the kills come faster than a task takes (seen once: one task killed 6 times in a
#: row, its attempts spent). The claim here is that nothing is lost or done twice.
MAX_ATTEMPTS = 20


async def test_kill_9_of_workers_and_broker_loses_and_doubles_no_task(
    store_dsn: str, broker_factory: BrokerFactory, worker_factory: WorkerFactory,
    tmp_path: pathlib.Path,
) -> None:
    rng = random.Random(163)
    port = free_port()

    def start_broker():  # type: ignore[no-untyped-def]
        return broker_factory(store_dsn, "fs", port=port, extra=[
            "--lease-s", str(LEASE_S), "--retry-backoff-s", "0.1",
            "--max-attempts", str(MAX_ATTEMPTS)])

    broker = await asyncio.to_thread(start_broker)
    url = broker.url

    def start_worker(gpu: int) -> WorkerProcess:
        return worker_factory(url, gpu=gpu, env={"FAKE_C2_SLEEP_S": "0.5"})

    workers = {gpu: start_worker(gpu) for gpu in (0, 1)}
    inputs = {}
    async with BrokerClient(url) as client:
        for sector in range(TASKS):
            path = tmp_path / f"c1-{sector}.json"
            path.write_text(json.dumps(c2_input(sector_id=1000 + sector)))
            task = await client.submit_file(path, task_type="c2", miner="f01000")
            inputs[task.id] = c2_input(sector_id=1000 + sector)

    # While tasks remain: every 0.8 s a worker is killed (and started again); every fourth
    # time the broker too
    kills = {"worker": 0, "broker": 0}
    deadline = time.monotonic() + 120
    second = 0
    while time.monotonic() < deadline:
        await asyncio.sleep(0.8)
        second += 1
        if await _all_ended(url, inputs):
            break
        gpu = rng.choice([0, 1])
        workers[gpu].signal(signal.SIGKILL)
        await asyncio.to_thread(workers[gpu].wait)
        workers[gpu] = start_worker(gpu)
        kills["worker"] += 1
        if second % 4 == 0:
            broker.stop(signal.SIGKILL)
            broker = await asyncio.to_thread(start_broker)
            kills["broker"] += 1
    assert kills["worker"] >= 3 and kills["broker"] >= 1, kills

    # Then every task finished once, with its own proof, within its attempts
    spent = 0
    async with BrokerClient(url) as client:
        for task_id, task_input in inputs.items():
            task = await client.get_task(task_id)
            assert task.state == tasks_pb2.TASK_STATE_FINISHED, (task.id, task.error_message)
            assert 1 <= task.attempts <= MAX_ATTEMPTS
            spent += len(task.history)
            assert [a.outcome for a in task.history].count("finished") == 1
            out = tmp_path / f"proof-{task_id}"
            await client.download_result(task_id, out)
            assert out.read_bytes() == fake_c2.expected_proof(task_input)
    assert spent > TASKS  # the kills did cut attempts short
    # And no processor outlives the workers once they stop
    for w in workers.values():
        w.signal(signal.SIGKILL)
        await asyncio.to_thread(w.wait)
    await asyncio.sleep(0.5)
    assert not [pid for pid in _pids(tmp_path) if _alive(pid)]


async def _all_ended(url: str, inputs: dict[str, object]) -> bool:
    try:
        async with BrokerClient(url) as client:
            tasks = [await client.get_task(task_id) for task_id in inputs]
    except Exception:  # the broker is restarting
        return False
    return all(t.state in (tasks_pb2.TASK_STATE_FINISHED, tasks_pb2.TASK_STATE_ERROR)
               for t in tasks)
