"""`c2` tasks (gpuproxy's type 0): a C2 input in, a PoRep proof out, through the operator's own
C2 processor speaking venus-worker's ext-processor protocol.

The payload is the C2 input JSON as venus-worker sends it,
`{"c1out": {...}, "prover_id": [32 bytes], "sector_id": N, "miner_id": N}`. It is checked here,
so a malformed one fails for good before the processor sees it, then handed to the processor as
submitted. The result bytes are the proof bytes (192 per partition).
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
from typing import Any

import structlog

from worker import c2proof, exceptions, executors
from worker.config import WorkerConfig
from worker.executors.base import Executor, Job
from worker.extproc import ExtProcessor

log = structlog.get_logger(__name__)

TASK_TYPE = "c2"
U64_MAX = 2**64 - 1


@dataclasses.dataclass(frozen=True)
class C2Input:
    """What the worker needs to know of a C2 input; the rest stays opaque."""

    sector_id: int
    miner_id: int
    registered_proof: str | None  #: c1out.registered_proof: the size its proof must have


def check_input(payload: bytes) -> C2Input:
    """Raises MalformedPayload unless the payload is a C2 input venus-worker would send."""
    try:
        data = json.loads(payload, parse_constant=_no_constant)
    except (ValueError, RecursionError) as exc:  # not JSON, or a number or nesting too large
        raise _malformed(f"not JSON this worker can read ({exc})") from None
    if not isinstance(data, dict):
        raise _malformed("not a JSON object")
    missing = [k for k in ("c1out", "prover_id", "sector_id", "miner_id") if k not in data]
    if missing:
        raise _malformed(f"missing {', '.join(missing)}")
    if not isinstance(data["c1out"], dict):
        raise _malformed("c1out is not a JSON object (the SealCommitPhase1Output)")
    if not _is_bytes(data["prover_id"], 32):
        raise _malformed("prover_id is not a list of 32 bytes")
    for key in ("sector_id", "miner_id"):
        if not _is_uint(data[key]) or data[key] > U64_MAX:
            raise _malformed(f"{key} is not an unsigned integer below 2^64")
    proof_type = data["c1out"].get("registered_proof")
    return C2Input(sector_id=data["sector_id"], miner_id=data["miner_id"],
                   registered_proof=proof_type if isinstance(proof_type, str) else None)


def proof_of(output: Any, processor: str, registered_proof: str | None) -> bytes:
    """The proof bytes of a C2Output `{"proof": [bytes]}`, of the size the sector's proof type
    gives: a wrong one fails this attempt, to be tried again (elsewhere, where another worker
    can), rather than reach the sealer as a finished task's result."""
    proof = output.get("proof") if isinstance(output, dict) else None
    if not _is_bytes(proof) or not proof:
        raise exceptions.ProcessorError(
            processor=processor, detail="its output has no proof (a non-empty list of bytes)"
        )
    problem = c2proof.proof_problem(bytes(proof), registered_proof)
    if problem is not None:
        raise exceptions.ProcessorError(processor=processor,
                                        detail=f"its output is not the sector's proof: {problem}")
    return bytes(proof)


def _no_constant(name: str) -> Any:
    # Python reads NaN and Infinity; serde, in the processor, does not (it would not answer).
    raise ValueError(f"{name} is not a JSON number")


def _is_uint(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _is_bytes(value: Any, length: int | None = None) -> bool:
    return (
        isinstance(value, list)
        and (length is None or len(value) == length)
        and all(_is_uint(b) and b < 256 for b in value)
    )


def _malformed(detail: str) -> exceptions.MalformedPayload:
    return exceptions.MalformedPayload(task_type=TASK_TYPE, detail=detail)


@executors.register(TASK_TYPE)
class C2Executor(Executor):
    def __init__(self, config: WorkerConfig) -> None:
        processor = config.processors.get(TASK_TYPE)
        if processor is None:
            raise exceptions.ConfigError(
                field="c2-bin",
                detail="c2 tasks run in the operator's C2 processor: give its binary with "
                "--c2-bin (and --c2-args, --c2-env), or a [[processors.c2]] block in --config",
            )
        self.processor = ExtProcessor(TASK_TYPE, processor)

    async def start(self) -> None:
        await self.processor.start()

    async def run(self, job: Job) -> bytes:
        payload = await asyncio.to_thread(job.payload.read_bytes)
        c2_input = await asyncio.to_thread(check_input, payload)
        log.info("proving", task_id=job.task_id, sector_id=c2_input.sector_id,
                 miner_id=c2_input.miner_id)
        await job.progress("proving", 0.0)
        output = await self.processor.call(payload, job.timeout_s)
        return proof_of(output, self.processor.name, c2_input.registered_proof)

    async def close(self) -> None:
        await self.processor.close()
