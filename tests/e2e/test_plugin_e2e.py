"""`cluster-c2-plugin` driven as venus-worker drives it (a child on pipes: the ready line, one
request per line, answers matched by id), with a real broker and a real worker running the
stand-in C2 processor (tests/fixtures/fake_c2.py)."""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import json
import pathlib
import re
import shutil
import signal
import time
from collections.abc import AsyncIterator, Callable, Coroutine
from typing import Any

import pytest

from broker.client import BrokerClient
from plugin import workdir
from protos.gpuproxy.v1 import tasks_pb2
from tests.e2e import test_worker_e2e as worker_e2e
from tests.e2e.conftest import (
    BIN,
    BrokerFactory,
    BrokerProcess,
    WorkerFactory,
    WorkerProcess,
    cli_env,
    free_port,
)
from tests.fixtures import fake_c2

PROVER_ID = [1] + [0] * 31
#: Short waits, so that a broker outage costs the tests about a second.
FAST = ["--retry-min-s", "0.2", "--retry-max-s", "0.5", "--log-level", "debug"]


def task_bytes(sector_id: int, proof_type: str = "StackedDrg2KiBV1_1", partitions: int = 1,
               extra: str = "") -> bytes:
    """A C2 input as venus-worker's serde writes it; `extra` adds c1out members verbatim."""
    vanilla = json.dumps({"v": [[sector_id]] * partitions}, separators=(",", ":"))
    c1out = f'{{"registered_proof":"{proof_type}","vanilla_proofs":{vanilla}{extra}}}'
    prover = json.dumps(PROVER_ID, separators=(",", ":"))
    return (f'{{"c1out":{c1out},"prover_id":{prover},"sector_id":{sector_id},'
            f'"miner_id":1000}}').encode()


def request_line(request_id: int, task: bytes) -> bytes:
    return b'{"id":%d,"task":%s}\n' % (request_id, task)


def proof_of(task: bytes) -> list[int]:
    return list(fake_c2.expected_proof(json.loads(task)))


@dataclasses.dataclass
class PluginProcess:
    proc: asyncio.subprocess.Process
    log_path: pathlib.Path
    ready: bytes = b""
    answers: dict[int, dict[str, Any]] = dataclasses.field(default_factory=dict)
    lines: list[bytes] = dataclasses.field(default_factory=list)

    async def send(self, line: bytes) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(line)
        await self.proc.stdin.drain()

    async def answer(self, request_id: int, timeout_s: float = 20.0) -> dict[str, Any]:
        """The response for `request_id`, reading (and keeping) the others on the way."""
        assert self.proc.stdout is not None
        async with asyncio.timeout(timeout_s):
            while request_id not in self.answers:
                line = await self.proc.stdout.readline()
                assert line, f"the plugin closed stdout:\n{self.logs()}"
                self.lines.append(line)
                response = json.loads(line)
                assert set(response) == {"id", "err_msg", "output"}
                assert (response["err_msg"] is None) != (response["output"] is None)
                self.answers[response["id"]] = response
        return self.answers[request_id]

    async def proof(self, request_id: int, timeout_s: float = 20.0) -> list[int]:
        response = await self.answer(request_id, timeout_s)
        assert response["err_msg"] is None, response["err_msg"]
        proof: list[int] = response["output"]["proof"]
        return proof

    async def error(self, request_id: int, timeout_s: float = 20.0) -> str:
        response = await self.answer(request_id, timeout_s)
        assert response["output"] is None, "expected an error, got a proof"
        message: str = response["err_msg"]
        return message

    async def wait_for_log(self, text: str, timeout_s: float = 20.0) -> None:
        deadline = time.monotonic() + timeout_s
        while text not in self.logs():
            assert time.monotonic() < deadline, f"no {text!r} in the plugin log:\n{self.logs()}"
            await asyncio.sleep(0.05)

    def logs(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


PluginFactory = Callable[..., Coroutine[Any, Any, PluginProcess]]


@pytest.fixture
async def plugin_factory(
    tmp_path: pathlib.Path, request: pytest.FixtureRequest
) -> AsyncIterator[PluginFactory]:
    """factory(url, extra=[...]): a started plugin that has printed its ready line."""
    started: list[PluginProcess] = []

    async def make(url: str, extra: list[str] | None = None,
                   env_add: dict[str, str] | None = None) -> PluginProcess:
        log_path = tmp_path / f"plugin-{len(started)}.log"
        env = {k: v for k, v in cli_env(tmp_path).items() if not k.startswith("C2PROXY_")}
        env.update(env_add or {})
        with log_path.open("ab") as log:
            proc = await asyncio.create_subprocess_exec(
                str(BIN / "cluster-c2-plugin"), "run", "--gpuproxy-url", f"http://{url}",
                *FAST, *(extra or []), stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE, stderr=log, env=env, limit=16 * 1024 * 1024,
            )
        plugin = PluginProcess(proc, log_path)
        started.append(plugin)
        assert proc.stdout is not None
        async with asyncio.timeout(10):
            plugin.ready = await proc.stdout.readline()
        assert plugin.ready == b"c2 processor ready\n", plugin.logs()
        return plugin

    yield make
    for plugin in started:
        if plugin.proc.returncode is None:
            plugin.proc.kill()
            await plugin.proc.wait()
    if request.node.rep_call.failed if hasattr(request.node, "rep_call") else False:
        for plugin in started:
            print(f"--- {plugin.log_path.name} ---\n{plugin.logs()}")


@pytest.fixture
def broker(sqlite_dsn: str, broker_factory: BrokerFactory) -> BrokerProcess:
    return broker_factory(sqlite_dsn, "fs", extra=[
        "--lease-s", "6", "--retry-backoff-s", "0.1", "--max-attempts", "1",
    ])


async def tasks_on(url: str) -> list[tasks_pb2.Task]:
    async with BrokerClient(url) as client:
        return list((await client.list_tasks()).tasks)


async def test_concurrent_requests_get_their_proofs(
    broker: BrokerProcess, worker_factory: WorkerFactory, plugin_factory: PluginFactory,
    tmp_path: pathlib.Path,
) -> None:
    # Given a worker proving three tasks at once, and a plugin dumping what crosses the pipe
    record = tmp_path / "prover-input"
    worker_factory(broker.url, extra=["--max-tasks", "3"],
                   env={"FAKE_C2_SLEEP_S": "0.5", "FAKE_C2_RECORD": str(record)})
    plugin = await plugin_factory(broker.url, ["--dump-dir", str(tmp_path / "dump")])
    # When three requests arrive before any is answered: one with number formats and spacing
    # serde would not write, one with an aggregated (NI-PoRep) proof larger than a pipe buffer
    tasks = {
        1: task_bytes(161, extra=', "odd" : [1.50, 1e3, -0.0, "\\u00e9"]'),
        2: task_bytes(162),
        3: task_bytes(163, "StackedDrg32GiBV1_2_Feat_NonInteractivePoRep", partitions=400),
    }
    for request_id, task in tasks.items():
        await plugin.send(request_line(request_id, task))
    # Then each gets its own proof
    for request_id, task in tasks.items():
        assert await plugin.proof(request_id) == proof_of(task)
    assert len(plugin.lines[-1]) > 65536 or any(len(line) > 65536 for line in plugin.lines)
    # And the broker has one c2 task per sector, its payload the task's bytes as sent
    found = {t.comment: t for t in await tasks_on(broker.url)}
    assert sorted(found) == ["sector 161", "sector 162", "sector 163"]
    assert {(t.task_type, t.miner) for t in found.values()} == {("c2", "f01000")}
    assert found["sector 161"].payload_sha256 == hashlib.sha256(tasks[1]).hexdigest()
    assert tasks[1] in record.read_bytes()  # and so reached the prover
    # And the dump folder has every line as it crossed the pipe
    dumps = {p.name.split("-", 2)[2]: p.read_bytes() for p in (tmp_path / "dump").iterdir()}
    assert dumps["1.request"] == request_line(1, tasks[1])
    assert sorted(dumps) == ["1.request", "1.response", "2.request", "2.response",
                             "3.request", "3.response"]
    assert {dumps[f"{i}.response"] for i in tasks} == set(plugin.lines)


async def test_a_staging_folder_removed_under_an_idle_plugin_is_made_again(
    broker: BrokerProcess, worker_factory: WorkerFactory, plugin_factory: PluginFactory,
    tmp_path: pathlib.Path,
) -> None:
    # Given a plugin whose staging folder a /tmp cleaner removed while it sat idle
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    worker_factory(broker.url)
    plugin = await plugin_factory(broker.url, env_add={"TMPDIR": str(tmp)})
    [folder] = tmp.iterdir()
    shutil.rmtree(folder)
    # When a request comes, it is proved all the same, and the folder is there again, locked
    task = task_bytes(5)
    await plugin.send(request_line(1, task))
    assert await plugin.proof(1) == proof_of(task)
    assert (folder / workdir.LOCK).is_file() and workdir.remove_left_by_dead(tmp) == []
    assert "the staging folder was removed by something else; made again" in plugin.logs()


async def test_the_same_request_twice_makes_one_task(
    broker: BrokerProcess, worker_factory: WorkerFactory, plugin_factory: PluginFactory,
) -> None:
    worker_factory(broker.url, env={"FAKE_C2_SLEEP_S": "0.5"})
    plugin = await plugin_factory(broker.url)
    task = task_bytes(7)
    # Twice at once, then once more when the task is finished (answered at once)
    await plugin.send(request_line(1, task))
    await plugin.send(request_line(2, task))
    assert await plugin.proof(1) == await plugin.proof(2) == proof_of(task)
    await plugin.send(request_line(3, task))
    assert await plugin.proof(3) == proof_of(task)
    [only] = await tasks_on(broker.url)
    assert only.attempts == 1


async def test_a_broker_killed_and_restarted_mid_wait_still_yields_the_proof(
    broker: BrokerProcess, worker_factory: WorkerFactory, plugin_factory: PluginFactory,
) -> None:
    # Given a request whose task is being proved
    worker_factory(broker.url, env={"FAKE_C2_SLEEP_S": "3"})
    plugin = await plugin_factory(broker.url)
    task = task_bytes(164)
    await plugin.send(request_line(1, task))
    [submitted] = [t async for t in _wait_for_tasks(broker.url, 1)]
    await worker_e2e.until_proving(broker.url, submitted.id)
    # When the broker is killed and comes back
    broker.stop(signal.SIGKILL)
    await plugin.wait_for_log("broker unreachable")
    await asyncio.to_thread(broker.start)
    # Then the proof still arrives
    assert await plugin.proof(1) == proof_of(task)
    assert "broker reachable again" in plugin.logs()


async def _proving_through_the_first_of_two(
    dsn: str, broker_factory: BrokerFactory, worker_factory: WorkerFactory,
    plugin_factory: PluginFactory,
) -> tuple[BrokerProcess, BrokerProcess, WorkerProcess, PluginProcess, bytes]:
    """Brokers a and b on one database (leases far longer than a test), and a worker and a
    plugin given both, the worker proving the plugin's task through a."""
    a, b = (broker_factory(dsn, "fs", extra=["--lease-s", "60"]) for _ in range(2))
    both = f"{a.url},{b.url}"
    worker = worker_factory(both, env={"FAKE_C2_SLEEP_S": "3"})
    plugin = await plugin_factory(both)
    task = task_bytes(166)
    await plugin.send(request_line(1, task))
    [submitted] = [t async for t in _wait_for_tasks(b.url, 1)]
    await worker_e2e.until_proving(b.url, submitted.id)
    assert re.search(rf"registered +broker={a.url} ", worker.logs())
    return a, b, worker, plugin, task


async def test_workers_and_plugins_given_several_brokers_move_to_the_next_when_one_dies(
    mariadb_dsn: str, broker_factory: BrokerFactory, worker_factory: WorkerFactory,
    plugin_factory: PluginFactory, gpuproxy,  # type: ignore[no-untyped-def]
) -> None:
    # Given two brokers on one database, and a worker and a plugin that know both, the first
    # one proving a task through broker a (leases far longer than the test: no take-back)
    a, b, worker, plugin, task = await _proving_through_the_first_of_two(
        mariadb_dsn, broker_factory, worker_factory, plugin_factory)
    both = f"{a.url},{b.url}"
    # When broker a dies
    a.stop(signal.SIGKILL)
    # Then the worker resumes the task through b, and the plugin gets its proof from b,
    # before any lease could run out: the same attempt, proved once
    assert await plugin.proof(1) == proof_of(task)
    [done] = await tasks_on(b.url)
    assert done.attempts == 1 and done.state == tasks_pb2.TASK_STATE_FINISHED
    assert re.search(rf"reconnected to the broker +broker={b.url} ", worker.logs())
    assert f"broker={b.url}" in plugin.logs()
    # and the CLI given both reads the tasks from b, and shows the worker on b
    listed = gpuproxy("tasks", "list", "--url", both)
    assert listed.returncode == 0 and done.id in listed.stdout, listed.stderr
    workers = gpuproxy("workers", "list", "--url", both)
    assert workers.stdout.splitlines()[0].split()[-1] == "BROKER"
    assert workers.stdout.splitlines()[1].split()[-1] == b.url


async def test_a_broker_down_at_submit_time_is_waited_for(
    sqlite_dsn: str, broker_factory: BrokerFactory, worker_factory: WorkerFactory,
    plugin_factory: PluginFactory,
) -> None:
    port = free_port()
    plugin = await plugin_factory(f"127.0.0.1:{port}")
    task = task_bytes(165)
    await plugin.send(request_line(1, task))
    await plugin.wait_for_log("broker unreachable; retrying until the deadline")
    broker = broker_factory(sqlite_dsn, "fs", port=port)
    worker_factory(broker.url)
    assert await plugin.proof(1) == proof_of(task)


async def test_malformed_lines_get_error_answers_while_other_requests_go_on(
    broker: BrokerProcess, worker_factory: WorkerFactory, plugin_factory: PluginFactory,
    tmp_path: pathlib.Path,
) -> None:
    # Given a request being proved
    worker_factory(broker.url, env={"FAKE_C2_SLEEP_S": "1.5"})
    plugin = await plugin_factory(broker.url)
    good = task_bytes(166)
    await plugin.send(request_line(1, good))
    # When malformed lines follow it
    await plugin.send(b'{"id":2,"task":{"c1out":{"registered_proof":\n')  # cut short
    await plugin.send(b"Segmentation fault\n")  # no id to answer
    await plugin.send(request_line(3, good.replace(b'"prover_id":[1,', b'"prover_id":[')))
    await plugin.send(b'{"id":4,"task":{"c1out":{},"sector_id":1,"miner_id":2}}\n')
    await plugin.send(b"\n")
    # Then each one with an id gets an error, before the good request's proof
    assert "not a JSON object" in await plugin.error(2, timeout_s=5)
    assert "prover_id is not a list of 32 bytes" in await plugin.error(3, timeout_s=5)
    assert "task has no prover_id" in await plugin.error(4, timeout_s=5)
    assert 1 not in plugin.answers
    assert await plugin.proof(1) == proof_of(good)
    assert "line ignored: no request id can be read in it" in plugin.logs()
    assert len(await tasks_on(broker.url)) == 1


async def test_lines_json_cannot_decode_do_not_end_the_plugin(
    broker: BrokerProcess, worker_factory: WorkerFactory, plugin_factory: PluginFactory,
) -> None:
    # Given a request being proved
    worker_factory(broker.url, env={"FAKE_C2_SLEEP_S": "1.5"})
    plugin = await plugin_factory(broker.url)
    good = task_bytes(171)
    await plugin.send(request_line(1, good))
    # When an id of 5000 digits, and a prover_id nested 100000 arrays deep, follow it (json
    # raises ValueError and RecursionError on them)
    await plugin.send(b'{"id":%s,"task":%s}\n' % (b"9" * 5000, good))
    deep = b"[" * 100_000 + b"]" * 100_000
    await plugin.send(request_line(3, good.replace(json.dumps(
        PROVER_ID, separators=(",", ":")).encode(), deep)))
    # Then the one with an id gets an error, the other is logged, and the proof still comes
    assert "prover_id is not a list of 32 bytes" in await plugin.error(3, timeout_s=5)
    assert await plugin.proof(1) == proof_of(good)
    assert sorted(plugin.answers) == [1, 3]
    assert "line ignored: no request id can be read in it" in plugin.logs()
    assert plugin.proc.returncode is None and "Traceback" not in plugin.logs()


async def test_a_task_in_error_is_reported_then_reset_when_asked_again(
    broker: BrokerProcess, worker_factory: WorkerFactory, plugin_factory: PluginFactory,
) -> None:
    # Given a worker whose prover fails (and a broker that gives each task one attempt)
    failing = worker_factory(broker.url, env={"FAKE_C2_FAIL": "GPU fell off the bus"})
    plugin = await plugin_factory(broker.url)
    task = task_bytes(167)
    await plugin.send(request_line(1, task))
    # Then the error is the request's answer, as gpuproxy's plugin wrote it
    message = await plugin.error(1)
    assert message.startswith("task ") and "sector 167 error reason:" in message
    assert "GPU fell off the bus" in message
    # When venus-worker asks again and a good worker is there
    assert failing.proc is not None
    failing.proc.kill()
    async with asyncio.timeout(10):  # gone from the broker, which would give it the task again
        while "worker disconnected" not in broker.logs():
            await asyncio.sleep(0.02)
    worker_factory(broker.url, gpu=1)
    await plugin.send(request_line(2, task))
    # Then the same task is reset and proved
    assert await plugin.proof(2) == proof_of(task)
    [only] = await tasks_on(broker.url)
    async with BrokerClient(broker.url) as client:
        history = (await client.get_task(only.id)).history
    assert [a.outcome for a in history] == ["failed", "reset", "finished"]


async def test_a_proof_of_the_wrong_size_fails_on_the_worker_and_is_the_answer(
    broker: BrokerProcess, worker_factory: WorkerFactory, plugin_factory: PluginFactory,
) -> None:
    # A 32 GiB sector needs 10 partitions; this prover returns one
    worker_factory(broker.url)
    plugin = await plugin_factory(broker.url)
    await plugin.send(request_line(1, task_bytes(168, "StackedDrg32GiBV1_1")))
    message = await plugin.error(1)
    # The attempt failed on the worker (retried, where attempts remain), never finished
    assert "sector 168 error reason:" in message
    assert "not the sector's proof: it has 192 bytes, but a StackedDrg32GiBV1_1 proof has " \
        "1920" in message


async def test_a_finished_task_whose_result_is_wrong_or_lost_runs_again(
    broker: BrokerProcess, sqlite_dsn: str, worker_factory: WorkerFactory,
    plugin_factory: PluginFactory, tmp_path: pathlib.Path,
) -> None:
    from tests.e2e.test_broker_cli import finish_from_outside

    # Given a task finished (by a worker of an older version, say) with a result that
    # cannot be a 2 KiB sector's proof
    plugin = await plugin_factory(broker.url)
    task = task_bytes(170)
    await plugin.send(request_line(1, task))
    await plugin.wait_for_log("task submitted")
    await finish_from_outside(sqlite_dsn, tmp_path / "payloads", b"x" * 100)
    await plugin.wait_for_log("running it again")
    # Then the plugin puts it back, and a worker makes the proof
    worker_factory(broker.url)
    assert await plugin.proof(1) == proof_of(task)
    [only] = await tasks_on(broker.url)
    async with BrokerClient(broker.url) as client:
        history = (await client.get_task(only.id)).history
    assert [a.outcome for a in history] == ["finished", "reset", "finished"]
    assert history[1].worker_id == "w-test"  # whose result was dropped
    assert "it has 100 bytes, but a StackedDrg2KiBV1_1 proof has 192" in history[1].reason

    # When its result is lost from the broker's folder, and the sealer asks again
    async with BrokerClient(broker.url) as client:
        sha = (await client.get_task(only.id)).result_sha256
    (tmp_path / "payloads" / sha[0:2] / sha[2:4] / sha).unlink()
    await plugin.send(request_line(2, task))
    # Then it runs again too, rather than fail on every ask until retention removes it
    assert await plugin.proof(2) == proof_of(task)
    async with BrokerClient(broker.url) as client:
        history = (await client.get_task(only.id)).history
    assert [a.outcome for a in history][3:] == ["reset", "finished"]
    assert "the broker cannot give it" in history[3].reason


async def test_end_of_stdin_or_sigterm_abandons_requests_in_flight_and_exits(
    broker: BrokerProcess, plugin_factory: PluginFactory,
) -> None:
    plugin = await plugin_factory(broker.url)
    await plugin.send(request_line(1, task_bytes(169)))
    await plugin.wait_for_log("task submitted")
    assert plugin.proc.stdin is not None
    plugin.proc.stdin.close()
    async with asyncio.timeout(10):
        assert await plugin.proc.wait() == 0
    assert "abandoning the requests in flight" in plugin.logs()
    [task] = await tasks_on(broker.url)  # still there for the next time
    assert task.state == tasks_pb2.TASK_STATE_INIT
    # SIGTERM ends it the same way, while stdin is still open
    again = await plugin_factory(broker.url)
    await again.send(request_line(1, task_bytes(169)))
    await again.wait_for_log("task submitted")
    again.proc.send_signal(signal.SIGTERM)
    async with asyncio.timeout(10):
        assert await again.proc.wait() == 0
    assert "abandoning the requests in flight" in again.logs()


async def test_the_deadline_answers_with_what_was_tried(plugin_factory: PluginFactory) -> None:
    plugin = await plugin_factory(f"127.0.0.1:{free_port()}", ["--deadline-s", "1"])
    await plugin.send(request_line(9, task_bytes(170)))
    message = await plugin.error(9, timeout_s=10)
    assert message.startswith("Gave up on sector 170 after 1 s")
    assert "the broker never accepted the task" in message and "No broker at" in message


async def _wait_for_tasks(url: str, count: int) -> AsyncIterator[tasks_pb2.Task]:
    async with asyncio.timeout(10):
        while len(tasks := await tasks_on(url)) < count:
            await asyncio.sleep(0.05)
    for task in tasks:
        yield task



@pytest.mark.slow
async def test_a_broker_that_goes_silent_is_left_for_the_next_within_its_keepalive(
    mariadb_dsn: str, broker_factory: BrokerFactory, worker_factory: WorkerFactory,
    plugin_factory: PluginFactory,
) -> None:
    # Given a worker and a plugin on broker a, the worker proving a task through it
    a, b, worker, plugin, task = await _proving_through_the_first_of_two(
        mariadb_dsn, broker_factory, worker_factory, plugin_factory)
    # When broker a's host stops answering without closing anything (SIGSTOP: its sockets stay
    # open, as a host that lost power leaves them at the other end)
    assert a.proc is not None
    a.proc.send_signal(signal.SIGSTOP)
    stopped = time.monotonic()
    try:
        # Then keepalive finds it dead, and the worker and the plugin go on through b before
        # the lease runs out: the same attempt, proved once
        assert await plugin.proof(1, timeout_s=50) == proof_of(task)
        took_s = time.monotonic() - stopped
        [done] = await tasks_on(b.url)
        assert done.attempts == 1 and done.state == tasks_pb2.TASK_STATE_FINISHED
        assert re.search(rf"reconnected to the broker +broker={b.url} ", worker.logs())
        assert took_s < 45, took_s
        print(f"silent broker left after {took_s:.1f} s")
    finally:
        a.proc.send_signal(signal.SIGCONT)
