"""One request's way through the broker, against a scripted stand-in for BrokerClient: the
idempotent submit, the watch and its fallbacks, outages, the deadline and the proof check."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import pathlib
import re
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest

from broker import exceptions as broker_exceptions
from plugin import exceptions, protocol
from plugin.config import PluginConfig
from plugin.waiter import Waiter
from protos.gpuproxy.v1 import tasks_pb2

INIT, RUNNING = tasks_pb2.TASK_STATE_INIT, tasks_pb2.TASK_STATE_RUNNING
ERROR, FINISHED = tasks_pb2.TASK_STATE_ERROR, tasks_pb2.TASK_STATE_FINISHED
PROOF = bytes(range(192))
TASK = (b'{"c1out":{"registered_proof":"StackedDrg2KiBV1_1"},"prover_id":' +
        json.dumps([1] + [0] * 31).encode() + b',"sector_id":163,"miner_id":1000}')


def failure(code: grpc.StatusCode, detail: str = "boom") -> broker_exceptions.BrokerError:
    err: broker_exceptions.BrokerError
    if code is grpc.StatusCode.UNAVAILABLE:
        err = broker_exceptions.BrokerUnreachable(url="b:1", detail=detail)
    else:
        err = broker_exceptions.RemoteError(detail=detail)
    err.code = code  # type: ignore[attr-defined]
    return err


def task(state: int, **fields: Any) -> tasks_pb2.Task:
    return tasks_pb2.Task(id="t1", state=state, max_attempts=3, **fields)  # type: ignore[arg-type]


@dataclasses.dataclass
class FakeBroker:
    """Answers from scripts: each call pops its next answer (an exception is raised)."""

    url: str = "127.0.0.1:18888"  #: the broker called now, as BrokerClient says

    submits: list[Any] = dataclasses.field(default_factory=list)
    watches: list[list[Any]] = dataclasses.field(default_factory=list)
    gets: list[Any] = dataclasses.field(default_factory=list)
    resets: list[Any] = dataclasses.field(default_factory=list)
    results: list[Any] = dataclasses.field(default_factory=list)
    calls: list[str] = dataclasses.field(default_factory=list)
    submitted: list[tuple[bytes, dict[str, Any]]] = dataclasses.field(default_factory=list)

    async def submit_file(self, path: pathlib.Path, **header: Any) -> tasks_pb2.Task:
        self.calls.append("submit")
        self.submitted.append((path.read_bytes(), header))
        return _answer(self.submits.pop(0))

    async def get_task(self, task_id: str) -> tasks_pb2.Task:
        self.calls.append("get")
        return _answer(self.gets.pop(0))

    async def reset(self, task_ids: list[str]) -> list[tasks_pb2.Task]:
        self.calls.append("reset")
        return [_answer(self.resets.pop(0))]

    async def watch(self, task_id: str) -> AsyncIterator[tasks_pb2.Task]:
        self.calls.append("watch")
        for item in self.watches.pop(0):
            yield _answer(item)

    async def download_result(self, task_id: str, out: pathlib.Path) -> tuple[int, str]:
        self.calls.append("result")
        data = _answer(self.results.pop(0))
        out.write_bytes(data)
        return len(data), ""


def _answer(item: Any) -> Any:
    if isinstance(item, BaseException):
        raise item
    return item


@pytest.fixture
def prove(tmp_path: pathlib.Path) -> Any:
    async def run(broker: FakeBroker, **settings: Any) -> bytes:
        config = PluginConfig(**{"retry_min_s": 0.001, "retry_max_s": 0.002,
                                 "poll_interval_s": 0.001, **settings})
        waiter = Waiter(config, broker, tmp_path)  # type: ignore[arg-type]
        request = protocol.parse_request(b'{"id":7,"task":%s}\n' % TASK)
        staged = await waiter.stage(request)
        try:
            return await waiter.prove(staged)
        finally:
            assert not list(tmp_path.iterdir())  # no files left behind

    return run


async def test_a_new_task_is_submitted_watched_and_its_proof_returned(prove: Any) -> None:
    broker = FakeBroker(submits=[task(INIT)], watches=[[task(INIT), task(RUNNING),
                                                        task(FINISHED)]], results=[PROOF])
    assert await prove(broker) == PROOF
    assert broker.calls == ["submit", "watch", "result"]
    [(payload, header)] = broker.submitted
    assert payload == TASK
    assert header == {"task_type": "c2", "miner": "f01000", "comment": "sector 163",
                      "rerun": None, "rerun_result": ""}


async def test_a_finished_task_is_answered_without_waiting(prove: Any) -> None:
    broker = FakeBroker(submits=[task(FINISHED)], results=[PROOF])
    assert await prove(broker) == PROOF
    assert broker.calls == ["submit", "result"]


async def test_a_task_in_error_is_reset_and_waited_for(prove: Any) -> None:
    broker = FakeBroker(submits=[task(ERROR, error_message="old")], resets=[task(INIT)],
                        watches=[[task(INIT), task(FINISHED)]], results=[PROOF])
    assert await prove(broker) == PROOF
    assert broker.calls == ["submit", "reset", "watch", "result"]


async def test_a_reset_someone_else_did_first_is_fine(prove: Any) -> None:
    broker = FakeBroker(submits=[task(ERROR)], resets=[failure(
        grpc.StatusCode.FAILED_PRECONDITION)], gets=[task(RUNNING)],
        watches=[[task(FINISHED)]], results=[PROOF])
    assert await prove(broker) == PROOF


async def test_a_task_ending_in_error_is_the_answer(prove: Any) -> None:
    broker = FakeBroker(submits=[task(INIT)], watches=[[task(ERROR, error_message="bad GPU")]])
    with pytest.raises(exceptions.TaskFailed, match="task t1 sector 163 error reason: bad GPU"):
        await prove(broker)


async def test_outages_are_waited_out_at_every_step(prove: Any) -> None:
    down = failure(grpc.StatusCode.UNAVAILABLE)
    broker = FakeBroker(
        submits=[down, asyncio.InvalidStateError("RPC already finished"), task(INIT)],
        watches=[[task(RUNNING), down], [down], [task(RUNNING), task(FINISHED)]],
        results=[down, PROOF],
    )
    assert await prove(broker) == PROOF
    assert broker.calls == ["submit"] * 3 + ["watch"] * 3 + ["result"] * 2


async def test_a_task_the_broker_lost_is_submitted_again(prove: Any) -> None:
    broker = FakeBroker(submits=[task(RUNNING), task(INIT)],
                        watches=[[failure(grpc.StatusCode.NOT_FOUND)], [task(FINISHED)]],
                        results=[PROOF])
    assert await prove(broker) == PROOF
    assert broker.calls == ["submit", "watch", "submit", "watch", "result"]


async def test_a_watch_the_broker_does_not_hold_falls_back_to_polling(prove: Any) -> None:
    unimplemented = failure(grpc.StatusCode.UNIMPLEMENTED)
    broker = FakeBroker(submits=[task(INIT)], watches=[[unimplemented], [task(RUNNING)]],
                        gets=[task(RUNNING), task(FINISHED)], results=[PROOF])
    assert await prove(broker) == PROOF
    # A stream that ends before the task does counts as not held too.
    assert broker.calls == ["submit", "watch", "get", "watch", "get", "result"]


async def test_a_refusal_fails_the_request_at_once(prove: Any) -> None:
    broker = FakeBroker(submits=[failure(grpc.StatusCode.RESOURCE_EXHAUSTED, "over 1 GiB")])
    with pytest.raises(exceptions.Refused, match="refused to submit the task for sector 163: "
                       "over 1 GiB"):
        await prove(broker)


async def test_the_deadline_gives_up_saying_what_was_tried(prove: Any) -> None:
    down = failure(grpc.StatusCode.UNAVAILABLE, "connection refused")
    broker = FakeBroker(submits=[task(INIT)], watches=[[task(RUNNING, worker_id="w1",
                                                             attempts=1), down]] + [[down]] * 10**5)
    with pytest.raises(exceptions.GaveUp) as caught:
        await prove(broker, deadline_s=0.2)
    message = str(caught.value)
    assert message.startswith("Gave up on sector 163 after 0.2 s (--deadline-s): task t1 was "
                              "last seen running on worker w1, attempt 1/3; submitted once; ")
    assert "failed calls to the broker, retried with backoff (the last: wait for the task: No " \
        "broker at b:1" in message
    assert "connection refused" in message


@pytest.mark.parametrize(("result", "complaint"), [
    (b"", "it is empty"),
    (bytes(1920), "it has 1920 bytes, but a StackedDrg2KiBV1_1 proof has 192"),
    (failure(grpc.StatusCode.NOT_FOUND, "Payload ab is not stored"),
     "the broker cannot give it .Payload ab is not stored"),
    (failure(grpc.StatusCode.DATA_LOSS, "damaged"), "the broker cannot give it .damaged"),
])
async def test_a_result_that_cannot_be_the_proof_runs_the_task_again(
    prove: Any, result: Any, complaint: str
) -> None:
    # Given a finished task whose result is wrong for the sector, or lost by the broker
    broker = FakeBroker(submits=[task(FINISHED, worker_id="w9", result_sha256="ab" * 32),
                                 task(INIT)],
                        watches=[[task(RUNNING), task(FINISHED, worker_id="w2")]],
                        results=[result, PROOF])
    # Then it is submitted again asking to run it again, and the new run's proof is the answer
    assert await prove(broker) == PROOF
    assert broker.calls == ["submit", "result", "submit", "watch", "result"]
    rerun = broker.submitted[1][1]["rerun"]
    assert rerun.startswith("the plugin dropped its result: ")
    assert re.search(complaint, rerun)
    assert broker.submitted[1][1]["rerun_result"] == "ab" * 32  # the result found wrong only


async def test_a_result_that_keeps_being_wrong_is_the_answer_after_two_runs_again(
    prove: Any,
) -> None:
    wrong = bytes(1920)
    broker = FakeBroker(submits=[task(FINISHED, worker_id="w9")] + [task(INIT)] * 2,
                        watches=[[task(FINISHED, worker_id="w9")]] * 2, results=[wrong] * 3)
    with pytest.raises(exceptions.NotAProof, match="finished 3 times, but its result is not a "
                       "proof: it has 1920 bytes") as caught:
        await prove(broker)
    assert "Check the C2 processor of worker w9" in str(caught.value)
    assert broker.calls.count("submit") == 3
