"""`gpuproxy demo`: the whole system on one machine, through the normal path.

It writes a synthetic circuit of 2^k constraints with an INSECURE development key, starts a
broker (SQLite, a local payload folder) and a worker (CUDA when usable, else CPU) as real
processes, uploads the key, submits the witness as a `groth16` task, waits on the watch stream,
downloads the proof, verifies it, and prints the time of each phase.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import pathlib
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Iterator

from broker import exceptions, policy
from broker.client import BrokerClient
from broker.flags import without_settings

BIN = pathlib.Path(sys.executable).parent

#: The worker's start-up line naming its prover (worker/cuda/select.py writes it)
BACKEND_LINE = re.compile(r"Groth16 backend: (\w+)")


@dataclasses.dataclass
class Phases:
    rows: list[tuple[str, float]] = dataclasses.field(default_factory=list)

    @contextlib.contextmanager
    def timed(self, name: str) -> Iterator[None]:
        t0 = time.perf_counter()
        yield
        self.rows.append((name, time.perf_counter() - t0))

    def add(self, name: str, seconds: float) -> None:
        self.rows.append((name, seconds))

    def print(self) -> None:
        for name, seconds in self.rows:
            print(f"  {name:<34}{seconds * 1000:>10.1f} ms")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _spawn(argv: list[str], log_path: pathlib.Path) -> subprocess.Popen[bytes]:
    with log_path.open("ab") as log:
        return subprocess.Popen(argv, stdout=log, stderr=log, stdin=subprocess.DEVNULL,
                                env=without_settings(os.environ))


@contextlib.asynccontextmanager
async def _processes(work: pathlib.Path, url: str) -> AsyncIterator[list[pathlib.Path]]:
    """A broker and a worker; their logs' paths. Stopped with SIGTERM (workers drain)."""
    logs = [work / "broker.log", work / "worker.log"]
    procs = [
        _spawn([str(BIN / "gpuproxy"), "run", "--url", url, "--db-dsn",
                f"sqlite:///{work}/demo.db", "--fs-resource-path", str(work / "payloads")],
               logs[0]),
    ]
    try:
        procs.append(_spawn([
            str(BIN / "gpuproxy-worker"), "run", "--gpuproxy-url", url, "--allow-type",
            "groth16", "--work-dir", str(work / "worker"), "--params-dir", str(work / "params"),
            "--lock-dir", str(work / "locks"),
        ], logs[1]))
        yield logs
    finally:
        for p in reversed(procs):
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in procs:
            try:
                p.wait(15)
            except subprocess.TimeoutExpired:
                p.kill()


async def _worker_online(url: str, logs: list[pathlib.Path], timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    async with BrokerClient(url, timeout_s=2) as client:
        while time.monotonic() < deadline:
            with contextlib.suppress(exceptions.BrokerUnreachable,
                                     exceptions.BrokerCannotServe):  # not up yet
                if any(w.online for w in await client.list_workers()):
                    return
            await asyncio.sleep(0.1)
    tails = "\n".join(f"--- {p.name} ---\n{p.read_text()[-2000:]}" for p in logs if p.exists())
    raise exceptions.RemoteError(
        detail=f"the demo's worker did not come online in {timeout_s:.0f} s:\n{tails}"
    )


async def run(log_size: int, keep: pathlib.Path | None) -> int:
    from worker import groth16

    with tempfile.TemporaryDirectory(prefix="gpuproxy-demo-") as tmp:
        work = keep or pathlib.Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        phases = Phases()
        print(f"gpuproxy demo: a Groth16 proof of 2^{log_size} constraints through a broker "
              f"and a worker (files in {work})")
        with phases.timed("circuit, witness, dev key (INSECURE)"):
            files = await asyncio.to_thread(groth16.write_demo, work / "circuit", log_size)
        url = f"127.0.0.1:{_free_port()}"
        async with _processes(work, url) as logs:
            with phases.timed("broker and worker start"):
                await _worker_online(url, logs)
            async with BrokerClient(url, timeout_s=600) as client:
                with phases.timed("upload the proving key"):
                    key = await client.upload_resource(files.zkey)
                with phases.timed("submit the witness"):
                    task = await client.submit_file(
                        files.wtns, task_type="groth16", miner="demo",
                        comment=policy.key_comment(key.sha256),
                    )
                with phases.timed("wait for the proof (watch stream)"):
                    task = [t async for t in client.watch(task.id)][-1]
                if task.state != 4:
                    raise exceptions.RemoteError(
                        detail=f"demo task ended in state {task.state}: {task.error_message}"
                    )
                started = task.started_at.ToMilliseconds()
                finished = task.finished_at.ToMilliseconds()
                phases.add("  of which queued (submit -> start)",
                           (started - task.created_at.ToMilliseconds()) / 1000)
                phases.add("  of which on the worker", (finished - started) / 1000)
                proof_path = work / "result.json"
                with phases.timed("download the proof"):
                    await client.download_result(task.id, proof_path)
            backend = _backend_of(logs[1])
        with phases.timed("verify the proof here"):
            vk = groth16.read_verification_key(files.verification_key.read_bytes())
            ok = groth16.verify_proof_json(vk, proof_path.read_bytes())
        phases.print()
        print(f"task {task.id}: proof {'VERIFIED' if ok else 'DID NOT VERIFY'} "
              f"(worker backend: {backend})")
        return 0 if ok else 1


def _backend_of(worker_log: pathlib.Path) -> str:
    """The backend the worker said it proves on, from its start-up line ("Groth16 backend:
    cuda (auto: ...)"), the last one (--keep appends to an earlier demo's log), and whether
    its proof had to be made again on the CPU; "unknown" when the log has no such line."""
    from worker.executors.groth16 import GPU_PROOF_MADE_AGAIN

    text = worker_log.read_text(errors="replace") if worker_log.exists() else ""
    starts = list(BACKEND_LINE.finditer(text))
    if not starts:
        return "unknown"
    last = starts[-1]
    if GPU_PROOF_MADE_AGAIN in text[last.end():]:
        return f"{last[1]}, whose proof did not verify: made again on the cpu, see its log"
    return last[1]
