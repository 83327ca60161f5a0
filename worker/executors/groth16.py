"""`groth16` tasks: a snarkjs witness (.wtns) in, a verified proof out, on this worker's backend.

The task's comment names the proving key as `zkey=<sha256>`; the key is the file
`<--params-dir>/<sha256>.zkey`, fetched from the broker on first use when it is not there
(`gpuproxy keys upload`), loaded once and kept across tasks. The result is
{"proof": <snarkjs proof.json>, "public": <public.json>}. Every proof is verified before it is
returned, as Filecoin's own C2 does: one made on a GPU that fails is made again on the CPU
(a faulty GPU), and one that fails there too fails the task for good (a wrong witness).
"""

from __future__ import annotations

import asyncio
import contextlib
import pathlib
import threading
import time

import grpc
import structlog

from broker import policy
from broker.client import PART_SUFFIX, BrokerClient
from broker.exceptions import BrokerError
from worker import exceptions, executors
from worker.config import WorkerConfig
from worker.cuda import select
from worker.executors.base import Executor, Job
from worker.groth16 import backends, field, keycache, proofjson, prover, verifier, wtns
from worker.groth16 import exceptions as g16

log = structlog.get_logger(__name__)

TASK_TYPE = "groth16"
#: Logged when a proof made on the GPU does not verify (`gpuproxy demo` reports it too)
GPU_PROOF_MADE_AGAIN = "the proof made on the GPU does not verify; proving again on the CPU"


def zkey_sha256(comment: str) -> str:
    """The key's sha256 from a task comment holding `zkey=<sha256>`; MalformedPayload if none."""
    found = policy.task_key(comment)
    if found is None:
        raise exceptions.MalformedPayload(
            task_type=TASK_TYPE, detail=f"the comment {comment!r} names no key: submit "
            "groth16 tasks with the comment zkey=<sha256 of the .zkey>")
    return found


#: A key download untouched for this long was left by a worker that died: one in flight (of
#: another worker sharing the params folder) writes to its file all along.
STALE_DOWNLOAD_S = 3600.0


def remove_stale_downloads(params_dir: pathlib.Path, now: float | None = None) -> int:
    """Delete `.<key>.zkey.*.part` files nobody has written to for STALE_DOWNLOAD_S (a worker
    killed mid-download leaves one, as large as the key); how many."""
    now = time.time() if now is None else now
    removed = 0
    for path in params_dir.glob(f".*.zkey.*{PART_SUFFIX}"):
        with contextlib.suppress(FileNotFoundError):
            if now - path.stat().st_mtime > STALE_DOWNLOAD_S:
                path.unlink()
                removed += 1
    return removed


@executors.register(TASK_TYPE)
class Groth16Executor(Executor):
    def __init__(self, config: WorkerConfig, backend_name: str | None = None) -> None:
        #: For keys: one client for the worker's life, which stays with a broker that answers
        self.broker = BrokerClient(config.url, timeout_s=600, token=config.token,
                                   tls_ca=config.tls_ca)
        self.params_dir = config.params_dir
        self.backend_name = backend_name or config.backend
        self.device = f"GPU {config.gpu}" if config.gpu is not None else "this host"
        self._cache: keycache.KeyCache | None = None
        self._cpu: backends.Backend | None = None  #: made when a device's proof is wrong

    async def start(self) -> None:
        if removed := await asyncio.to_thread(remove_stale_downloads, self.params_dir):
            log.info("removed key downloads a killed worker left behind", files=removed,
                     params_dir=str(self.params_dir))
        try:
            if self.backend_name in backends.NAMES:
                backend = await asyncio.to_thread(backends.create, self.backend_name)
                message = f"Groth16 backend: {self.backend_name}"
            else:  # auto or cuda: CUDA_VISIBLE_DEVICES already narrowed it to our GPU (0)
                backend, message = await asyncio.to_thread(
                    select.open_backend, self.backend_name, 0
                )
        except (g16.Groth16Error, ValueError) as exc:
            raise exceptions.ConfigError(field="backend", detail=f"groth16: {exc}") from exc
        log.info(message, backend=backend.name, runs_on=backend.describe())
        self._cache = keycache.KeyCache(backend)

    async def run(self, job: Job) -> bytes:
        sha256 = zkey_sha256(job.comment)
        await self.fetch_key(sha256, job)
        payload = await asyncio.to_thread(job.payload.read_bytes)
        await job.progress("proving", 0.0)
        try:
            return await self._prove_in_thread(job.task_id, sha256, payload)
        except exceptions.KeyFileUnusable as exc:
            # A truncated copy or a bad disk: the broker's copy, when it has one, replaces it.
            path = keycache.key_path(self.params_dir, sha256)
            aside = path.with_name(f"{path.name}.unusable")
            log.warning("proving key file unusable; set aside, fetching it from the broker",
                        path=str(path), aside=str(aside), error=str(exc))
            with contextlib.suppress(FileNotFoundError):
                path.replace(aside)
            try:
                await self.fetch_key(sha256, job)
            except exceptions.TaskFailed as fetch_error:
                # No copy from the broker either: another worker's copy may serve (retryable).
                raise exceptions.KeyFileUnusable(
                    detail=f"{exc} It was set aside as {aside.name}, and the broker's copy "
                    f"could not replace it: {fetch_error}") from fetch_error
            return await self._prove_in_thread(job.task_id, sha256, payload)

    async def _prove_in_thread(self, task_id: str, sha256: str, payload: bytes) -> bytes:
        stop = threading.Event()
        proving = asyncio.ensure_future(
            asyncio.to_thread(self.prove, task_id, sha256, payload, stop))
        try:
            return await asyncio.shield(proving)
        except asyncio.CancelledError:
            # The thread stops at the proof's next step (an MSM at most). Returning before it
            # has would free the worker's slot while the device still works for this task.
            stop.set()
            log.info("stopping the proof at its next step", task_id=task_id)
            await asyncio.wait([proving])
            if not proving.cancelled():
                proving.exception()  # Cancelled, or a failure nobody waits for any more
            raise

    async def close(self) -> None:
        """Let the keys go and close the backend (on a GPU: its memory and context)."""
        cache, self._cache = self._cache, None
        await self.broker.close()
        if cache is not None:
            await asyncio.to_thread(cache.clear)  # waits for a key being loaded
            await asyncio.to_thread(cache.backend.close)

    def resident_keys(self) -> list[str]:
        return self._cache.keys() if self._cache is not None else []

    async def fetch_key(self, sha256: str, job: Job) -> None:
        """Download the key from the broker into --params-dir unless it is there already."""
        path = keycache.key_path(self.params_dir, sha256)
        if (self._cache is not None and sha256 in self._cache) or path.exists():
            return
        await job.progress("fetching key", 0.0)
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            size, _ = await self.broker.download_resource(sha256, path)
        except BrokerError as exc:
            if getattr(exc, "code", None) is grpc.StatusCode.NOT_FOUND:
                raise exceptions.TaskFailed(
                    detail=f"proving key {sha256} is neither in {path} nor on the broker: "
                    "upload it with `gpuproxy keys upload KEY.zkey` or copy it there, then "
                    "reset the task", retryable=False) from exc
            raise exceptions.TaskFailed(detail=f"fetching proving key {sha256}: {exc}") from exc
        log.info("proving key fetched from the broker", zkey=sha256[:16], path=str(path),
                 bytes=size)

    def prove(self, task_id: str, sha256: str, payload: bytes, stop: threading.Event) -> bytes:
        """The result bytes of one task (runs in a thread)."""
        cache = self._cache  # close() may drop it meanwhile
        if cache is None:
            raise exceptions.TaskFailed(detail="the groth16 executor is not running")
        try:
            witness = wtns.read(payload, name=f"the payload of task {task_id}")
            key = cache.get(self.params_dir, sha256)
            proof, public = prover.prove(key, witness, cache.backend, should_stop=stop.is_set)
            if not verifier.verify(key.key.verification_key(), proof, public):
                proof, public = self._on_the_cpu(task_id, sha256, key, witness, stop)
        except (g16.KeyMissing, g16.KeyDamaged) as exc:
            raise exceptions.KeyFileUnusable(detail=str(exc)) from exc
        except (g16.FormatError, g16.Mismatch) as exc:
            raise exceptions.MalformedPayload(task_type=TASK_TYPE, detail=str(exc)) from exc
        except g16.Groth16Error as exc:
            if getattr(exc, "lost", False):  # the GPU context is poisoned: restart the worker
                raise exceptions.DeviceLost(detail=str(exc)) from exc
            raise exceptions.TaskFailed(detail=str(exc)) from exc
        log.info("groth16 proof verified", task_id=task_id, zkey=sha256[:16],
                 public=len(public))
        return proofjson.result_document(proof, public)

    def _on_the_cpu(self, task_id: str, sha256: str, key: backends.LoadedKey,
                    witness: field.FrVector, stop: threading.Event
                    ) -> tuple[verifier.Proof, list[int]]:
        """A proof that did not verify, made again on the CPU backend (the reference). If that
        one verifies, the device erred: said in the log, and the CPU's proof is the result. If
        it does not either, the witness does not satisfy the key's circuit, or the key is
        wrong: no other attempt could do better, so the task fails for good."""
        if key.backend not in backends.NAMES:  # made on the GPU: the CPU is the reference
            log.error(GPU_PROOF_MADE_AGAIN, task_id=task_id, backend=key.backend,
                      device=self.device)
            if self._cpu is None:
                self._cpu = backends.create("cpu")
            proof, public = prover.prove(key.key, witness, self._cpu, should_stop=stop.is_set)
            if verifier.verify(key.key.verification_key(), proof, public):
                log.error("the GPU computed a wrong proof and the CPU a right one: the GPU is "
                          "faulty (run `gpuproxy-worker check-gpu`); the CPU's proof is returned",
                          task_id=task_id, backend=key.backend, device=self.device)
                return proof, public
        raise exceptions.TaskFailed(retryable=False, detail=(
            f"the proof does not verify, made on the CPU too: the witness does not satisfy "
            f"the circuit of proving key {sha256}, or that key is not the one the witness "
            "was computed for (compute the witness with the key's circuit, or upload the "
            "right key)"))
