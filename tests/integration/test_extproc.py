"""The c2 executor against a real ext-processor child: tests/fixtures/fake_c2.py."""

from __future__ import annotations

import asyncio
import json
import os
import pathlib
import sys
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
import structlog

from tests.fixtures import fake_c2
from worker import exceptions, executors
from worker.config import ProcessorConfig, WorkerConfig
from worker.executors.c2 import C2Executor

FAKE = pathlib.Path(fake_c2.__file__)

ExecutorFactory = Callable[..., C2Executor]


def c2_input(sector_id: int = 7, partitions: int = 1) -> dict[str, Any]:
    proof_type = "StackedDrg2KiBV1_1" if partitions == 1 else "StackedDrg32GiBV1_1"
    c1out = {"registered_proof": proof_type, "comm_r": [1] * 32,
             "vanilla_proofs": {"StackedDrg2KiBV1": [[{"p": i}] for i in range(partitions)]}}
    return {"c1out": c1out, "prover_id": [1] + [0] * 31, "sector_id": sector_id, "miner_id": 1000}


@pytest.fixture
async def make_executor(tmp_path: pathlib.Path) -> AsyncIterator[ExecutorFactory]:
    """factory(env={...}, bin=..., ready_timeout_s=...): a C2Executor closed after the test."""
    made: list[C2Executor] = []

    def make(env: dict[str, str] | None = None, bin: str = sys.executable,
             ready_timeout_s: float = 10.0) -> C2Executor:
        envs = {"FAKE_C2_PIDS": str(tmp_path / "pids"), "FAKE_C2_RECORD": str(tmp_path / "rec"),
                **(env or {})}
        processor = ProcessorConfig(bin=bin, args=(str(FAKE),), envs=envs,
                                    ready_timeout_s=ready_timeout_s)
        executor = C2Executor(WorkerConfig(processors={"c2": processor}))
        made.append(executor)
        return executor

    yield make
    for executor in made:
        await executor.close()


@pytest.fixture
def job(tmp_path: pathlib.Path) -> Callable[..., executors.Job]:
    """factory(payload bytes, timeout_s=10): a Job whose payload file holds those bytes."""
    count = 0

    async def progress(phase: str, fraction: float) -> None:
        pass

    def make(payload: bytes, timeout_s: float = 10.0) -> executors.Job:
        nonlocal count
        count += 1
        path = tmp_path / f"payload-{count}.json"
        path.write_bytes(payload)
        return executors.Job(task_id=f"t{count}", task_type="c2", payload=path,
                             timeout_s=timeout_s, progress=progress)

    return make


def pids(tmp_path: pathlib.Path) -> list[int]:
    path = tmp_path / "pids"
    return [int(x) for x in path.read_text().split()] if path.exists() else []


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie still answers kill(0); its state in /proc says it is gone.
    stat = pathlib.Path(f"/proc/{pid}/stat")
    return stat.exists() and stat.read_text().split(") ")[-1][:1] not in ("Z", "X")


async def test_proof_comes_back_and_the_child_is_kept(
    make_executor: ExecutorFactory, job: Callable[..., executors.Job], tmp_path: pathlib.Path
) -> None:
    executor = make_executor()
    await executor.start()
    for sector in (1, 2):
        proof = await executor.run(job(json.dumps(c2_input(sector)).encode()))
        assert proof == fake_c2.expected_proof(c2_input(sector))
        assert len(proof) == 192
    assert len(pids(tmp_path)) == 1


async def test_the_task_reaches_the_child_byte_for_byte(
    make_executor: ExecutorFactory, job: Callable[..., executors.Job], tmp_path: pathlib.Path
) -> None:
    # Given a payload whose key order and number formats a JSON round trip would change
    payload = (b'{"sector_id":9,"miner_id":1000,"prover_id":[' + b",".join([b"0"] * 32)
               + b'],"c1out":{"z":1.50,"a":1e3,"s":"x\\ny"}}')
    # When it runs
    await make_executor().run(job(payload))
    # Then the child received exactly those bytes as the task
    line = (tmp_path / "rec").read_bytes()
    assert line == b'{"id":1,"task":' + payload + b"}\n"


async def test_multi_line_payload_is_sent_on_one_line(
    make_executor: ExecutorFactory, job: Callable[..., executors.Job], tmp_path: pathlib.Path
) -> None:
    payload = json.dumps(c2_input(), indent=2).encode() + b"\n"
    proof = await make_executor().run(job(payload))
    assert proof == fake_c2.expected_proof(c2_input())
    assert (tmp_path / "rec").read_bytes().count(b"\n") == 1


async def test_proof_has_192_bytes_per_partition(
    make_executor: ExecutorFactory, job: Callable[..., executors.Job]
) -> None:
    proof = await make_executor().run(job(json.dumps(c2_input(partitions=10)).encode()))
    assert len(proof) == 1920


async def test_requests_run_concurrently_in_one_child(
    make_executor: ExecutorFactory, job: Callable[..., executors.Job], tmp_path: pathlib.Path
) -> None:
    executor = make_executor({"FAKE_C2_SLEEP_S": "0.6"})
    await executor.start()
    started = time.monotonic()
    proofs = await asyncio.gather(
        *(executor.run(job(json.dumps(c2_input(s)).encode())) for s in range(3))
    )
    assert time.monotonic() - started < 1.5
    assert proofs == [fake_c2.expected_proof(c2_input(s)) for s in range(3)]
    assert len(pids(tmp_path)) == 1


async def test_err_msg_fails_the_task_retryably(
    make_executor: ExecutorFactory, job: Callable[..., executors.Job]
) -> None:
    executor = make_executor({"FAKE_C2_FAIL": "cuda error 2: out of memory"})
    with pytest.raises(exceptions.ProcessorFailed, match="out of memory") as info:
        await executor.run(job(json.dumps(c2_input()).encode()))
    assert info.value.retryable


async def test_crash_fails_the_attempt_and_the_child_is_restarted(
    make_executor: ExecutorFactory, job: Callable[..., executors.Job], tmp_path: pathlib.Path
) -> None:
    executor = make_executor({"FAKE_C2_CRASH": "1",
                              "FAKE_C2_CRASH_MARKER": str(tmp_path / "crashed")})
    with pytest.raises(exceptions.ProcessorDied, match="exited with status 3") as info:
        await executor.run(job(json.dumps(c2_input()).encode()))
    assert info.value.retryable
    proof = await executor.run(job(json.dumps(c2_input()).encode()))
    assert proof == fake_c2.expected_proof(c2_input())
    assert len(pids(tmp_path)) == 2


async def test_a_stray_stdout_line_is_ignored_as_venus_worker_does(
    make_executor: ExecutorFactory, job: Callable[..., executors.Job], tmp_path: pathlib.Path
) -> None:
    executor = make_executor({"FAKE_C2_CHATTER": "bellperson: using GPU 0 (NVIDIA H100)"})
    with structlog.testing.capture_logs() as logs:
        proof = await executor.run(job(json.dumps(c2_input()).encode()))
    assert proof == fake_c2.expected_proof(c2_input())
    [warning] = [e for e in logs if e["event"].startswith("processor wrote a line")]
    assert warning["line"] == "bellperson: using GPU 0 (NVIDIA H100)"
    assert len(pids(tmp_path)) == 1  # the same child goes on


async def test_a_malformed_answer_fails_its_request_naming_the_child(
    make_executor: ExecutorFactory, job: Callable[..., executors.Job], tmp_path: pathlib.Path
) -> None:
    executor = make_executor({"FAKE_C2_BAD_ANSWER": "1"})
    with pytest.raises(exceptions.ProcessorProtocolError) as info:
        await executor.run(job(json.dumps(c2_input()).encode()))
    message = str(info.value)
    assert f"c2 processor {sys.executable}" in message
    assert "err_msg is neither a string nor null" in message and '"err_msg": 5' in message
    assert info.value.retryable
    assert alive(pids(tmp_path)[0])


async def test_a_request_the_processor_cannot_read_fails_at_once_and_it_serves_on(
    make_executor: ExecutorFactory, job: Callable[..., executors.Job], tmp_path: pathlib.Path
) -> None:
    # Given a processor built before the proof type of the sealer's C1 output existed
    proof_type = "StackedDrg2KiBV1_2_Feat_NonInteractivePoRep"
    executor = make_executor({"FAKE_C2_UNKNOWN_PROOF": proof_type})
    newer = c2_input()
    newer["c1out"]["registered_proof"] = proof_type
    # When such a task comes, it fails within moments (it is never answered), saying why
    started = time.monotonic()
    with pytest.raises(exceptions.ProcessorCannotRead) as info:
        await executor.run(job(json.dumps(newer).encode(), timeout_s=60.0))
    assert time.monotonic() - started < 10
    message = str(info.value)
    assert "could not read request 1" in message and "unknown variant" in message
    assert "update it on this host" in message and info.value.retryable
    # And the same processor proves the next task it can read
    assert await executor.run(job(json.dumps(c2_input()).encode())) == fake_c2.expected_proof(
        c2_input())
    assert len(pids(tmp_path)) == 1


async def test_an_answer_that_never_comes_times_out_quoting_what_came_instead(
    make_executor: ExecutorFactory, job: Callable[..., executors.Job], tmp_path: pathlib.Path
) -> None:
    executor = make_executor({"FAKE_C2_GARBAGE": "thread 'main' panicked at bellperson"})
    with pytest.raises(exceptions.ProcessorTimeout) as info:
        await executor.run(job(json.dumps(c2_input()).encode(), timeout_s=1.0))
    assert "Its last output: " in str(info.value)
    assert "stdout: thread 'main' panicked at bellperson" in str(info.value)
    await asyncio.sleep(0.2)
    assert not alive(pids(tmp_path)[0])


async def test_a_processor_that_dies_says_why_in_the_tasks_error(
    make_executor: ExecutorFactory, job: Callable[..., executors.Job]
) -> None:
    missing = "/var/tmp/filecoin-proof-parameters/v28-stacked-proof-of-replication.params"
    executor = make_executor({"FAKE_C2_CRASH": "1",
                              "FAKE_C2_STDERR": f"panicked: No such file: {missing}"})
    with pytest.raises(exceptions.ProcessorDied) as info:
        await executor.run(job(json.dumps(c2_input()).encode()))
    assert "Its last output: " in str(info.value)
    assert f"panicked: No such file: {missing}" in str(info.value)


async def test_timeout_kills_the_child(
    make_executor: ExecutorFactory, job: Callable[..., executors.Job], tmp_path: pathlib.Path
) -> None:
    executor = make_executor({"FAKE_C2_SLEEP_S": "30"})
    with pytest.raises(exceptions.ProcessorTimeout, match="--task-timeout-s") as info:
        await executor.run(job(json.dumps(c2_input()).encode(), timeout_s=0.5))
    assert info.value.retryable
    await asyncio.sleep(0.2)
    assert not alive(pids(tmp_path)[0])


async def test_cancelled_task_stops_the_child(
    make_executor: ExecutorFactory, job: Callable[..., executors.Job], tmp_path: pathlib.Path
) -> None:
    # Given a task running in the child
    executor = make_executor({"FAKE_C2_SLEEP_S": "30"})
    running = asyncio.create_task(executor.run(job(json.dumps(c2_input()).encode())))
    await asyncio.sleep(0.5)
    # When it is revoked
    running.cancel()
    with pytest.raises(asyncio.CancelledError):
        await running
    # Then the child stops working on it
    await asyncio.sleep(0.2)
    assert not alive(pids(tmp_path)[0])


@pytest.mark.parametrize(("payload", "complaint"), [
    (b"not json at all", "not JSON"),
    (b'{"c1out": {}, "sector_id": ' + b"9" * 5000 + b"}", "not JSON this worker can read"),
    (b'{"c1out": ' + b"[" * 100_000 + b"]" * 100_000 + b"}", "not JSON this worker can read"),
    (b"[1, 2]", "not a JSON object"),
    (b'{"c1out": {}, "prover_id": [0], "sector_id": 1, "miner_id": 2}', "prover_id"),
    (b'{"c1out": {}, "prover_id": [' + b",".join([b"0"] * 32) + b'], "miner_id": 2}',
     "missing sector_id"),
    (b'{"c1out": {}, "prover_id": [' + b",".join([b"0"] * 32) + b'], "sector_id": -1, '
     b'"miner_id": 2}', "sector_id"),
])
async def test_malformed_payload_fails_for_good_before_the_child_is_used(
    make_executor: ExecutorFactory, job: Callable[..., executors.Job], payload: bytes,
    complaint: str,
) -> None:
    # The processor binary does not even exist: the payload is refused before it is needed.
    executor = make_executor(bin="/nonexistent/c2-processor")
    with pytest.raises(exceptions.MalformedPayload, match=complaint) as info:
        await executor.run(job(payload))
    assert not info.value.retryable


@pytest.mark.parametrize(("binary", "why"), [
    ("/nonexistent/c2-processor", "no such file"),
    ("/tmp", "it is a folder, not a program"),
    ("{tmp}/notes.txt", "it is not executable"),
    ("no-such-c2-processor", "not found in the PATH of the worker"),
])
async def test_a_binary_that_cannot_run_is_named_with_why(
    make_executor: ExecutorFactory, tmp_path: pathlib.Path, binary: str, why: str
) -> None:
    (tmp_path / "notes.txt").write_text("not a program\n")
    binary = binary.format(tmp=tmp_path)
    executor = make_executor(bin=binary)
    with pytest.raises(exceptions.ProcessorUnavailable) as info:
        await executor.start()
    assert binary in str(info.value) and why in str(info.value)


async def test_child_that_never_gets_ready_is_refused(make_executor: ExecutorFactory) -> None:
    executor = make_executor({"FAKE_C2_NO_READY": "1"}, ready_timeout_s=0.5)
    with pytest.raises(exceptions.ProcessorUnavailable, match="c2 processor ready"):
        await executor.start()


@pytest.mark.parametrize("helper", ["group", "session"])
async def test_a_processor_that_dies_is_seen_at_once_though_a_helper_holds_its_output(
    make_executor: ExecutorFactory, job: Callable[..., executors.Job], tmp_path: pathlib.Path,
    helper: str,
) -> None:
    # Given a processor that starts a helper (inheriting its stdout and stderr, writing on both
    # later) and then crashes
    loop_errors: list[dict[str, Any]] = []
    asyncio.get_running_loop().set_exception_handler(lambda _loop, ctx: loop_errors.append(ctx))
    executor = make_executor({"FAKE_C2_CRASH": "1", "FAKE_C2_HELPER": helper,
                              "FAKE_C2_STDERR": "CUDA error 999"})
    t0 = time.monotonic()
    # Then the task fails as a crash within seconds, not at its timeout
    with pytest.raises(exceptions.ProcessorDied, match="exited with status 3") as info:
        await executor.run(job(json.dumps(c2_input()).encode(), timeout_s=60))
    assert time.monotonic() - t0 < 10 and "CUDA error 999" in str(info.value)
    _processor, helper_pid = pids(tmp_path)
    # And what the helper writes later goes nowhere, and closing does not wait for it
    await asyncio.sleep(1.5)
    await asyncio.wait_for(executor.close(), 5)
    assert loop_errors == []
    if helper == "group":  # a helper in its process group goes with it
        assert not alive(helper_pid)
    else:
        os.kill(helper_pid, 9)


async def test_a_processor_that_exits_before_ready_says_why(
    make_executor: ExecutorFactory,
) -> None:
    missing = "/var/tmp/filecoin-proof-parameters/v28-stacked-proof-of-replication.params"
    executor = make_executor({"FAKE_C2_EXIT_EARLY": "1",
                              "FAKE_C2_STDERR": f"parameter file {missing} not found"})
    with pytest.raises(exceptions.ProcessorExitedEarly) as info:
        await executor.start()
    assert "exited with status 1 before it was ready" in str(info.value)
    assert f"parameter file {missing} not found" in str(info.value)
    assert info.value.retryable


async def test_an_answer_with_a_number_too_long_to_read_is_a_stray_line(
    make_executor: ExecutorFactory, job: Callable[..., executors.Job]
) -> None:
    # A line json cannot turn into values (an integer of 5000 digits) is passed over like
    # any stray line, and the answer after it is still read
    executor = make_executor({"FAKE_C2_CHATTER": '{"id":' + "9" * 5000 + ',"output":1}'})
    task = c2_input()
    assert await executor.run(job(json.dumps(task).encode())) == fake_c2.expected_proof(task)


PARENT = """
import asyncio, sys
from worker.config import ProcessorConfig
from worker.extproc import ExtProcessor

async def main():
    p = ExtProcessor("c2", ProcessorConfig(bin=sys.executable, args=(sys.argv[1],)))
    await p.start()
    print("processor pid", p.pid, flush=True)
    await asyncio.sleep(300)

asyncio.run(main())
"""


async def test_a_worker_killed_outright_takes_its_processor_along(tmp_path: pathlib.Path) -> None:
    # Given a worker process whose processor is running
    parent = await asyncio.create_subprocess_exec(
        sys.executable, "-c", PARENT, str(FAKE), stdout=asyncio.subprocess.PIPE,
        cwd=pathlib.Path(__file__).parents[2])
    assert parent.stdout is not None
    line = b""
    while not line.startswith(b"processor pid "):  # (its log lines come first)
        line = await asyncio.wait_for(parent.stdout.readline(), 30)
        assert line, "the parent exited"
    child = int(line.split()[-1])
    assert alive(child)
    # When the worker is SIGKILLed, the processor goes too: it would keep the GPU busy
    parent.kill()
    await parent.wait()
    deadline = time.monotonic() + 5
    while alive(child) and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    assert not alive(child)


async def test_a_processor_starts_whatever_the_workers_folder_and_its_environment(
    make_executor: ExecutorFactory, job: Callable[..., executors.Job], tmp_path: pathlib.Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The launcher that ties the processor's life to the worker's is Python too: a worker.py
    # in the folder the worker runs in, or a processor's own PYTHONPATH, must not reach it
    (tmp_path / "worker.py").write_text("raise SystemExit('the wrong worker module')\n")
    monkeypatch.chdir(tmp_path)
    executor = make_executor({"PYTHONPATH": str(tmp_path)})
    task = c2_input()
    assert await executor.run(job(json.dumps(task).encode())) == fake_c2.expected_proof(task)


async def test_a_processor_that_inherits_nothing_still_gets_the_workers_gpu(
    job: Callable[..., executors.Job], tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Given a worker on GPU 3 (--gpu sets these) with a secret in its environment
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3")
    monkeypatch.setenv("CUDA_DEVICE_ORDER", "PCI_BUS_ID")
    monkeypatch.setenv("WORKER_SECRET", "s3cret")
    env_file = tmp_path / "env.json"
    processor = ProcessorConfig(bin=sys.executable, args=(str(FAKE),), inherit_envs=False,
                                envs={"FAKE_C2_ENV_FILE": str(env_file), "FIL_PROOFS_USE_GPU": "1"})
    executor = C2Executor(WorkerConfig(processors={"c2": processor}))
    try:
        task = c2_input()
        assert await executor.run(job(json.dumps(task).encode())) == fake_c2.expected_proof(task)
    finally:
        await executor.close()
    # Then its processor block's inherit_envs = false keeps the worker's environment out, but
    # not the card the worker runs on
    seen = json.loads(env_file.read_text())
    assert "WORKER_SECRET" not in seen and seen["FIL_PROOFS_USE_GPU"] == "1"
    assert seen["CUDA_VISIBLE_DEVICES"] == "3" and seen["CUDA_DEVICE_ORDER"] == "PCI_BUS_ID"


async def test_an_unreadable_request_among_several_is_left_to_its_timeout(
    make_executor: ExecutorFactory, job: Callable[..., executors.Job], tmp_path: pathlib.Path
) -> None:
    # Given a processor that cannot read one of two requests in flight (the line names none)
    proof_type = "StackedDrg2KiBV1_2_Feat_NonInteractivePoRep"
    executor = make_executor({"FAKE_C2_UNKNOWN_PROOF": proof_type, "FAKE_C2_SLEEP_S": "2"})
    await executor.start()
    newer = c2_input(sector_id=8)
    newer["c1out"]["registered_proof"] = proof_type
    good = c2_input(sector_id=9)
    first = asyncio.ensure_future(executor.run(job(json.dumps(good).encode(), timeout_s=20.0)))
    # (the unreadable one goes once the processor has read the other, which takes it 2 s:
    # sent first, it would be the only request in flight, and rightly failed at once)
    record = tmp_path / "rec"
    deadline = time.monotonic() + 10
    while not (record.exists() and record.read_bytes()) and time.monotonic() < deadline:
        await asyncio.sleep(0.01)
    second = asyncio.ensure_future(executor.run(job(json.dumps(newer).encode(), timeout_s=3.0)))
    results = await asyncio.gather(first, second, return_exceptions=True)
    # Then the readable one is proved, and the other is not blamed on it: its timeout ends it
    assert results[0] == fake_c2.expected_proof(good)
    assert isinstance(results[1], exceptions.ProcessorTimeout)


async def test_a_processor_that_inherits_nothing_is_looked_for_where_exec_looks(
    job: Callable[..., executors.Job], tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Given a processor named bare, found only in the worker's own PATH
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "my-c2").symlink_to(sys.executable)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    processor = ProcessorConfig(bin="my-c2", args=(str(FAKE),), inherit_envs=False)
    executor = C2Executor(WorkerConfig(processors={"c2": processor}))
    # Then without the worker's environment it cannot be found, and that is said at once
    with pytest.raises(exceptions.ProcessorUnavailable, match="not found in the PATH"):
        await executor.start()
