"""The plugin's side of the ext-processor protocol, without a process: request lines in (the task
kept byte for byte), response lines out, and the JSON walk under them."""

from __future__ import annotations

import json

import pytest

from plugin import exceptions, protocol, rawjson

PROVER_ID = [1] + [0] * 31
C1OUT = (b'{"registered_proof":"StackedDrg32GiBV1_1","vanilla_proofs":{"StackedDrg32GiBV1":'
         b'[[{"p":[1,2,{"s":"a \\" ] } [ \\\\"}]}]]},"comm_r":[1,2],"seed":[3]}')
#: Values json.loads cannot decode though the walk takes them: an integer over Python's limit
#: of 4300 digits (ValueError), and arrays nested past the recursion limit (RecursionError).
HUGE_INT = b"9" * 5000
DEEP = b"[" * 100_000 + b"]" * 100_000


def c2_task(c1out: bytes = C1OUT, sector_id: int = 163, miner_id: int = 1000) -> bytes:
    prover = json.dumps(PROVER_ID, separators=(",", ":")).encode()
    return (b'{"c1out":%s,"prover_id":%s,"sector_id":%d,"miner_id":%d}'
            % (c1out, prover, sector_id, miner_id))


def line_of(request_id: int, task: bytes) -> bytes:
    return b'{"id":%d,"task":%s}\n' % (request_id, task)


def test_a_request_keeps_its_task_byte_for_byte() -> None:
    task = c2_task(b'{ "b" : 1.50, "a":1e3,"registered_proof": "StackedDrg2KiBV1_1" ,'
                   b'"x":"\\u00e9\\n"}')
    request = protocol.parse_request(line_of(7, task))
    assert request.task == task
    assert (request.id, request.sector_id, request.miner_id) == (7, 163, 1000)
    assert request.registered_proof == "StackedDrg2KiBV1_1"
    assert (request.miner, request.comment) == ("f01000", "sector 163")


def test_strings_with_brackets_and_quotes_inside_c1out_are_skipped_whole() -> None:
    request = protocol.parse_request(line_of(1, c2_task()))
    assert request.registered_proof == "StackedDrg32GiBV1_1"
    assert json.loads(request.task)["c1out"] == json.loads(C1OUT)


@pytest.mark.parametrize("line", [
    b'  {"task":%s , "id": 3 }\r\n',  # id after the task, spaces, CRLF
    b'{"id":3,"task":%s}',  # no newline (the last line before EOF)
])
def test_layouts_serde_does_not_write_are_still_read(line: bytes) -> None:
    request = protocol.parse_request(line % c2_task())
    assert request.id == 3 and request.task == c2_task()


def test_a_c1out_without_a_proof_type_is_read_with_none() -> None:
    request = protocol.parse_request(line_of(1, c2_task(b'{"vanilla_proofs":{}}')))
    assert request.registered_proof is None


def test_the_largest_u64_id_is_an_id() -> None:
    assert protocol.parse_request(line_of(2**64 - 1, c2_task())).id == 2**64 - 1


@pytest.mark.parametrize(("line", "request_id", "complaint"), [
    (b"Segmentation fault\n", None, "not a JSON object"),
    (b"[1,2]\n", None, "not a JSON object"),
    (b'{"id":5,"task":{"c1out":{"registered_proof":\n', 5, "not a JSON object"),
    (b'{"id":5,"task":{"c1out":{"a":[1,2}}}}\n', 5, "mismatched"),
    (b'{"id":5,"task":{"c1out":{"a":"open}}}}\n', 5, "unterminated"),
    (b'{"id":5,"task":{}} trailing\n', 5, "text after the end"),
    (b'{"id":5,"id":6,"task":{}}\n', 5, "duplicate key 'id'"),
    (b'{"id":5,"task":{"c1out":{}} x:1}\n', 5, "expected ',' or '}'"),
    (b'{"id":-1,"task":{}}\n', None, "no id"),
    (b'{"id":1.0,"task":{}}\n', None, "no id"),
    (b'{"id":"7","task":{}}\n', None, "no id"),
    (b'{"id":true,"task":{}}\n', None, "no id"),
    (b'{"id":18446744073709551616,"task":{}}\n', None, "no id"),
    (b'{"id":%s,"task":{}}\n' % HUGE_INT, None, "no id"),
    (b'{"id":%s,"task":{}}\n' % DEEP, None, "no id"),
    (b'{"id":5}\n', 5, "the request has no task"),
    (b'{"id":5,"task":[1]}\n', 5, "task is not a JSON object"),
    (b'{"id":5,"task":{"c1out":{},"sector_id":1}}\n', 5, "task has no prover_id, miner_id"),
    (b'{"id":5,"task":{"sector_id":1}}\n', 5, "task has no c1out, prover_id, miner_id"),
])
def test_malformed_lines_say_what_is_wrong_and_keep_the_id_when_readable(
    line: bytes, request_id: int | None, complaint: str
) -> None:
    with pytest.raises(exceptions.MalformedRequest, match=complaint) as caught:
        protocol.parse_request(line)
    assert caught.value.request_id == request_id


@pytest.mark.parametrize(("field", "value", "complaint"), [
    ("c1out", b'"base64"', "c1out is not a JSON object"),
    ("prover_id", b"[1,2]", "prover_id is not a list of 32 bytes"),
    ("prover_id", b"[" + b"256," * 31 + b"0]", "prover_id is not a list of 32 bytes"),
    ("prover_id", b"[1,,2]", "prover_id is not a list of 32 bytes"),
    ("sector_id", b"-3", "sector_id is not an unsigned integer"),
    ("sector_id", b'"163"', "sector_id is not an unsigned integer"),
    ("miner_id", b"1000.5", "miner_id is not an unsigned integer"),
    ("prover_id", DEEP, "prover_id is not a list of 32 bytes"),
    ("sector_id", HUGE_INT, "sector_id is not an unsigned integer"),
])
def test_task_fields_of_the_wrong_kind_are_malformed(
    field: str, value: bytes, complaint: str
) -> None:
    good = {"c1out": C1OUT, "prover_id": json.dumps(PROVER_ID).encode(), "sector_id": b"1",
            "miner_id": b"2"}
    good[field] = value
    task = b"{" + b",".join(b'"%s":%s' % (k.encode(), v) for k, v in good.items()) + b"}"
    with pytest.raises(exceptions.MalformedRequest, match=complaint) as caught:
        protocol.parse_request(line_of(9, task))
    assert caught.value.request_id == 9


def test_a_proof_response_is_serde_json() -> None:
    line = protocol.proof_line(7, bytes([140, 31, 0, 255]))
    assert line == b'{"id":7,"err_msg":null,"output":{"proof":[140,31,0,255]}}\n'


def test_an_error_response_escapes_its_message() -> None:
    line = protocol.error_line(8, 'task t sector 164 error reason: "quoted"\nsecond line é')
    assert line.endswith(b"}\n") and line.count(b"\n") == 1
    assert json.loads(line) == {"id": 8, "err_msg": 'task t sector 164 error reason: "quoted"'
                                "\nsecond line é", "output": None}


def test_an_error_message_with_a_character_utf8_cannot_hold_still_goes_out() -> None:
    # A staging folder whose name is not UTF-8 reaches the message as a lone surrogate
    line = protocol.error_line(9, "cannot use /tmp/\udcff/x")
    line.decode("utf-8")  # strict: valid UTF-8
    assert b'/tmp/\\\\udcff/x' in line  # an escaped backslash: no surrogate escape for serde
    assert json.loads(line)["err_msg"] == "cannot use /tmp/\\udcff/x"


def test_the_ready_line() -> None:
    assert protocol.READY_LINE == b"c2 processor ready\n"


# -- the walk itself ------------------------------------------------------------------------------


def test_walk_records_nested_members_in_one_pass() -> None:
    data = b'{"a": {"b": [1, {"c": 2}], "d": "x"}, "e": null}'
    found: dict[rawjson.Path, rawjson.Span] = {}
    end = rawjson.members(data, 0, found, {"a": {}})
    assert end == len(data)
    assert {k: data[s:e] for k, (s, e) in found.items()} == {
        ("a", "b"): b'[1, {"c": 2}]', ("a", "d"): b'"x"', ("a",): data[6:36], ("e",): b"null",
    }


@pytest.mark.parametrize("scalar", [b"0", b"-0.5", b"1e-7", b"2E+3", b"true", b"false", b"null"])
def test_scalars_are_values(scalar: bytes) -> None:
    assert rawjson.value_end(scalar + b",", 0) == len(scalar)


@pytest.mark.parametrize("bad", [b"01", b"+1", b".5", b"tru", b"'a'"])
def test_scalars_outside_the_grammar_are_refused(bad: bytes) -> None:
    with pytest.raises(rawjson.JsonSyntaxError):
        rawjson.ends_after(bad, rawjson.value_end(bad, 0))


@pytest.mark.parametrize("value", [HUGE_INT, DEEP, b'"\xff"', b"[1,,2]"])
def test_values_json_cannot_decode_are_syntax_errors(value: bytes) -> None:
    data = b'{"a":%s}' % value
    found: dict[rawjson.Path, rawjson.Span] = {}
    rawjson.members(data, 0, found)
    with pytest.raises(rawjson.JsonSyntaxError, match="undecodable value"):
        rawjson.decode(data, found[("a",)])


def test_a_large_c1out_is_walked_quickly() -> None:
    # About 28 MB of nested arrays of bytes, like a 32 GiB sector's C1 output (half a second
    # here, where json.loads takes over a second and several times the memory).
    row = b"[" + b",".join(b"%d" % (i % 256) for i in range(32)) + b"]"
    c1out = b'{"registered_proof":"StackedDrg32GiBV1_1","vanilla_proofs":[' + b",".join(
        [b'{"path":[' + b",".join([row] * 8) + b"]}"] * 40_000) + b"]}"
    request = protocol.parse_request(line_of(1, c2_task(c1out)))
    assert len(request.task) > 25_000_000 and request.registered_proof == "StackedDrg32GiBV1_1"
