"""Framing of the ext-processor protocol and the c2 payload checks, without a process."""

from __future__ import annotations

import json

import pytest

from worker import exceptions
from worker.executors import c2
from worker.extproc import encode_request, parse_response, quote, ready_line

PROVER_ID = [1] + [0] * 31


def test_request_keeps_the_task_bytes() -> None:
    task = b'{"c1out":{"b":1.50,"a":1e3},"prover_id":[1],"sector_id":1,"miner_id":2}'
    assert encode_request(7, task) == b'{"id":7,"task":' + task + b"}\n"


def test_request_is_one_line_even_from_a_pretty_printed_task() -> None:
    task = b'{\r\n  "c1out": {"s": "a\\nb"},\n  "sector_id": 1\n}\n'
    line = encode_request(1, task)
    assert line.count(b"\n") == 1 and line.endswith(b"\n")
    assert json.loads(line)["task"] == json.loads(task)


def test_a_byte_order_mark_serde_would_refuse_is_not_sent() -> None:
    task = b'\xef\xbb\xbf{"c1out":{},"sector_id":1}'
    assert encode_request(2, task) == b'{"id":2,"task":{"c1out":{},"sector_id":1}}\n'


def test_ready_line() -> None:
    assert ready_line("c2") == "c2 processor ready"


def test_response_with_output() -> None:
    response = parse_response(b'{"id":7,"err_msg":null,"output":{"proof":[1,2]}}\n')
    assert (response.id, response.err_msg, response.output) == (7, None, {"proof": [1, 2]})


def test_response_with_error() -> None:
    response = parse_response(b'{"id":8,"err_msg":"task t sector 164 error reason: x",'
                              b'"output":null}')
    assert response.id == 8 and response.err_msg is not None and "sector 164" in response.err_msg


@pytest.mark.parametrize(("line", "complaint"), [
    (b"Segmentation fault", "not JSON"),
    (b"\xff\xfe", "not JSON"),
    (b"[1]", "not a JSON object"),
    (b'{"err_msg":null,"output":{}}', "no integer id"),
    (b'{"id":true,"err_msg":null,"output":{}}', "no integer id"),
    (b'{"id":"7","err_msg":null,"output":{}}', "no integer id"),
    (b'{"id":1,"err_msg":null,"output":null}', "neither err_msg nor output"),
    (b'{"id":1,"err_msg":5,"output":null}', "err_msg"),
])
def test_bad_responses_say_what_is_wrong(line: bytes, complaint: str) -> None:
    with pytest.raises(ValueError, match=complaint):
        parse_response(line)


def test_quote_keeps_the_start_of_long_lines() -> None:
    assert quote(b"short\n") == "short"
    long = quote("x" * 500)
    assert long.startswith("x" * 120) and long.endswith("...") and len(long) == 123


def c2_payload(**changes: object) -> bytes:
    data: dict[str, object] = {"c1out": {"comm_r": [0] * 32}, "prover_id": PROVER_ID,
                               "sector_id": 163, "miner_id": 3652}
    data.update(changes)
    return json.dumps({k: v for k, v in data.items() if v is not None}).encode()


def test_a_c2_input_as_venus_worker_sends_it() -> None:
    assert c2.check_input(c2_payload()) == c2.C2Input(sector_id=163, miner_id=3652,
                                                       registered_proof=None)
    typed = c2_payload(c1out={"registered_proof": "StackedDrg32GiBV1_1"})
    assert c2.check_input(typed).registered_proof == "StackedDrg32GiBV1_1"


@pytest.mark.parametrize(("payload", "complaint"), [
    (b"", "not JSON"),
    (b"\x89PNG", "not JSON"),
    (b'"c1out"', "not a JSON object"),
    (c2_payload(c1out=None), "missing c1out"),
    (c2_payload(miner_id=None, sector_id=None), "missing sector_id, miner_id"),
    (c2_payload(c1out="base64"), "c1out is not a JSON object"),
    (c2_payload(prover_id=[0] * 31), "prover_id"),
    (c2_payload(prover_id=[256] + [0] * 31), "prover_id"),
    (c2_payload(prover_id="f01000"), "prover_id"),
    (c2_payload(sector_id=-1), "sector_id is not an unsigned integer"),
    (c2_payload(sector_id=1.5), "sector_id"),
    (c2_payload(sector_id=2**64), "sector_id is not an unsigned integer below 2"),
    (c2_payload(c1out={"ticket": float("nan")}), "NaN is not a JSON number"),
    (c2_payload(miner_id=True), "miner_id"),
])
def test_malformed_c2_inputs_fail_for_good(payload: bytes, complaint: str) -> None:
    with pytest.raises(exceptions.MalformedPayload, match=complaint) as info:
        c2.check_input(payload)
    assert not info.value.retryable
    assert "c2 payload" in str(info.value)


def test_proof_bytes_come_from_the_output() -> None:
    proof = [0, 255, 7] * 64
    assert c2.proof_of({"proof": proof}, "p", None) == bytes(proof)
    assert c2.proof_of({"proof": proof * 10}, "p", "StackedDrg32GiBV1_1") == bytes(proof * 10)


@pytest.mark.parametrize("output", [None, {}, {"proof": []}, {"proof": [256]}, {"proof": "ab"}])
def test_output_without_a_proof_is_a_retryable_processor_error(output: object) -> None:
    with pytest.raises(exceptions.ProcessorError, match="no proof") as info:
        c2.proof_of(output, "c2 processor /bin/x", None)
    assert info.value.retryable


def test_a_proof_of_the_wrong_size_for_its_sector_fails_the_attempt_not_the_sealer() -> None:
    # A finished task's result is the sealer's answer: a processor's wrong output must not be one
    with pytest.raises(exceptions.ProcessorError, match="not the sector's proof: it has 192 "
                       "bytes, but a StackedDrg32GiBV1_1 proof has 1920") as info:
        c2.proof_of({"proof": [1] * 192}, "p", "StackedDrg32GiBV1_1")
    assert info.value.retryable
    with pytest.raises(exceptions.ProcessorError, match="not a multiple of the 192"):
        c2.proof_of({"proof": [1] * 200}, "p", None)
