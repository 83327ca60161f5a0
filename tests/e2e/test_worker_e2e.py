"""Real `gpuproxy` brokers and `gpuproxy-worker` processes running the stand-in C2 processor
(tests/fixtures/fake_c2.py): proofs, failures, revokes, signals, a broker restart, GPU locks and
the supervisor."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import pathlib
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from typing import Any

import pytest

from broker.client import BrokerClient
from protos.gpuproxy.v1 import tasks_pb2
from tests.e2e import test_worker_protocol as protocol
from tests.e2e.conftest import (
    BIN,
    LEASE_S,
    SMI_OUTPUT,
    BrokerFactory,
    BrokerProcess,
    WorkerFactory,
    _alive,
    _pids,
    fake_nvidia_smi,
)
from tests.fixtures import fake_c2


@pytest.fixture
def broker(sqlite_dsn: str, broker_factory: BrokerFactory) -> BrokerProcess:
    return broker_factory(sqlite_dsn, "fs", extra=[
        "--lease-s", str(LEASE_S), "--retry-backoff-s", "0.1", "--max-attempts", "2",
    ])


def c2_input(sector_id: int = 163) -> dict[str, Any]:
    c1out = {"registered_proof": "StackedDrg2KiBV1_1", "vanilla_proofs": {"v": [[1]]}}
    return {"c1out": c1out, "prover_id": [1] + [0] * 31, "sector_id": sector_id,
            "miner_id": 1000}


async def submit(url: str, tmp_path: pathlib.Path, data: bytes) -> str:
    path = tmp_path / f"payload-{time.monotonic_ns()}"
    path.write_bytes(data)
    async with BrokerClient(url) as client:
        return (await client.submit_file(path, task_type="c2", miner="f01000")).id


async def final(url: str, task_id: str, timeout_s: float = 30.0) -> tasks_pb2.Task:
    async with BrokerClient(url) as client:
        async with asyncio.timeout(timeout_s):
            return [t async for t in client.watch(task_id)][-1]


async def until_proving(url: str, task_id: str, timeout_s: float = 15.0) -> tasks_pb2.Task:
    async with BrokerClient(url) as client, asyncio.timeout(timeout_s):
        async for task in client.watch(task_id):
            if task.progress.phase == "proving":
                return task
    raise AssertionError(f"task {task_id} ended before it was proving")


async def handed_back(url: str, task_id: str, timeout_s: float = 5.0) -> tasks_pb2.Task:
    """The task once the broker has processed the worker's ReleaseTask (init again)."""
    async with BrokerClient(url) as client, asyncio.timeout(timeout_s):
        while (task := await client.get_task(task_id)).state != tasks_pb2.TASK_STATE_INIT:
            await asyncio.sleep(0.05)
    return task


async def test_worker_proves_a_submitted_task(
    broker: BrokerProcess, worker_factory: WorkerFactory, tmp_path: pathlib.Path
) -> None:
    # Given a worker on GPU 1
    worker = worker_factory(broker.url, gpu=1)
    worker.wait_for("registered")
    # When a C2 input is submitted
    task_id = await submit(broker.url, tmp_path, json.dumps(c2_input()).encode())
    task = await final(broker.url, task_id)
    # Then the worker's proof is the task's result
    assert task.state == tasks_pb2.TASK_STATE_FINISHED and task.attempts == 1
    async with BrokerClient(broker.url) as client:
        out = tmp_path / "proof"
        await client.download_result(task_id, out)
        [info] = await client.list_workers()
    assert out.read_bytes() == fake_c2.expected_proof(c2_input())
    assert [(g.index, g.uuid) for g in info.gpus] == [(1, "GPU-e2e-1")] and info.online
    assert info.task_types == ["c2"] and info.max_tasks == 1
    assert not list((tmp_path / "workers" / "gpu1" / "tmp").iterdir())  # no temp files left
    assert "ready (CUDA_VISIBLE_DEVICES=1)" in worker.logs()  # the processor sees GPU 1 only
    # A finished task does not read as still proving
    shown = subprocess.run([str(BIN / "gpuproxy"), "tasks", "show", task_id, "--url", broker.url],
                           capture_output=True, text=True, check=True).stdout
    assert task.progress.phase == "proving" and "\nprogress:    -\n" in shown


async def test_heartbeats_keep_a_task_that_outlasts_its_lease(
    sqlite_dsn: str, broker_factory: BrokerFactory, worker_factory: WorkerFactory,
    tmp_path: pathlib.Path,
) -> None:
    broker = broker_factory(sqlite_dsn, "fs", extra=["--lease-s", "1.5"])
    worker = worker_factory(broker.url, env={"FAKE_C2_SLEEP_S": "4"})
    worker.wait_for("registered")
    task_id = await submit(broker.url, tmp_path, json.dumps(c2_input()).encode())
    task = await final(broker.url, task_id)
    assert task.state == tasks_pb2.TASK_STATE_FINISHED and task.attempts == 1


async def test_payload_is_read_from_the_shared_folder(
    broker: BrokerProcess, worker_factory: WorkerFactory, tmp_path: pathlib.Path
) -> None:
    worker = worker_factory(broker.url, extra=[
        "--resource-type", "fs", "--fs-resource-path", str(tmp_path / "payloads"),
    ])
    worker.wait_for("registered")
    task_id = await submit(broker.url, tmp_path, json.dumps(c2_input(7)).encode())
    assert (await final(broker.url, task_id)).state == tasks_pb2.TASK_STATE_FINISHED
    assert "payload read in place from the shared folder" in worker.logs()


async def test_malformed_payload_fails_once_for_good(
    broker: BrokerProcess, worker_factory: WorkerFactory, tmp_path: pathlib.Path
) -> None:
    worker = worker_factory(broker.url)
    worker.wait_for("registered")
    task_id = await submit(broker.url, tmp_path, b'{"c1out": {}, "sector_id": 1}')
    task = await final(broker.url, task_id)
    assert task.state == tasks_pb2.TASK_STATE_ERROR and task.attempts == 1
    assert "Malformed c2 payload: missing prover_id, miner_id" in task.error_message
    assert _pids(tmp_path) and all(_alive(p) for p in _pids(tmp_path))  # never used


async def test_crashed_processor_fails_the_attempt_and_the_retry_succeeds(
    broker: BrokerProcess, worker_factory: WorkerFactory, tmp_path: pathlib.Path
) -> None:
    worker = worker_factory(broker.url, env={
        "FAKE_C2_CRASH": "1", "FAKE_C2_CRASH_MARKER": str(tmp_path / "crashed"),
    })
    worker.wait_for("registered")
    task_id = await submit(broker.url, tmp_path, json.dumps(c2_input()).encode())
    task = await final(broker.url, task_id)
    assert task.state == tasks_pb2.TASK_STATE_FINISHED and task.attempts == 2
    async with BrokerClient(broker.url) as client:
        history = (await client.get_task(task_id)).history
    assert [a.outcome for a in history] == ["failed", "finished"]
    assert "exited with status 3" in history[0].reason
    assert len(_pids(tmp_path)) == 2  # restarted once


async def test_cancel_stops_the_work_on_the_worker(
    broker: BrokerProcess, worker_factory: WorkerFactory, tmp_path: pathlib.Path
) -> None:
    worker = worker_factory(broker.url, env={"FAKE_C2_SLEEP_S": "60"})
    worker.wait_for("registered")
    task_id = await submit(broker.url, tmp_path, json.dumps(c2_input()).encode())
    await until_proving(broker.url, task_id)
    [pid] = _pids(tmp_path)
    async with BrokerClient(broker.url) as client:
        await client.cancel(task_id, "wrong sector")
    worker.wait_for("task revoked by the broker")
    for _ in range(100):
        if not _alive(pid):
            break
        await asyncio.sleep(0.05)
    assert not _alive(pid)
    assert "task failed" not in worker.logs()  # a revoked task is not reported


async def test_sigterm_finishes_the_task_within_the_grace_period(
    broker: BrokerProcess, worker_factory: WorkerFactory, tmp_path: pathlib.Path
) -> None:
    worker = worker_factory(broker.url, extra=["--grace-s", "30"], env={"FAKE_C2_SLEEP_S": "2"})
    worker.wait_for("registered")
    task_id = await submit(broker.url, tmp_path, json.dumps(c2_input()).encode())
    await until_proving(broker.url, task_id)
    worker.signal(signal.SIGTERM)
    assert await asyncio.to_thread(worker.wait) == 0
    assert (await final(broker.url, task_id)).state == tasks_pb2.TASK_STATE_FINISHED


async def test_sigterm_after_the_grace_period_hands_the_task_back_at_once(
    broker: BrokerProcess, worker_factory: WorkerFactory, tmp_path: pathlib.Path
) -> None:
    worker = worker_factory(broker.url, extra=["--grace-s", "0.5"],
                            env={"FAKE_C2_SLEEP_S": "60"})
    worker.wait_for("registered")
    task_id = await submit(broker.url, tmp_path, json.dumps(c2_input()).encode())
    await until_proving(broker.url, task_id)
    t0 = time.monotonic()
    worker.signal(signal.SIGTERM)
    assert await asyncio.to_thread(worker.wait) == 0
    task = await handed_back(broker.url, task_id)
    assert time.monotonic() - t0 < LEASE_S  # not after the lease ran out
    assert task.attempts == 0
    assert task.history[-1].outcome == "released"
    assert not any(_alive(p) for p in _pids(tmp_path))


async def test_second_signal_stops_at_once(
    broker: BrokerProcess, worker_factory: WorkerFactory, tmp_path: pathlib.Path
) -> None:
    worker = worker_factory(broker.url, extra=["--grace-s", "600"],
                            env={"FAKE_C2_SLEEP_S": "60"})
    worker.wait_for("registered")
    task_id = await submit(broker.url, tmp_path, json.dumps(c2_input()).encode())
    await until_proving(broker.url, task_id)
    worker.signal(signal.SIGTERM)
    worker.wait_for("stopping: no new tasks")
    worker.signal(signal.SIGINT)
    assert await asyncio.to_thread(worker.wait, 5.0) == 0
    assert (await handed_back(broker.url, task_id)).history[-1].outcome == "released"


async def test_broker_restart_within_the_lease_loses_no_work(
    broker: BrokerProcess, worker_factory: WorkerFactory, tmp_path: pathlib.Path
) -> None:
    # Given a worker proving a task
    worker = worker_factory(broker.url, env={"FAKE_C2_SLEEP_S": "4"})
    worker.wait_for("registered")
    task_id = await submit(broker.url, tmp_path, json.dumps(c2_input()).encode())
    await until_proving(broker.url, task_id)
    # When the broker dies and comes back within the lease
    broker.stop(signal.SIGKILL)
    await asyncio.sleep(0.5)
    await asyncio.to_thread(broker.start)
    # Then the worker resumes and delivers in the same attempt, logging the outage once
    task = await final(broker.url, task_id)
    assert task.state == tasks_pb2.TASK_STATE_FINISHED and task.attempts == 1
    worker.wait_for("reconnected to the broker")
    assert worker.logs().count("broker unreachable") == 1


async def test_a_worker_given_two_brokers_proves_on_when_the_first_loses_its_database(
    mariadb_dsn: str, broker_factory: BrokerFactory, worker_factory: WorkerFactory,
    tmp_path: pathlib.Path,
) -> None:
    relay, a = await protocol.broker_behind_relay(mariadb_dsn, broker_factory)
    b = await asyncio.to_thread(broker_factory, mariadb_dsn, "fs",
                                extra=["--lease-s", str(protocol.LEASE_S)])
    try:
        # Given a worker proving, through broker a, a task that takes four leases
        worker = worker_factory(f"{a.url},{b.url}",
                                env={"FAKE_C2_SLEEP_S": str(4 * protocol.LEASE_S)})
        task_id = await submit(a.url, tmp_path, json.dumps(c2_input()).encode())
        await until_proving(a.url, task_id)
        # When broker a loses its database
        relay.cut()
        # Then the worker goes on through b, and the first attempt's proof finishes the task
        task = await final(b.url, task_id)
        assert task.state == tasks_pb2.TASK_STATE_FINISHED and task.attempts == 1
        logs = worker.logs()
        assert f"The broker at {a.url} ended the Work stream" in logs
        assert "reconnected to the broker" in logs and f"broker={b.url}" in logs
    finally:
        await relay.close()


async def test_a_broker_down_the_list_that_refuses_the_worker_does_not_stop_it(
    sqlite_dsn: str, broker_factory: BrokerFactory, worker_factory: WorkerFactory,
    tmp_path: pathlib.Path,
) -> None:
    # Given a worker of broker a whose second broker takes only callers with a token it lacks
    token = tmp_path / "token"
    token.write_text(f"{os.urandom(16).hex()}\n")
    a = broker_factory(sqlite_dsn, "fs")
    b = broker_factory(f"sqlite:///{tmp_path}/b.db", "fs", payload_dir=tmp_path / "b",
                       extra=["--token-file", str(token)])
    worker = worker_factory(f"{a.url},{b.url}")
    await asyncio.to_thread(worker.wait_for, "registered")
    # It says so at start
    await asyncio.to_thread(worker.wait_for, "a broker in --gpuproxy-url would refuse this worker")
    # When broker a restarts
    a.stop()
    await asyncio.to_thread(worker.wait_for, "this broker refused the worker; going on to the next")
    await asyncio.to_thread(a.start)
    # Then the worker, refused by b, said so and went back to a, and did not stop
    await asyncio.to_thread(worker.wait_for, "reconnected to the broker")
    assert worker.proc is not None and worker.proc.poll() is None
    assert f"broker={b.url}" in worker.logs() and "UNAUTHENTICATED" in worker.logs()


async def test_a_worker_given_two_brokers_keeps_its_task_while_their_payload_folder_is_gone(
    mariadb_dsn: str, broker_factory: BrokerFactory, worker_factory: WorkerFactory,
    tmp_path: pathlib.Path,
) -> None:
    lease = ["--lease-s", str(protocol.LEASE_S)]
    a, b = [await asyncio.to_thread(broker_factory, mariadb_dsn, "fs", extra=lease)
            for _ in range(2)]
    # Given a worker of both proving a task that takes five leases
    worker_factory(f"{a.url},{b.url}", env={"FAKE_C2_SLEEP_S": str(5 * protocol.LEASE_S)})
    task_id = await submit(a.url, tmp_path, json.dumps(c2_input()).encode())
    await until_proving(a.url, task_id)
    # When the folder both brokers share goes away for three leases (the database stays up)
    (tmp_path / "payloads").rename(tmp_path / "payloads.away")
    (tmp_path / "payloads").mkdir()
    await asyncio.sleep(3 * protocol.LEASE_S)
    (tmp_path / "payloads").rmdir()
    (tmp_path / "payloads.away").rename(tmp_path / "payloads")
    # Then a broker took it, though every one had lost the folder, so its heartbeats were
    # stored, and the first attempt finished the task
    task = await final(b.url, task_id)
    assert task.state == tasks_pb2.TASK_STATE_FINISHED and task.attempts == 1


async def test_a_worker_given_two_brokers_moves_off_the_one_whose_mount_of_the_folder_is_gone(
    mariadb_dsn: str, broker_factory: BrokerFactory, worker_factory: WorkerFactory,
    tmp_path: pathlib.Path,
) -> None:
    # Given broker a reaching the shared folder through a mount of its own (here a link), and
    # a worker of both proving a task through a
    lease = ["--lease-s", str(protocol.LEASE_S)]
    (tmp_path / "payloads").mkdir()
    (tmp_path / "mount-a").symlink_to(tmp_path / "payloads")
    a = await asyncio.to_thread(broker_factory, mariadb_dsn, "fs", tmp_path / "mount-a",
                                extra=lease)
    b = await asyncio.to_thread(broker_factory, mariadb_dsn, "fs", extra=lease)
    worker = worker_factory(f"{a.url},{b.url}",
                            env={"FAKE_C2_SLEEP_S": str(3 * protocol.LEASE_S)})
    task_id = await submit(a.url, tmp_path, json.dumps(c2_input()).encode())
    await until_proving(a.url, task_id)
    # When a's mount goes away (b's is whole)
    (tmp_path / "mount-a").unlink()
    # Then the worker goes on through b, which takes its result: the first attempt finishes it
    task = await final(b.url, task_id)
    assert task.state == tasks_pb2.TASK_STATE_FINISHED and task.attempts == 1
    assert f"The broker at {a.url} ended the Work stream" in worker.logs()


@pytest.mark.parametrize(("smi", "named"), [([], "GPU 0 (GPU-e2e-0)"),
                                            (["--nvidia-smi", ""], "GPU 0 (index-0)")])
async def test_two_workers_on_one_gpu_are_refused_naming_both(
    broker: BrokerProcess, worker_factory: WorkerFactory, tmp_path: pathlib.Path,
    smi: list[str], named: str,
) -> None:
    # (without nvidia-smi, the card is known by its index only)
    first = worker_factory(broker.url, gpu=0, extra=smi)
    first.wait_for("registered")
    second = worker_factory(broker.url, gpu=0, work_dir=str(tmp_path / "other" / "{gpu}"),
                            extra=smi)
    assert await asyncio.to_thread(second.wait) == 1
    ids = [json.loads((root / "gpu0" / "state.json").read_text())["worker_id"]
           for root in (tmp_path / "workers", tmp_path / "other")]
    message = second.logs()
    assert f"already used by worker {ids[0]}" in message
    assert f"worker {ids[1]} would share it" in message
    assert named in message
    # and `workers list` shows the first with its card, known by nvidia-smi or by its index
    listed = json.loads(_workers(broker.url, "list", "--json").stdout)
    assert [g["index"] for w in listed for g in w["gpus"]] == [0]


async def test_two_workers_in_one_work_folder_are_refused(
    broker: BrokerProcess, worker_factory: WorkerFactory, tmp_path: pathlib.Path
) -> None:
    first = worker_factory(broker.url, gpu=0)
    first.wait_for("registered")
    second = worker_factory(broker.url, gpu=0)
    assert await asyncio.to_thread(second.wait) == 1
    message = second.logs()
    assert f"Work folder {tmp_path / 'workers' / 'gpu0'} is used by another worker" in message
    assert f"pid {first.proc.pid}" in message and "own --work-dir" in message  # type: ignore[union-attr]


async def test_a_cloned_worker_is_refused_while_the_original_is_alive(
    broker: BrokerProcess, worker_factory: WorkerFactory, tmp_path: pathlib.Path
) -> None:
    # Given a worker registered from its state folder, and a copy of that folder (a cloned
    # machine) from which a second worker starts with the same worker id
    first = worker_factory(broker.url, gpu=0)
    first.wait_for("registered")
    clone = tmp_path / "clone"
    shutil.copytree(tmp_path / "workers", clone, ignore=shutil.ignore_patterns("*.lock"))
    second = worker_factory(broker.url, gpu=1, work_dir=str(clone / "gpu0"),
                            extra=["--twin-wait-s", "1"])
    # Then the broker refuses the clone, which tries again for --twin-wait-s and exits saying
    # what to do; the original stays
    assert await asyncio.to_thread(second.wait) == 1
    worker_id = json.loads((clone / "gpu0" / "state.json").read_text())["worker_id"]
    message = second.logs()
    assert f"Worker id {worker_id} is in use by another live worker process" in message
    assert "Delete state.json" in message
    assert message.count("trying again in case the other worker") == 1  # logged once, not per try
    task_id = await submit(broker.url, tmp_path, json.dumps(c2_input()).encode())
    assert (await final(broker.url, task_id)).state == tasks_pb2.TASK_STATE_FINISHED
    assert first.proc.poll() is None  # type: ignore[union-attr]


async def test_a_second_worker_on_one_gpu_that_the_host_lock_missed_is_refused_by_the_broker(
    broker: BrokerProcess, worker_factory: WorkerFactory, tmp_path: pathlib.Path
) -> None:
    # Given a worker on GPU 0, and a second one for GPU 0 whose lock folder is another (a
    # second container on the host, say), with a work folder of its own
    first = worker_factory(broker.url, gpu=0)
    first.wait_for("registered")
    second = worker_factory(broker.url, gpu=0, work_dir=str(tmp_path / "other-gpu0"),
                            extra=["--lock-dir", str(tmp_path / "other-locks"),
                                   "--twin-wait-s", "1"])
    # Then the broker refuses the second, naming the card and the worker that has it
    assert await asyncio.to_thread(second.wait) == 1
    message = second.logs()
    assert "GPU GPU-e2e-0 (" in message and "is served already by worker" in message
    assert "give both one --lock-dir" in message
    assert first.proc.poll() is None  # type: ignore[union-attr]


async def test_a_restarted_worker_waits_out_its_previous_runs_stream(
    broker: BrokerProcess, worker_factory: WorkerFactory, tmp_path: pathlib.Path
) -> None:
    # Given a worker whose host hangs (SIGSTOP: its stream stays open, its heartbeats stop)
    first = worker_factory(broker.url, gpu=0)
    first.wait_for("registered")
    first.signal(signal.SIGSTOP)
    # When the same worker starts again (the host came back), the broker first refuses it
    # as a live twin, then takes it once the old stream has been silent for a lease
    shutil.copytree(tmp_path / "workers", tmp_path / "again",
                    ignore=shutil.ignore_patterns("*.lock"))
    again = worker_factory(broker.url, gpu=1, work_dir=str(tmp_path / "again" / "gpu0"))
    again.wait_for("registered", timeout_s=LEASE_S + 20)
    assert "trying again in case the other worker is this host's previous run" in again.logs()
    task_id = await submit(broker.url, tmp_path, json.dumps(c2_input()).encode())
    assert (await final(broker.url, task_id)).worker_id == json.loads(
        (tmp_path / "again" / "gpu0" / "state.json").read_text())["worker_id"]


async def test_supervise_runs_a_worker_per_gpu(
    broker: BrokerProcess, worker_factory: WorkerFactory, tmp_path: pathlib.Path
) -> None:
    # Given systemd's notify socket (Type=notify), as the shipped unit uses
    sock_dir = tempfile.mkdtemp(prefix="gp-notify-", dir="/tmp")
    systemd = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    systemd.bind(f"{sock_dir}/notify")
    systemd.settimeout(20)
    supervisor = worker_factory(broker.url, gpu=None, command="supervise",
                                env={"NOTIFY_SOCKET": f"{sock_dir}/notify"})
    supervisor.wait_for("registered", count=2)
    supervisor.wait_for("worker ready", count=4)  # each worker's own line and the supervisor's
    # Then the supervisor reports ready once both workers are
    assert (await asyncio.to_thread(systemd.recv, 64)) == b"READY=1"
    async with BrokerClient(broker.url) as client:
        workers = await client.list_workers()
    assert sorted(g.uuid for w in workers for g in w.gpus) == ["GPU-e2e-0", "GPU-e2e-1"]
    # A worker that dies is started again
    holder = json.loads((tmp_path / "locks" / "GPU-e2e-0.lock").read_text())
    os.kill(holder["pid"], signal.SIGKILL)
    supervisor.wait_for("worker exited; restarting it")
    supervisor.wait_for("registered", count=3)
    supervisor.signal(signal.SIGTERM)
    assert (await asyncio.to_thread(systemd.recv, 64)) == b"STOPPING=1"
    assert await asyncio.to_thread(supervisor.wait) == 0
    assert supervisor.logs().count("worker stopped") >= 2
    systemd.close()
    shutil.rmtree(sock_dir)


async def test_each_mig_device_takes_a_worker_and_a_gpu_in_mig_mode_is_refused_whole(
    broker: BrokerProcess, worker_factory: WorkerFactory, tmp_path: pathlib.Path
) -> None:
    # Given a host whose GPU 1 is split into two MIG devices
    fake_nvidia_smi(tmp_path / "fake-nvidia-smi", SMI_OUTPUT, listing=(
        "GPU 0: Fake GPU A (UUID: GPU-e2e-0)\n"
        "GPU 1: Fake GPU B (UUID: GPU-e2e-1)\n"
        "  MIG 3g.12gb     Device  0: (UUID: MIG-e2e-1-0)\n"
        "  MIG 3g.12gb     Device  1: (UUID: MIG-e2e-1-1)\n"))
    # A worker for GPU 1 whole is told why not, and what to run instead
    whole = worker_factory(broker.url, gpu=1)
    assert await asyncio.to_thread(whole.wait) == 1
    assert "GPU 1 (Fake GPU B) is in MIG mode" in whole.logs()
    assert "Name one of its MIG devices instead (1:0, 1:1), --gpu 1:0" in whole.logs()
    # The supervisor runs a worker on GPU 0 and one on each MIG device
    supervisor = worker_factory(broker.url, gpu=None, command="supervise")
    supervisor.wait_for("registered", count=3)
    async with BrokerClient(broker.url) as client:
        workers = await client.list_workers()
    assert sorted((g.index, g.mig if g.HasField("mig") else -1, g.uuid, g.name)
                  for w in workers for g in w.gpus) == [
        (0, -1, "GPU-e2e-0", "Fake GPU A"), (1, 0, "MIG-e2e-1-0", "Fake GPU B MIG 3g.12gb"),
        (1, 1, "MIG-e2e-1-1", "Fake GPU B MIG 3g.12gb")]
    listed = _workers(broker.url, "list").stdout  # each device as --gpu names it
    assert " 1:1:Fake GPU B MIG 3g.12gb " in listed and " 0:Fake GPU A " in listed
    # each in its own folder, its processor seeing its device only (CUDA knows it by UUID)
    assert sorted(p.name for p in (tmp_path / "workers").iterdir()) == [
        "gpu0", "gpu1-mig0", "gpu1-mig1"]
    logs = supervisor.logs()
    for seen in ("CUDA_VISIBLE_DEVICES=0)", "CUDA_VISIBLE_DEVICES=MIG-e2e-1-0)",
                 "CUDA_VISIBLE_DEVICES=MIG-e2e-1-1)"):
        assert f"ready ({seen}" in logs
    # and a second worker on a device that has one is refused by the device's lock
    twin = worker_factory(broker.url, gpu="1:1", work_dir=str(tmp_path / "twin"))
    assert await asyncio.to_thread(twin.wait) == 1
    assert "GPU 1 (MIG-e2e-1-1) is already used by worker" in twin.logs()
    task_id = await submit(broker.url, tmp_path, json.dumps(c2_input()).encode())
    assert (await final(broker.url, task_id)).state == tasks_pb2.TASK_STATE_FINISHED
    supervisor.signal(signal.SIGTERM)
    assert await asyncio.to_thread(supervisor.wait) == 0


async def test_workers_of_a_supervisor_killed_outright_go_with_it(
    broker: BrokerProcess, worker_factory: WorkerFactory, tmp_path: pathlib.Path
) -> None:
    temp = tmp_path / "tmp"
    temp.mkdir()
    supervisor = worker_factory(broker.url, gpu=None, command="supervise",
                                env={"TMPDIR": str(temp)})
    supervisor.wait_for("registered", count=2)
    workers = [json.loads((tmp_path / "locks" / f"GPU-e2e-{i}.lock").read_text())["pid"]
               for i in (0, 1)]
    # When the supervisor is SIGKILLed, its workers go too: a new supervisor finds free GPUs
    supervisor.signal(signal.SIGKILL)
    deadline = time.monotonic() + 5
    while any(_running(pid) for pid in workers) and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    assert not any(_running(pid) for pid in workers)
    # and nothing is left behind in the temp folder (its readiness sockets are abstract)
    assert list(temp.iterdir()) == []


def _running(pid: int) -> bool:
    """Alive and not a zombie (a worker's parent is gone: init reaps it)."""
    try:
        return pathlib.Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def _workers(url: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(BIN / "gpuproxy"), "workers", *args, "--url", url],
                          capture_output=True, text=True)


async def test_a_stopped_worker_is_offline_at_once_and_can_be_removed(
    broker: BrokerProcess, worker_factory: WorkerFactory, tmp_path: pathlib.Path
) -> None:
    # Given a running worker: it is online, and cannot be removed
    worker = worker_factory(broker.url)
    worker.wait_for("registered")
    [listed] = json.loads(_workers(broker.url, "list", "--json").stdout)
    assert listed["online"]
    refused = _workers(broker.url, "remove", listed["worker_id"])
    assert refused.returncode == 1
    assert f"Worker {listed['worker_id']} is online: stop it first" in refused.stderr
    # When it is stopped, it is offline at once (not a lease later), and can be removed
    worker.signal(signal.SIGTERM)
    assert await asyncio.to_thread(worker.wait) == 0
    stopped = time.monotonic()
    while (listed := json.loads(_workers(broker.url, "list", "--json").stdout)[0]).get("online"):
        assert time.monotonic() - stopped < LEASE_S / 2, "still online"
        await asyncio.sleep(0.1)
    assert _workers(broker.url, "remove", listed["worker_id"]).returncode == 0
    assert json.loads(_workers(broker.url, "list", "--json").stdout) == []


async def test_noop_tasks_return_the_payload_digest(
    broker: BrokerProcess, worker_factory: WorkerFactory, tmp_path: pathlib.Path
) -> None:
    worker = worker_factory(broker.url, gpu=None, extra=["--allow-type", "noop,c2"])
    worker.wait_for("registered")
    path = tmp_path / "noop-payload"
    path.write_bytes(b"check the deployment")
    async with BrokerClient(broker.url) as client:
        task = await client.submit_file(path, task_type="noop", miner="f01000")
    done = await final(broker.url, task.id)
    assert done.state == tasks_pb2.TASK_STATE_FINISHED
    out = tmp_path / "noop-result"
    async with BrokerClient(broker.url) as client:
        await client.download_result(task.id, out)
    assert out.read_text() == hashlib.sha256(b"check the deployment").hexdigest()
    # The payload went with the finish; asking for it says so, and where the result is
    gone = subprocess.run([str(BIN / "gpuproxy"), "tasks", "payload", task.id, "--url",
                           broker.url, "-o", str(tmp_path / "p")], capture_output=True, text=True)
    assert gone.returncode == 1 and "its payload was dropped then" in gone.stderr
    assert f"gpuproxy tasks result {task.id}" in gone.stderr


async def test_kill_9_of_the_busy_worker_moves_its_task_to_the_other(
    broker: BrokerProcess, worker_factory: WorkerFactory, tmp_path: pathlib.Path
) -> None:
    # Given worker A proving a task, and an idle worker B
    a = worker_factory(broker.url, gpu=0, env={"FAKE_C2_SLEEP_S": "1"})
    a.wait_for("registered")
    task_id = await submit(broker.url, tmp_path, json.dumps(c2_input()).encode())
    await until_proving(broker.url, task_id)
    b = worker_factory(broker.url, gpu=1, env={"FAKE_C2_SLEEP_S": "1"})
    b.wait_for("registered")

    # When A is killed with -9
    killed_at_ms = time.time() * 1000
    a.signal(signal.SIGKILL)
    a.wait()

    # Then B gets the task within the lease plus a second, and finishes it
    task = await final(broker.url, task_id, timeout_s=LEASE_S + 10)
    assert task.state == tasks_pb2.TASK_STATE_FINISHED and task.attempts == 2
    async with BrokerClient(broker.url) as client:
        history = (await client.get_task(task_id)).history
    assert [h.outcome for h in history] == ["requeued", "finished"]
    assert "stopped heartbeating" in history[0].reason
    assert history[1].worker_id != history[0].worker_id
    assert history[1].started_at.ToMilliseconds() - killed_at_ms < (LEASE_S + 1) * 1000


async def test_a_stopped_workers_late_result_is_refused(
    broker: BrokerProcess, worker_factory: WorkerFactory, tmp_path: pathlib.Path
) -> None:
    # Given worker A frozen (SIGSTOP) in the middle of a task, and worker B
    a = worker_factory(broker.url, gpu=0, env={"FAKE_C2_SLEEP_S": "2"})
    a.wait_for("registered")
    task_id = await submit(broker.url, tmp_path, json.dumps(c2_input()).encode())
    await until_proving(broker.url, task_id)
    a.signal(signal.SIGSTOP)
    b = worker_factory(broker.url, gpu=1)
    b.wait_for("registered")
    try:
        # When B finishes the requeued task, and A wakes up and delivers its own proof
        task = await final(broker.url, task_id, timeout_s=LEASE_S + 10)
        assert task.state == tasks_pb2.TASK_STATE_FINISHED
        winner = task.worker_id
    finally:
        a.signal(signal.SIGCONT)
    await asyncio.sleep(3)

    # Then A's late heartbeat or result is refused (A is told to drop the task), and the
    # finished task is untouched
    assert "no longer holds" in broker.logs() or "late result refused" in broker.logs()
    async with BrokerClient(broker.url) as client:
        after = await client.get_task(task_id)
    assert after.state == tasks_pb2.TASK_STATE_FINISHED and after.worker_id == winner
    assert [h.outcome for h in after.history] == ["requeued", "finished"]


async def test_a_task_failing_every_attempt_ends_in_error_listing_each_reason(
    broker: BrokerProcess, worker_factory: WorkerFactory, tmp_path: pathlib.Path
) -> None:
    worker = worker_factory(broker.url, env={"FAKE_C2_FAIL": "GPU memory fault"})
    worker.wait_for("registered")
    task_id = await submit(broker.url, tmp_path, json.dumps(c2_input()).encode())
    task = await final(broker.url, task_id)
    assert task.state == tasks_pb2.TASK_STATE_ERROR and task.attempts == 2  # --max-attempts 2
    assert task.error_message.startswith("failed after 2 attempts")
    assert task.error_message.count("GPU memory fault") == 2
    listed = subprocess.run(
        [str(BIN / "gpuproxy"), "tasks", "list", "--url", broker.url, "--state", "error"],
        capture_output=True, text=True, check=True,
    )
    assert task_id in listed.stdout and "2/2" in listed.stdout
    # The table's ERROR cell ends with the cause, not with the start of the attempt list
    [row] = [line for line in listed.stdout.splitlines() if line.startswith(task_id)]
    assert row.endswith("GPU memory fault")


@pytest.mark.parametrize("damage", ["truncated", "a byte changed"])
async def test_a_payload_damaged_in_the_store_fails_once_without_blaming_the_worker(
    broker: BrokerProcess, worker_factory: WorkerFactory, tmp_path: pathlib.Path, damage: str,
) -> None:
    # Given a task whose payload (3 MiB: several chunks) is damaged in the broker's folder
    # before a worker takes it (a disk or NFS fault)
    data = os.urandom(3 << 20)
    path = tmp_path / "c2-input"
    path.write_bytes(data)
    async with BrokerClient(broker.url) as client:
        task = await client.submit_file(path, task_type="noop", miner="f01000")
    sha = hashlib.sha256(data).hexdigest()
    stored = tmp_path / "payloads" / sha[0:2] / sha[2:4] / sha
    with stored.open("r+b") as f:
        if damage == "truncated":
            f.truncate(1000)
        else:
            f.seek(2 << 20)
            f.write(b"\0" if data[2 << 20] else b"\1")
    # When a worker that would pause after one failure takes it
    worker = worker_factory(broker.url, gpu=None, extra=[
        "--allow-type", "noop", "--pause-after-failures", "1"])
    done = await final(broker.url, task.id)
    # Then it fails at once for good (every worker would get the same bytes), saying what to do
    assert done.state == tasks_pb2.TASK_STATE_ERROR and done.attempts == 1
    assert "damaged" in done.error_message and "removed" in done.error_message
    assert f"gpuproxy tasks reset {task.id}" in done.error_message
    # and the worker is not blamed for it: it takes the next task at once
    assert "tasks keep failing on this worker" not in worker.logs()
    assert not stored.exists()
    # When the input is submitted again and the task reset, it runs on the same worker
    async with BrokerClient(broker.url) as client:
        again = await client.submit_file(path, task_type="noop", miner="f01000")
        assert again.id == task.id and stored.stat().st_size == len(data)
        await client.reset([task.id])
    done = await final(broker.url, task.id)
    assert done.state == tasks_pb2.TASK_STATE_FINISHED


async def test_a_payload_gone_from_the_store_fails_saying_how_to_run_the_task_again(
    broker: BrokerProcess, worker_factory: WorkerFactory, tmp_path: pathlib.Path,
) -> None:
    # Given a task whose payload is gone from the broker's folder (the folder itself is there)
    path = tmp_path / "c2-input"
    path.write_bytes(os.urandom(1000))
    async with BrokerClient(broker.url) as client:
        task = await client.submit_file(path, task_type="noop", miner="f01000")
    sha = task.payload_sha256
    (tmp_path / "payloads" / sha[0:2] / sha[2:4] / sha).unlink()
    # When a worker takes it, the task fails for good (no worker could do better), saying
    # what to do, once
    worker_factory(broker.url, gpu=None, extra=["--allow-type", "noop"])
    done = await final(broker.url, task.id)
    assert done.state == tasks_pb2.TASK_STATE_ERROR and done.attempts == 1
    assert done.error_message.count("submit the task again") == 1
    assert f"Then `gpuproxy tasks reset {task.id}` runs it again" in done.error_message
    # And doing so runs it
    async with BrokerClient(broker.url) as client:
        await client.submit_file(path, task_type="noop", miner="f01000")
        await client.reset([task.id])
    assert (await final(broker.url, task.id)).state == tasks_pb2.TASK_STATE_FINISHED


@pytest.mark.parametrize("resource_type", ["fs", "db"])
async def test_back_to_back_tasks_each_go_to_the_worker_once_its_slot_is_free(
    store_dsn: str, broker_factory: BrokerFactory, worker_factory: WorkerFactory,
    tmp_path: pathlib.Path, resource_type: str,
) -> None:
    # Given one worker of one slot, and a queue of short tasks
    broker = broker_factory(store_dsn, resource_type)
    worker = worker_factory(broker.url, gpu=None, extra=["--allow-type", "noop"])
    worker.wait_for("registered")
    ids = []
    async with BrokerClient(broker.url) as client:
        for n in range(8):
            path = tmp_path / f"input-{n}"
            path.write_bytes(os.urandom(1000))
            ids.append((await client.submit_file(path, task_type="noop", miner="f01000")).id)
    # When the worker runs them one after the other
    for task_id in ids:
        await final(broker.url, task_id)
    async with BrokerClient(broker.url) as client:
        done = [await client.get_task(task_id) for task_id in ids]
    # Then each is pushed when the worker's slot is free, never while it still ends the last:
    # no task handed back, every one finished at its first claim
    assert all(t.state == tasks_pb2.TASK_STATE_FINISHED for t in done)
    assert [h.outcome for t in done for h in t.history] == ["finished"] * len(ids)
    assert "assignment handed back" not in worker.logs()


async def test_a_task_waiting_to_be_retried_shows_why_its_last_attempt_failed(
    sqlite_dsn: str, broker_factory: BrokerFactory, worker_factory: WorkerFactory,
    tmp_path: pathlib.Path,
) -> None:
    # Given a task whose first attempt failed, waiting out a long retry backoff
    broker = broker_factory(sqlite_dsn, "fs", extra=["--retry-backoff-s", "600"])
    worker = worker_factory(broker.url, env={"FAKE_C2_FAIL": "params file missing"})
    worker.wait_for("registered")
    task_id = await submit(broker.url, tmp_path, json.dumps(c2_input()).encode())
    async with BrokerClient(broker.url) as client, asyncio.timeout(15):
        while not (task := await client.get_task(task_id)).last_failure:
            await asyncio.sleep(0.05)
    assert task.state == tasks_pb2.TASK_STATE_INIT and task.attempts == 1
    # Then the task list and the task itself say why it runs again
    listed = subprocess.run(
        [str(BIN / "gpuproxy"), "tasks", "list", "--url", broker.url, "--state", "init"],
        capture_output=True, text=True, check=True).stdout
    [row] = [line for line in listed.splitlines() if line.startswith(task_id)]
    assert " 1/3 " in row and "retrying: " in row and row.endswith("params file missing")
    shown = subprocess.run(
        [str(BIN / "gpuproxy"), "tasks", "show", task_id, "--url", broker.url],
        capture_output=True, text=True, check=True).stdout
    assert "retrying:    after: " in shown and "params file missing" in shown


async def test_a_worker_whose_tasks_keep_failing_pauses_and_healthy_workers_get_the_queue(
    broker: BrokerProcess, worker_factory: WorkerFactory, tmp_path: pathlib.Path
) -> None:
    # Given a worker whose processor dies on every task (a missing parameters file) and a
    # healthy one
    bad = worker_factory(broker.url, gpu=0, extra=["--pause-after-failures", "1"],
                         env={"FAKE_C2_CRASH": "1", "FAKE_C2_STDERR": "params file missing"})
    bad.wait_for("registered")
    good = worker_factory(broker.url, gpu=1)
    good.wait_for("registered")
    # When tasks arrive, the bad worker fails one and takes no more while it pauses
    ids = [await submit(broker.url, tmp_path, json.dumps(c2_input(sector)).encode())
           for sector in (201, 202, 203)]
    tasks = [await final(broker.url, task_id) for task_id in ids]
    # Then every task is proved by the healthy worker, in at most two attempts
    assert [t.state for t in tasks] == [tasks_pb2.TASK_STATE_FINISHED] * 3
    failed = [h for t in tasks for h in t.history if h.outcome == "failed"]
    assert len(failed) <= 1 and all("params file missing" in h.reason for h in failed)
    assert "tasks keep failing on this worker" in bad.logs()
    # And `gpuproxy workers list` shows the pause and why
    listed = subprocess.run(
        [str(BIN / "gpuproxy"), "workers", "list", "--url", broker.url],
        capture_output=True, text=True, check=True,
    ).stdout
    bad_id = json.loads((tmp_path / "workers" / "gpu0" / "state.json").read_text())["worker_id"]
    [table_row] = [line for line in listed.splitlines() if line.startswith(f"{bad_id} ")
                   and "takes no task" not in line]
    assert " paused " in table_row
    assert f"{bad_id} takes no task until " in listed
    assert "1 failed task in a row; the last: " in listed and "params file missing" in listed


@pytest.mark.parametrize(("extra", "complaint"), [
    (["--gpus", "0,0"], "GPU 0 is listed twice: one worker per GPU"),
    (["--gpus", "5"], "GPU 5 is not on this host; nvidia-smi lists 0, 1"),
    (["--gpus", "0:1"], "GPU 0 has no MIG device 0:1: it is not in MIG mode"),
    (["--gpus", "1,0:1,0:1"], "GPU 0:1 is listed twice: one worker per GPU"),
    (["--gpus", "0,gpu1"], "'gpu1' is not a GPU index (0, 1, ...) nor a MIG device"),
    # a setting only its workers would refuse, each at start, restarted forever
    (["--gpus", "0", "--allow-type", "c2,c3"], "Invalid setting allow-type"),
])
async def test_supervise_refuses_settings_it_cannot_run_before_starting_any_worker(
    broker: BrokerProcess, worker_factory: WorkerFactory, tmp_path: pathlib.Path,
    extra: list[str], complaint: str,
) -> None:
    supervisor = worker_factory(broker.url, gpu=None, command="supervise", extra=extra)
    assert await asyncio.to_thread(supervisor.wait) == 1
    assert complaint in supervisor.logs() and "worker started" not in supervisor.logs()
