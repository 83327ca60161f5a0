"""venus-worker's ext-processor protocol for the c2 stage, as pure functions on lines.

The child prints `c2 processor ready`, then reads one request per line,
`{"id":N,"task":{"c1out":{...},"prover_id":[32 bytes],"sector_id":N,"miner_id":N}}`, and
answers each with one line, `{"id":N,"err_msg":null,"output":{"proof":[bytes]}}` or
`{"id":N,"err_msg":"...","output":null}`, in any order.

The task is kept as the exact bytes it had in the line: they become the broker task's payload,
which the worker hands to the C2 processor as it came (see `rawjson` for why it is not decoded).
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any

from plugin import exceptions, rawjson

STAGE = "c2"
READY_LINE = f"{STAGE} processor ready\n".encode()
#: Largest unsigned integer serde's u64 takes (ids, sector and miner numbers).
U64_MAX = 2**64 - 1
#: What is walked of a request in one pass: the task, and the c1out inside it.
REQUEST_TREE: rawjson.Tree = {"task": {"c1out": {}}}


@dataclasses.dataclass(frozen=True)
class C2Request:
    id: int
    task: bytes  #: the C2 input JSON as it was in the line, byte for byte
    sector_id: int
    miner_id: int
    registered_proof: str | None  #: c1out.registered_proof, e.g. "StackedDrg32GiBV1_1"

    @property
    def miner(self) -> str:
        """The miner's address as the broker keeps it: f0<actor id>."""
        return f"f0{self.miner_id}"

    @property
    def comment(self) -> str:
        return f"sector {self.sector_id}"


def parse_request(line: bytes) -> C2Request:
    """One request line; MalformedRequest (with the id when it could be read) otherwise."""
    found: dict[rawjson.Path, rawjson.Span] = {}
    try:
        start = rawjson.skip_whitespace(line, 0)
        rawjson.ends_after(line, rawjson.members(line, start, found, REQUEST_TREE))
    except rawjson.JsonSyntaxError as exc:
        raise _malformed(f"the line is not a JSON object ({exc})", _id_of(line, found)) from None
    request_id = _id_of(line, found)
    if request_id is None:
        raise _malformed("the request has no id (an unsigned integer)", None)
    problem = _task_problem(line, found)
    if problem:
        raise _malformed(problem, request_id)
    start, end = found[("task",)]
    proof_type = _decoded(line, found, ("task", "c1out", "registered_proof"))
    return C2Request(
        id=request_id, task=line[start:end],
        sector_id=_decoded(line, found, ("task", "sector_id")),
        miner_id=_decoded(line, found, ("task", "miner_id")),
        registered_proof=proof_type if isinstance(proof_type, str) else None,
    )


def _task_problem(line: bytes, found: dict[rawjson.Path, rawjson.Span]) -> str | None:
    """What makes the task something other than a C2 input, if anything."""
    task = found.get(("task",))
    if task is None:
        return "the request has no task"
    if line[task[0]:task[0] + 1] != b"{":
        return "task is not a JSON object"
    missing = [key for key in ("c1out", "prover_id", "sector_id", "miner_id")
               if ("task", key) not in found]
    if missing:
        return f"task has no {', '.join(missing)}"
    c1out = found[("task", "c1out")]
    if line[c1out[0]:c1out[0] + 1] != b"{":
        return "task.c1out is not a JSON object (the SealCommitPhase1Output)"
    if not _is_bytes(_decoded(line, found, ("task", "prover_id")), 32):
        return "task.prover_id is not a list of 32 bytes"
    for key in ("sector_id", "miner_id"):
        if not _is_u64(_decoded(line, found, ("task", key))):
            return f"task.{key} is not an unsigned integer"
    return None


def _decoded(line: bytes, found: dict[rawjson.Path, rawjson.Span], path: rawjson.Path) -> Any:
    """The small value at `path`; None when it is absent or not JSON."""
    span = found.get(path)
    if span is None:
        return None
    try:
        return rawjson.decode(line, span)
    except rawjson.JsonSyntaxError:
        return None


def _id_of(line: bytes, found: dict[rawjson.Path, rawjson.Span]) -> int | None:
    value = _decoded(line, found, ("id",))
    return value if _is_u64(value) else None


def _is_u64(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= U64_MAX


def _is_bytes(value: Any, length: int) -> bool:
    return isinstance(value, list) and len(value) == length and all(
        _is_u64(b) and b < 256 for b in value
    )


def _malformed(detail: str, request_id: int | None) -> exceptions.MalformedRequest:
    return exceptions.MalformedRequest(detail=detail, request_id=request_id)


# -- responses ------------------------------------------------------------------------------------


def proof_line(request_id: int, proof: bytes) -> bytes:
    """`{"id":N,"err_msg":null,"output":{"proof":[...]}}` and a newline."""
    numbers = ",".join(map(str, proof))
    return b'{"id":%d,"err_msg":null,"output":{"proof":[%s]}}\n' % (request_id, numbers.encode())


def error_line(request_id: int, message: str) -> bytes:
    """`{"id":N,"err_msg":"...","output":null}` and a newline. Characters UTF-8 cannot hold
    (a lone surrogate: a file name that is not UTF-8) are written as backslash escapes: the
    answer must go out, and serde refuses a JSON escape of a lone surrogate."""
    clean = message.encode("utf-8", "backslashreplace").decode("utf-8")
    text = json.dumps(clean, ensure_ascii=False)
    return b'{"id":%d,"err_msg":%s,"output":null}\n' % (request_id, text.encode())
