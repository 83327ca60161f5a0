"""A real broker process driven through the `gpuproxy` CLI and the gRPC API, as operators and
the plugin use it."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import pathlib
import signal
import subprocess
import sys
import time

import grpc
import pytest
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from broker import exceptions, models
from broker.client import BrokerClient
from broker.payloads.fs import MARKER, FsPayloadStore
from broker.store import open_store
from protos.gpuproxy.v1 import tasks_pb2, tasks_pb2_grpc
from tests.e2e.conftest import BrokerFactory

Cli = "Callable[..., subprocess.CompletedProcess[str]]"


def write_payload(path: pathlib.Path, size: int, seed: int = 0) -> str:
    data = hashlib.sha256(str(seed).encode()).digest() * (size // 32 + 1)
    path.write_bytes(data[:size])
    return hashlib.sha256(data[:size]).hexdigest()


def stored_files(payload_dir: pathlib.Path) -> list[pathlib.Path]:
    """Payloads and temp files (not the marker the broker keeps there)."""
    return [p for p in payload_dir.rglob("*") if p.is_file() and p.name != MARKER]


async def finish_from_outside(dsn: str, payload_dir: pathlib.Path, result: bytes) -> str:
    """Play the worker's part through the shared database and folder (the worker API comes
    with its own issue): claim the task, store a result, finish it."""
    store = open_store(dsn)
    await store.open()
    try:
        payloads = FsPayloadStore(payload_dir)
        await payloads.open()
        task = await store.claim_task("w-test", ["c2"], 60_000, models.now_ms())
        assert task is not None

        async def chunks():  # type: ignore[no-untyped-def]
            yield result

        sha = hashlib.sha256(result).hexdigest()
        await payloads.write(sha, len(result), chunks())
        await store.finish_task(task.id, task.fence, len(result), sha, models.now_ms())
        return task.id
    finally:
        await store.close()


@pytest.mark.parametrize("backend,resource_type", [("sqlite", "fs"), ("mariadb", "db")])
async def test_submit_list_show_and_resubmit(
    backend: str, resource_type: str, request: pytest.FixtureRequest,
    broker_factory: BrokerFactory, gpuproxy, tmp_path: pathlib.Path,  # type: ignore[no-untyped-def]
) -> None:
    dsn = request.getfixturevalue(f"{backend}_dsn")
    broker = broker_factory(dsn, resource_type)
    payload = tmp_path / "c1.json"
    sha = write_payload(payload, 3 * 1024 * 1024 + 17)

    # When a C1 output is submitted twice, then for another miner
    first = gpuproxy("tasks", "submit", "--url", broker.url, "--type", "c2", "--miner", "f01000",
                     "--comment", "sector 163", str(payload))
    assert first.returncode == 0, first.stderr
    again = gpuproxy("tasks", "submit", "--url", broker.url, "--type", "c2", "--miner", "f01000",
                     str(payload))
    other = gpuproxy("tasks", "submit", "--url", broker.url, "--type", "c2", "--miner", "f02000",
                     str(payload))

    # Then the same input gives the same task, and the stored payload is not uploaded again
    task_id = first.stdout.strip()
    assert task_id == models.task_id("f01000", "c2", sha)
    assert again.stdout.strip() == task_id
    assert "no worker known to the broker runs c2 tasks" in first.stderr
    assert "this payload was submitted before for f01000 as c2" in again.stderr
    assert "was submitted before" not in other.stderr
    assert other.returncode == 0 and other.stdout.strip() != task_id
    assert "uploaded=False" in broker.logs() or '"uploaded": false' in broker.logs()

    listed = gpuproxy("tasks", "list", "--url", broker.url, "--json")
    rows = json.loads(listed.stdout)
    assert [r["miner"] for r in rows] == ["f02000", "f01000"]  # newest first
    assert {r["state"] for r in rows} == {"init"}
    assert rows[1]["payload_sha256"] == sha
    assert int(rows[1]["payload_size"]) == payload.stat().st_size
    assert rows[1]["max_attempts"] == 3

    table = gpuproxy("tasks", "list", "--url", broker.url, "--state", "init", "--type", "c2")
    assert table.stdout.splitlines()[0].split()[:4] == ["ID", "TYPE", "MINER", "STATE"]
    assert task_id in table.stdout
    # States by their numbers too, as gpuproxy's scripts wrote them
    assert gpuproxy("tasks", "list", "--url", broker.url, "--state", "1").stdout == table.stdout
    assert task_id not in gpuproxy("tasks", "list", "--url", broker.url, "--state", "4,3").stdout
    refused = gpuproxy("tasks", "list", "--url", broker.url, "--state", "5")
    assert refused.returncode == 2 and "unknown state '5'" in refused.stderr
    show = gpuproxy("tasks", "show", "--url", broker.url, task_id)
    assert "sector 163" in show.stdout and "state:" in show.stdout


async def test_result_roundtrip_and_watch_across_processes(
    sqlite_dsn: str, broker_factory: BrokerFactory, gpuproxy, tmp_path: pathlib.Path,  # type: ignore[no-untyped-def]
) -> None:
    payload_dir = tmp_path / "payloads"
    broker = broker_factory(sqlite_dsn, "fs", payload_dir)
    payload = tmp_path / "c1.json"
    write_payload(payload, 1000)

    # Given a client waiting on the task with --wait
    waiter = subprocess.Popen(
        [str(pathlib.Path(os.sys.executable).parent / "gpuproxy"), "tasks", "submit",
         "--url", broker.url, "--type", "c2", "--miner", "f01000", "--wait",
         "-o", str(tmp_path / "proof.bin"), str(payload)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "HOME": str(tmp_path)},
    )
    assert waiter.stdout is not None
    task_id = waiter.stdout.readline().strip()

    # Its payload can be read back as submitted while it waits
    kept = gpuproxy("tasks", "payload", "--url", broker.url, task_id, "-o", str(tmp_path / "p"))
    assert kept.returncode == 0 and (tmp_path / "p").read_bytes() == payload.read_bytes()

    # And the broker restarts meanwhile (the waiter waits for it to come back)
    broker.stop(signal.SIGKILL)
    await asyncio.sleep(1.0)
    broker_factory(sqlite_dsn, "fs", payload_dir, port=int(broker.url.rsplit(":", 1)[1]))

    # When another process finishes it through the shared database and folder
    proof = os.urandom(1920)
    await finish_from_outside(sqlite_dsn, payload_dir, proof)

    # Then the waiter sees it (watch), downloads the proof, and exits 0
    _out, err = waiter.communicate(timeout=30)
    assert waiter.returncode == 0, err
    assert (tmp_path / "proof.bin").read_bytes() == proof
    got = gpuproxy("tasks", "result", "--url", broker.url, task_id, "-o", str(tmp_path / "again"))
    assert got.returncode == 0 and (tmp_path / "again").read_bytes() == proof

    # A rerun naming another result (a late one, asked for before a newer run) changes nothing
    async with BrokerClient(broker.url) as client:
        late = await client.submit_file(payload, task_type="c2", miner="f01000",
                                        rerun="late", rerun_result="ab" * 32)
    assert late.state == tasks_pb2.TASK_STATE_FINISHED and late.result_size == len(proof)
    # A result found wrong: submitted again with --rerun, the task drops it and runs again
    sha = hashlib.sha256(payload.read_bytes()).hexdigest()
    (payload_dir / sha[0:2] / sha[2:4] / sha).unlink()  # as a finish drops the input
    rerun = gpuproxy("tasks", "submit", "--url", broker.url, "--type", "c2", "--miner",
                     "f01000", "--rerun", "--reason", "proof refused by the chain", str(payload))
    assert rerun.returncode == 0 and rerun.stdout.strip() == task_id, rerun.stderr
    assert "it is init now" in rerun.stderr
    shown = json.loads(gpuproxy("tasks", "show", "--url", broker.url, task_id, "--json").stdout)
    assert shown["state"] == "init" and not shown.get("result_sha256")
    assert shown["history"][-1]["outcome"] == "reset"
    assert shown["history"][-1]["reason"] == "proof refused by the chain"
    kept = gpuproxy("tasks", "payload", "--url", broker.url, task_id, "-o", str(tmp_path / "in"))
    assert kept.returncode == 0 and (tmp_path / "in").read_bytes() == payload.read_bytes()


async def test_errors_have_precise_statuses_and_messages(
    sqlite_dsn: str, broker_factory: BrokerFactory, gpuproxy, tmp_path: pathlib.Path,  # type: ignore[no-untyped-def]
) -> None:
    broker = broker_factory(sqlite_dsn, "fs", extra=["--max-payload-bytes", "1000000"])
    missing = gpuproxy("tasks", "show", "--url", broker.url, "no-such-task")
    assert missing.returncode == 1
    assert "No task no-such-task" in missing.stderr and "gpuproxy tasks list" in missing.stderr

    payload = tmp_path / "c1.json"
    write_payload(payload, 100)
    task_id = gpuproxy("tasks", "submit", "--url", broker.url, "--type", "c2", "--miner",
                       "f01000", str(payload)).stdout.strip()
    reset = gpuproxy("tasks", "reset", "--url", broker.url, task_id)
    assert reset.returncode == 1 and "is init" in reset.stderr and "in error" in reset.stderr

    big = tmp_path / "big"
    write_payload(big, 1_000_001)
    too_big = gpuproxy("tasks", "submit", "--url", broker.url, "--type", "c2", "--miner",
                       "f01000", str(big))
    assert too_big.returncode == 1 and "--max-payload-bytes" in too_big.stderr

    async with grpc.aio.insecure_channel(broker.url) as ch:
        stub = tasks_pb2_grpc.TaskBrokerStub(ch)
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.GetTask(tasks_pb2.GetTaskRequest(id="nope"))
        assert err.value.code() == grpc.StatusCode.NOT_FOUND
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.ResetTasks(tasks_pb2.ResetTasksRequest(ids=[task_id]))
        assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.GetResult(tasks_pb2.GetResultRequest(id=task_id)).read()
        assert err.value.code() == grpc.StatusCode.NOT_FOUND
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.ListTasks(tasks_pb2.ListTasksRequest(page_token="garbage!"))
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def _upload(url: str, header: tasks_pb2.SubmitHeader, chunks: list[bytes]):  # type: ignore[no-untyped-def]
    async with grpc.aio.insecure_channel(url) as ch:
        call = tasks_pb2_grpc.TaskBrokerStub(ch).SubmitTask()
        await call.write(tasks_pb2.SubmitTaskRequest(header=header))
        ack = await call.read()
        for c in chunks:
            await call.write(tasks_pb2.SubmitTaskRequest(chunk=c))
        await call.done_writing()
        return ack, await call.read()


@pytest.mark.parametrize("case", ["mismatch", "truncated", "oversized", "cancelled"])
async def test_bad_uploads_leave_nothing(
    case: str, sqlite_dsn: str, broker_factory: BrokerFactory, tmp_path: pathlib.Path
) -> None:
    payload_dir = tmp_path / "payloads"
    broker = broker_factory(sqlite_dsn, "fs", payload_dir)
    data = os.urandom(2 * 1024 * 1024 + 3)
    sha = hashlib.sha256(data).hexdigest()
    header = tasks_pb2.SubmitHeader(task_type="c2", miner="f01000", payload_size=len(data),
                                    payload_sha256=sha)
    chunks = [data[: 1 << 20], data[1 << 20: 2 << 20], data[2 << 20:]]
    if case == "mismatch":
        chunks[1] = bytes(len(chunks[1]))
    elif case == "truncated":
        chunks = chunks[:2]
    elif case == "oversized":
        chunks.append(b"x")

    if case == "cancelled":
        async with grpc.aio.insecure_channel(broker.url) as ch:
            call = tasks_pb2_grpc.TaskBrokerStub(ch).SubmitTask()
            await call.write(tasks_pb2.SubmitTaskRequest(header=header))
            await call.read()
            await call.write(tasks_pb2.SubmitTaskRequest(chunk=chunks[0]))
            call.cancel()
    else:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await _upload(broker.url, header, chunks)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        expected = {"mismatch": "sha256", "truncated": "ended after", "oversized": "more than"}
        assert expected[case] in (err.value.details() or "")

    # Then no task and no payload (nor temp file) remain
    async with BrokerClient(broker.url) as client:
        for _ in range(50):
            leftovers = stored_files(payload_dir)
            if not leftovers:
                break
            await asyncio.sleep(0.1)
        assert leftovers == []
        assert list((await client.list_tasks()).tasks) == []


async def test_cancel_reset_and_watch(
    sqlite_dsn: str, broker_factory: BrokerFactory, tmp_path: pathlib.Path
) -> None:
    broker = broker_factory(sqlite_dsn, "fs")
    payload = tmp_path / "c1"
    write_payload(payload, 10)
    async with BrokerClient(broker.url) as client:
        task = await client.submit_file(payload, task_type="c2", miner="f01000")
        seen: list[int] = []

        async def watch() -> None:
            async for t in client.watch(task.id):
                seen.append(t.state)

        import asyncio
        watcher = asyncio.create_task(watch())
        await asyncio.sleep(0.3)
        cancelled = await client.cancel(task.id, "operator test")
        await asyncio.wait_for(watcher, 5)
        assert seen == [1, 3]  # init at once, then the change; the stream ends at error
        assert "cancelled: operator test" in cancelled.error_message

        (reset,) = await client.reset([task.id])
        assert reset.state == 1 and reset.attempts == 0 and reset.error_message == ""
        shown = await client.get_task(task.id)
        assert [(a.outcome, a.reason) for a in shown.history][-1] == (
            "reset", "cancelled: operator test"
        )


async def test_health_and_reflection_list_the_api(
    sqlite_dsn: str, broker_factory: BrokerFactory
) -> None:
    broker = broker_factory(sqlite_dsn, "fs")
    async with grpc.aio.insecure_channel(broker.url) as ch:
        stub = reflection_pb2_grpc.ServerReflectionStub(ch)
        call = stub.ServerReflectionInfo()
        await call.write(reflection_pb2.ServerReflectionRequest(list_services=""))
        reply = await call.read()
        await call.done_writing()
        names = {s.name for s in reply.list_services_response.service}
    assert {"gpuproxy.v1.TaskBroker", "grpc.health.v1.Health"} <= names


async def test_restart_loses_nothing(
    sqlite_dsn: str, broker_factory: BrokerFactory, gpuproxy, tmp_path: pathlib.Path,  # type: ignore[no-untyped-def]
) -> None:
    payload_dir = tmp_path / "payloads"
    broker = broker_factory(sqlite_dsn, "fs", payload_dir)
    payload = tmp_path / "c1"
    write_payload(payload, 5000)
    task_id = gpuproxy("tasks", "submit", "--url", broker.url, "--type", "c2", "--miner",
                       "f01000", str(payload)).stdout.strip()
    broker.stop(9)
    broker.start()
    shown = gpuproxy("tasks", "show", "--url", broker.url, task_id, "--json")
    assert json.loads(shown.stdout)["state"] == "init"
    assert len(stored_files(payload_dir)) == 1


def test_bad_flags_and_unreachable_things_get_clear_messages(
    gpuproxy, tmp_path: pathlib.Path,  # type: ignore[no-untyped-def]
) -> None:
    wrong = gpuproxy("run", "--resource-type", "nfs")
    assert wrong.returncode == 2 and "invalid choice" in wrong.stderr

    no_db = gpuproxy("run", "--url", "127.0.0.1:0", "--db-dsn",
                     "mysql://root:secret@127.0.0.1:1/gpuproxy", timeout_s=60)
    assert no_db.returncode == 1
    assert "unreachable" in no_db.stderr and "secret" not in no_db.stderr

    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    no_dir = gpuproxy("run", "--url", "127.0.0.1:0", "--db-dsn", f"sqlite:///{tmp_path}/db.sqlite",
                      "--fs-resource-path", str(blocker / "payloads"))
    assert no_dir.returncode == 1 and str(blocker / "payloads") in no_dir.stderr

    a_file = gpuproxy("run", "--url", "127.0.0.1:0", "--db-dsn", f"sqlite:///{tmp_path}/db.sqlite",
                      "--fs-resource-path", str(blocker))
    assert a_file.returncode == 1 and "it is a file, not a folder" in a_file.stderr
    keep_file = gpuproxy("demo", "--keep", str(blocker))
    assert keep_file.returncode == 1 and "Traceback" not in keep_file.stderr
    assert f"cannot keep the demo's files in {blocker}: it is a file, not a folder" \
        in keep_file.stderr

    bad_dsn = gpuproxy("run", "--db-dsn", "postgres://x")
    assert bad_dsn.returncode == 1 and "sqlite:///PATH" in bad_dsn.stderr

    no_file = gpuproxy("tasks", "submit", "--type", "c2", str(tmp_path / "nope.json"))
    assert no_file.returncode == 1 and "does not exist" in no_file.stderr
    assert "Traceback" not in no_file.stderr and len(no_file.stderr.splitlines()) == 1

    no_broker = gpuproxy("tasks", "list", "--url", "127.0.0.1:1")
    assert no_broker.returncode == 1 and "No broker at 127.0.0.1:1" in no_broker.stderr


def test_every_command_given_several_brokers_goes_to_one_that_answers(
    sqlite_dsn: str, broker_factory: BrokerFactory, gpuproxy, tmp_path: pathlib.Path,  # type: ignore[no-untyped-def]
) -> None:
    from tests.e2e.conftest import free_port

    live = broker_factory(sqlite_dsn)
    dead, also_dead = (f"127.0.0.1:{free_port()}" for _ in range(2))
    both = f"{dead},{live.url}"
    payload = tmp_path / "c1.json"
    write_payload(payload, 3 * 1024 * 1024 + 5)
    # Uploads, downloads and waits (streams) as well as the one-message calls
    submitted = gpuproxy("tasks", "submit", str(payload), "--type", "c2", "--url", both)
    assert submitted.returncode == 0, submitted.stderr
    task_id = submitted.stdout.split()[0]
    fetched = gpuproxy("tasks", "payload", task_id, "-o", str(tmp_path / "back"), "--url", both)
    assert fetched.returncode == 0, fetched.stderr
    assert (tmp_path / "back").read_bytes() == payload.read_bytes()
    listed = gpuproxy("tasks", "list", "--url", both)
    assert listed.returncode == 0 and task_id in listed.stdout
    # With none answering, the message names each broker's failure
    none = gpuproxy("tasks", "submit", str(payload), "--type", "c2", "--url",
                    f"{dead},{also_dead}")
    assert none.returncode == 1
    assert f"None of the brokers {dead}, {also_dead} could take the call: No broker at " \
        f"{dead}" in none.stderr and f"No broker at {also_dead}" in none.stderr
    waited = gpuproxy("tasks", "wait", task_id, "--url", f"{dead},{also_dead}", timeout_s=30)
    assert waited.returncode == 1 and "No broker at" in waited.stderr
    # and a list written with spaces is refused before anything is called
    spaced = gpuproxy("tasks", "list", "--url", f"{dead} {live.url}")
    assert spaced.returncode == 2 and "separate the brokers with commas" in spaced.stderr


async def test_a_call_to_a_broker_gone_silent_goes_to_the_next_at_its_deadline(
    mariadb_dsn: str, broker_factory: BrokerFactory, tmp_path: pathlib.Path,
) -> None:
    # Given a client of brokers a and b that has reached a, when a's host stops answering
    # (SIGSTOP: the connection stays up, nothing answers on it, no ping has failed yet)
    a, b = (broker_factory(mariadb_dsn, "fs") for _ in range(2))
    payload = tmp_path / "c1.json"
    write_payload(payload, 1000)
    assert a.proc is not None
    async with BrokerClient(f"{a.url},{b.url}", timeout_s=1.0) as client:
        task = await client.submit_file(payload, task_type="c2", miner="f01000")
        a.proc.send_signal(signal.SIGSTOP)
        try:
            # Then a read that waits out its deadline is made again on b
            started = time.monotonic()
            assert [t.id for t in (await client.list_tasks()).tasks] == [task.id]
            assert 1 <= time.monotonic() - started < 5
            assert client.url == b.url  # and the calls after it go there at once
            # With b silent too, the read says that no broker answered in time (they are slow
            # or stuck, not unreachable)
            assert b.proc is not None
            b.proc.send_signal(signal.SIGSTOP)
            try:
                with pytest.raises(exceptions.RemoteError,
                                   match=r"no broker answered within 1 s \(127"):
                    await client.list_tasks()
            finally:
                b.proc.send_signal(signal.SIGCONT)
        finally:
            a.proc.send_signal(signal.SIGCONT)
    # A cancel, though, is not made twice: the silent broker may have done it late, and b
    # would answer that the task has ended. It says so; the next call goes to b.
    async with BrokerClient(f"{a.url},{b.url}", timeout_s=1.0) as client:
        await client.get_task(task.id)
        assert client.url == a.url  # (answered in time: the client is still on a)
        a.proc.send_signal(signal.SIGSTOP)
        try:
            with pytest.raises(exceptions.RemoteError, match="Deadline Exceeded"):
                await client.cancel(task.id)
            assert client.url == b.url
            assert (await client.cancel(task.id)).state == tasks_pb2.TASK_STATE_ERROR
        finally:
            a.proc.send_signal(signal.SIGCONT)


async def test_metrics_endpoint_counts_submissions(
    sqlite_dsn: str, broker_factory: BrokerFactory, gpuproxy, tmp_path: pathlib.Path,  # type: ignore[no-untyped-def]
) -> None:
    import urllib.request

    from tests.e2e.conftest import free_port

    metrics_url = f"127.0.0.1:{free_port()}"
    broker = broker_factory(sqlite_dsn, "fs", extra=[
        "--metrics-url", metrics_url, "--metrics-refresh-s", "0.2"])

    def scrape() -> dict[str, float]:
        with urllib.request.urlopen(f"http://{metrics_url}/metrics", timeout=5) as reply:
            lines = reply.read().decode().splitlines()
        return {k: float(v) for k, _, v in (x.rpartition(" ") for x in lines if x[:1] != "#")}

    def until(name: str, value: float) -> dict[str, float]:
        for _ in range(50):  # the counts are read from the database every 0.2 s
            if (seen := scrape()).get(name) == value:
                return seen
            time.sleep(0.1)
        raise AssertionError(f"{name} never read {value}: {seen.get(name)}")

    # Counters an alert watches read 0 before their first event: increase() counts no
    # series that first shows up at 1
    text = until('gpuproxy_calls_refused_total{token="missing"}', 0.0)
    for task_type in ("c2", "groth16"):
        for cause in ("failed", "taken_back", "cancelled"):
            series = f'gpuproxy_tasks_errored_total{{cause="{cause}",task_type="{task_type}"}}'
            assert text[series] == 0
        assert text[f'gpuproxy_tasks_taken_back_total{{task_type="{task_type}"}}'] == 0
    assert text['gpuproxy_calls_refused_total{token="wrong"}'] == 0
    payload = tmp_path / "c1"
    write_payload(payload, 4096)
    for _ in range(2):  # the second submit is the same task
        submitted = gpuproxy("tasks", "submit", "--url", broker.url, "--type", "c2",
                             "--miner", "f01000", str(payload))
    text = until('gpuproxy_tasks{state="init",task_type="c2"}', 1.0)
    assert text['gpuproxy_tasks_submitted_total{task_type="c2"}'] == 1.0
    assert text["gpuproxy_payload_bytes_received_total"] == 4096.0
    assert text["gpuproxy_workers_connected"] == 0.0
    assert text['gpuproxy_oldest_waiting_task_seconds{task_type="c2"}'] > 0
    # A cancelled task leaves the queue for error, counted by cause
    gpuproxy("tasks", "cancel", submitted.stdout.strip(), "--url", broker.url)
    text = until('gpuproxy_tasks{state="error",task_type="c2"}', 1.0)
    assert text['gpuproxy_tasks{state="init",task_type="c2"}'] == 0.0
    assert text['gpuproxy_oldest_waiting_task_seconds{task_type="c2"}'] == 0.0
    assert text['gpuproxy_tasks_errored_total{cause="cancelled",task_type="c2"}'] == 1.0


def test_values_that_cannot_work_are_refused_before_anything_starts(
    gpuproxy, tmp_path: pathlib.Path,  # type: ignore[no-untyped-def]
) -> None:
    # A port past 65535 would wrap around to another broker's port without a word
    wrapped = gpuproxy("tasks", "list", "--url", "127.0.0.1:84646")
    assert wrapped.returncode == 2
    assert "'127.0.0.1:84646' is not HOST:PORT with a port from 1 to 65535" in wrapped.stderr
    # nan timeouts would fail every housekeeper sweep, forever
    for flag, value in (("--type-timeout-s", "c2=nan"), ("--lease-s", "inf")):
        refused = gpuproxy("run", flag, value)
        assert refused.returncode in (1, 2) and "finite number" in refused.stderr, flag
    whole = gpuproxy("run", "--type-max-attempts", "c2=1.5")
    assert whole.returncode == 1 and "whole number" in whole.stderr
    # A file that is not a proving key would be fetched and refused by every worker
    not_a_key = tmp_path / "in.json"
    not_a_key.write_text("{}")
    for argv in (("keys", "upload", str(not_a_key)),
                 ("tasks", "submit", "--type", "groth16", "--zkey", str(not_a_key), "--wtns",
                  str(not_a_key))):
        refused = gpuproxy(*argv, "--url", "127.0.0.1:1")  # refused before any call
        assert refused.returncode == 1 and "is not a valid zkey file" in refused.stderr
        assert "Traceback" not in refused.stderr and "No broker" not in refused.stderr
    # A result that could not be written is refused before the task is submitted
    no_folder = gpuproxy("tasks", "submit", str(not_a_key), "--type", "c2", "--wait", "-o",
                         str(tmp_path / "missing" / "out.bin"), "--url", "127.0.0.1:1")
    assert no_folder.returncode == 1
    assert f"folder {tmp_path / 'missing'} does not exist" in no_folder.stderr


async def test_a_second_broker_on_a_taken_port_says_so(
    sqlite_dsn: str, broker_factory: BrokerFactory, gpuproxy,  # type: ignore[no-untyped-def]
    tmp_path: pathlib.Path,
) -> None:
    first = broker_factory(sqlite_dsn)
    second = gpuproxy("run", "--url", first.url, "--db-dsn", f"sqlite:///{tmp_path}/2.db",
                      "--fs-resource-path", str(tmp_path / "p2"))
    assert second.returncode == 1 and "Traceback" not in second.stderr
    assert f"cannot listen on {first.url}: another program (a broker?) holds the port" \
        in second.stderr
    assert "add_port" not in second.stderr  # said once, plainly: no gRPC core line before it
    # An address that is not this machine's is said as such
    elsewhere = gpuproxy("run", "--url", "192.0.2.1:18999", "--db-dsn",
                         f"sqlite:///{tmp_path}/3.db", "--fs-resource-path", str(tmp_path / "p3"))
    assert elsewhere.returncode == 1
    assert "cannot listen on 192.0.2.1:18999: 192.0.2.1 is not an address of this machine" \
        in elsewhere.stderr


async def fail_from_outside(dsn: str, count: int, reason: str, attempts: int) -> list[str]:
    """`count` tasks that failed `attempts` times with `reason` each and ended in error."""
    store = open_store(dsn)
    await store.open()
    try:
        ids = []
        for i in range(count):
            task, _ = await store.create_task(models.NewTask(
                id=f"t-{i:04d}", task_type="c2", miner="f01000", comment="", priority=0,
                payload_size=1, payload_sha256="0" * 64, max_attempts=attempts,
                created_at=models.now_ms()))
            for _ in range(attempts):
                claimed = await store.claim_task("w-test", ["c2"], 60_000, models.now_ms())
                assert claimed is not None and claimed.id == task.id
                await store.fail_task(task.id, claimed.fence, reason, True, 0, models.now_ms())
            ids.append(task.id)
        return ids
    finally:
        await store.close()


RESETS = 400


async def test_long_error_messages_and_histories_stay_within_a_reply(
    sqlite_dsn: str, broker_factory: BrokerFactory, gpuproxy  # type: ignore[no-untyped-def]
) -> None:
    # Given 120 tasks in error, each message listing 12 reasons of 4 KiB (about 6 MiB in all,
    # over gRPC's 4 MiB per reply), the last one reset and failed again 400 times (800 more
    # attempt rows of 4 KiB)
    b = broker_factory(sqlite_dsn)
    reason = "GPU fell off the bus\nCaused by:\n  CUDA error 999 " + "x" * 4000
    ids = await fail_from_outside(sqlite_dsn, 120, reason, attempts=12)
    store = open_store(sqlite_dsn)
    await store.open()
    try:
        for _ in range(RESETS):
            await store.reset_task(ids[-1], models.now_ms())
            claimed = await store.claim_task("w-test", ["c2"], 60_000, models.now_ms())
            assert claimed is not None
            await store.fail_task(ids[-1], claimed.fence, reason, False, 0, models.now_ms())
    finally:
        await store.close()

    # Then `tasks list` gets them all, page by page, one line each
    listed = gpuproxy("tasks", "list", "--url", b.url, "--limit", "1000")
    assert listed.returncode == 0, listed.stderr
    rows = listed.stdout.splitlines()[1:]
    assert len(rows) == 120 and all(r.endswith("x" * 57) for r in rows)  # the cause's end
    assert listed.stderr == ""
    # And a limit that leaves some out says so
    short = gpuproxy("tasks", "list", "--url", b.url, "--limit", "50")
    assert len(short.stdout.splitlines()) == 51
    assert "the first 50 tasks; there are more: raise --limit" in short.stderr
    # And `tasks show` of the task reset 400 times shows its newest attempts, saying how many
    # older ones it left out, a reason of several lines on one row
    shown = gpuproxy("tasks", "show", "--url", b.url, ids[-1])
    assert shown.returncode == 0, shown.stderr
    lines = shown.stdout.splitlines()
    [header] = [line for line in lines if line.startswith("history:")]
    omitted = int(header.split("the ")[1].split()[0])
    history = lines[lines.index(header) + 2:]
    assert omitted > 0 and len(history) > 500 and len(history) + omitted == 12 + 2 * RESETS
    assert all("GPU fell off the bus Caused by: CUDA error 999" in r for r in history
               if " failed " in r)


def test_a_submit_the_broker_refuses_mid_upload_says_why(
    sqlite_dsn: str, broker_factory: BrokerFactory, gpuproxy, tmp_path: pathlib.Path,  # type: ignore[no-untyped-def]
) -> None:
    # Given a broker whose payload folder became unwritable after it started
    folder = tmp_path / "payloads"
    broker = broker_factory(sqlite_dsn, "fs", payload_dir=folder)
    if subprocess.run(["chattr", "+i", str(folder)], capture_output=True).returncode != 0:
        pytest.skip("chattr +i is not available here")
    try:
        # When files of several chunks are submitted, each is refused in the broker's words,
        # not grpc's ("Internal error from Core", "RPC already finished")
        for seed in range(3):
            payload = tmp_path / f"c1-{seed}"
            write_payload(payload, 5 * 1024 * 1024, seed)
            done = gpuproxy("tasks", "submit", "--url", broker.url, "--type", "c2",
                            "--miner", "f01000", str(payload))
            assert done.returncode == 1, done.stderr
            assert f"Payload folder {folder} cannot be used" in done.stderr, done.stderr
            assert "Traceback" not in done.stderr and "Core" not in done.stderr
    finally:
        subprocess.run(["chattr", "-i", str(folder)], capture_output=True)


def test_an_empty_payload_is_refused_at_submit(
    sqlite_dsn: str, broker_factory: BrokerFactory, gpuproxy, tmp_path: pathlib.Path,  # type: ignore[no-untyped-def]
) -> None:
    broker = broker_factory(sqlite_dsn, "fs")
    empty = tmp_path / "empty.json"
    empty.write_bytes(b"")
    done = gpuproxy("tasks", "submit", "--url", broker.url, "--type", "c2", "--miner", "f01000",
                    str(empty))
    assert done.returncode == 1 and "the payload is empty" in done.stderr
    listed = gpuproxy("tasks", "list", "--url", broker.url, "--json")
    assert json.loads(listed.stdout) == []


@pytest.mark.parametrize("program", ["gpuproxy", "gpuproxy-worker", "cluster-c2-plugin"])
def test_every_program_says_its_version(program: str) -> None:
    import importlib.metadata

    done = subprocess.run([str(pathlib.Path(sys.executable).parent / program), "--version"],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0
    assert done.stdout.strip() == f"{program} {importlib.metadata.version('gpuproxy')}"


async def test_a_server_that_is_not_a_broker_is_named_as_such(
    gpuproxy, tmp_path: pathlib.Path,  # type: ignore[no-untyped-def]
) -> None:
    import grpc
    from grpc_health.v1 import health, health_pb2_grpc

    # Given a gRPC server that serves something else (health only) at the address
    server = grpc.aio.server()
    health_pb2_grpc.add_HealthServicer_to_server(health.aio.HealthServicer(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        done = await asyncio.to_thread(gpuproxy, "tasks", "list", "--url", f"127.0.0.1:{port}")
    finally:
        await server.stop(0)
    assert done.returncode == 1
    assert f"The server at 127.0.0.1:{port} is not a gpuproxy broker" in done.stderr


def test_cancel_takes_several_tasks_and_names_the_ones_it_cannot(
    sqlite_dsn: str, broker_factory: BrokerFactory, gpuproxy, tmp_path: pathlib.Path,  # type: ignore[no-untyped-def]
) -> None:
    broker = broker_factory(sqlite_dsn, "fs")
    ids = []
    for seed in range(2):
        write_payload(tmp_path / f"c1-{seed}", 1000, seed)
        ids.append(gpuproxy("tasks", "submit", "--url", broker.url, "--type", "c2", "--miner",
                            "f01000", str(tmp_path / f"c1-{seed}")).stdout.strip())
    done = gpuproxy("tasks", "cancel", ids[0], "no-such-task", ids[1], "--reason", "wrong deal",
                    "--url", broker.url)
    # Both tasks are cancelled; the unknown one is named, and the status says not all were
    assert done.returncode == 1
    assert "no-such-task not cancelled: No task no-such-task" in done.stderr
    assert "1 of 3 tasks were not cancelled" in done.stderr
    rows = json.loads(gpuproxy("tasks", "list", "--url", broker.url, "--json").stdout)
    assert {r["id"]: (r["state"], r["error_message"]) for r in rows} == {
        i: ("error", "cancelled: wrong deal") for i in ids}


def test_with_json_logs_a_failed_command_says_so_in_one_json_line(
    gpuproxy, tmp_path: pathlib.Path,  # type: ignore[no-untyped-def]
) -> None:
    done = gpuproxy("tasks", "list", "--url", "127.0.0.1:1", "--log-format", "json")
    assert done.returncode == 1
    [line] = done.stderr.splitlines()
    said = json.loads(line)
    assert said["level"] == "error" and said["event"].startswith("No broker at 127.0.0.1:1")
    assert said["causes"] and said["timestamp"]


async def test_a_listing_piped_into_a_reader_that_stops_early_ends_quietly(
    broker_factory: BrokerFactory, sqlite_dsn: str, tmp_path: pathlib.Path,
) -> None:
    # `gpuproxy tasks list | head -1`: no "Broken pipe" error, the status SIGPIPE gives
    from tests.e2e.conftest import BIN, cli_env

    broker = broker_factory(sqlite_dsn)
    payload = tmp_path / "c1.json"
    write_payload(payload, 100)
    submitted = subprocess.run([str(BIN / "gpuproxy"), "tasks", "submit", "--url", broker.url,
                                "--type", "c2", str(payload)], env=cli_env(tmp_path),
                               capture_output=True, text=True, timeout=60)
    assert submitted.returncode == 0, submitted.stderr
    read, write = os.pipe()
    os.close(read)  # the reader is gone before the listing is written
    try:
        listing = subprocess.run([str(BIN / "gpuproxy"), "tasks", "list", "--url", broker.url,
                                  "--json"], stdout=write, stderr=subprocess.PIPE, text=True,
                                 env=cli_env(tmp_path), timeout=60)
    finally:
        os.close(write)
    assert listing.stderr == ""
    assert listing.returncode == 128 + signal.SIGPIPE


async def test_two_downloads_of_one_key_into_one_folder_both_succeed(
    sqlite_dsn: str, broker_factory: BrokerFactory, tmp_path: pathlib.Path,
) -> None:
    # Two workers sharing a params folder fetch the same proving key at once
    broker = broker_factory(sqlite_dsn)
    key = tmp_path / "big.zkey"
    sha = write_payload(key, 5 * 1024 * 1024 + 3)
    params = tmp_path / "params"
    params.mkdir()
    async with BrokerClient(broker.url) as client:
        await client.upload_resource(key)
        target = params / f"{sha}.zkey"
        done = await asyncio.gather(client.download_resource(sha, target),
                                    client.download_resource(sha, target))
    assert done == [(key.stat().st_size, sha)] * 2
    assert hashlib.sha256(target.read_bytes()).hexdigest() == sha
    assert [p.name for p in params.iterdir()] == [target.name]  # no temp file left


async def test_a_stream_cut_by_a_broker_gone_mid_call_says_the_broker_is_gone() -> None:
    # grpc fails a stream whose server died mid-upload as INTERNAL "Internal error from
    # Core", its cause lost: the client asks again, and says what it finds
    from tests.e2e.conftest import free_port

    url = f"127.0.0.1:{free_port()}"
    cut = grpc.aio.AioRpcError(grpc.StatusCode.INTERNAL, grpc.aio.Metadata(),
                               grpc.aio.Metadata(), details="Internal error from Core")
    async with BrokerClient(url, timeout_s=2) as client:
        said = await client._real_status(cut, url)
    assert isinstance(said, exceptions.BrokerUnreachable), said
    assert str(said).startswith(f"No broker at {url}")
