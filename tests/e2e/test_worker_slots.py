"""A worker's slots against a real broker process: the worker runs in this process, so that its
groth16 prover can hold a proof step open (tests/fixtures/gated_backend.py)."""

from __future__ import annotations

import asyncio
import dataclasses
import pathlib
import signal

from broker.client import BrokerClient
from tests.e2e.conftest import BrokerFactory
from tests.fixtures.gated_backend import GatedBackend
from worker import groth16
from worker.config import WorkerConfig
from worker.daemon import Identity, Worker
from worker.executors.groth16 import Groth16Executor
from worker.groth16 import keycache
from worker.payloads import PayloadFetcher
from worker.remote import Remote


@dataclasses.dataclass
class GatedWorker:
    """A groth16 worker (one slot) in this process, whose first G1 MSM waits for the gate."""

    worker: Worker
    executor: Groth16Executor
    gated: GatedBackend
    remote: Remote
    sha: str  #: the demo key's
    files: groth16.DemoFiles
    running: asyncio.Task[int]

    async def close(self) -> None:
        self.gated.release.set()
        self.worker.on_signal(signal.SIGTERM)
        self.worker.on_signal(signal.SIGTERM)
        await asyncio.wait_for(self.running, 30)
        await self.executor.close()
        await self.remote.close()


async def gated_worker(url: str, tmp_path: pathlib.Path) -> GatedWorker:
    config = WorkerConfig(url=url, task_types=("groth16",), nvidia_smi="",
                          params_dir=tmp_path / "params", backend="cpu")
    executor = Groth16Executor(config)
    await executor.start()
    gated = GatedBackend()
    executor._cache = keycache.KeyCache(gated)
    files = groth16.write_demo(tmp_path / "circuit", 4, n_public=1, seed=11)
    sha = keycache.install(files.zkey, config.params_dir)
    remote = Remote(url)
    worker = Worker(config=config, remote=remote,
                    identity=Identity(worker_id="w-slots", hostname="test", addresses=(),
                                      version="test", gpus=()),
                    payloads=PayloadFetcher(tmp_path / "tmp", remote),
                    executors={"groth16": executor})
    return GatedWorker(worker, executor, gated, remote, sha, files,
                       asyncio.create_task(worker.run()))


async def test_a_revoked_proof_keeps_the_slot_until_it_has_stopped(
    sqlite_dsn: str, broker_factory: BrokerFactory, tmp_path: pathlib.Path
) -> None:
    # Given a groth16 worker (one slot) whose proof of task A is in a long MSM
    broker = broker_factory(sqlite_dsn, "fs")
    w = await gated_worker(broker.url, tmp_path)
    gated, files, sha = w.gated, w.files, w.sha
    try:
        async with BrokerClient(broker.url) as client:
            a = await client.submit_file(files.wtns, task_type="groth16", miner="f01000",
                                         comment=f"zkey={sha}")
            assert await asyncio.to_thread(gated.entered.wait, 30)
            b = await client.submit_file(files.wtns, task_type="groth16", miner="f01001",
                                         comment=f"zkey={sha}")
            # When A is cancelled while its MSM still runs
            await client.cancel(a.id, "wrong sector")
            # Then B waits: the broker freed A's slot, but the worker does not take B while
            # the device still works for A
            await asyncio.sleep(1.0)
            assert (await client.get_task(b.id)).state == 1
            # And once A's step ends, A stops there and B is proved
            gated.release.set()
            done = [t async for t in client.watch(b.id)][-1]
            assert done.state == 4, done.error_message
            assert (await client.get_task(a.id)).state == 3  # cancelled
            assert gated.msm_g1_calls == 1 + 4  # A's one, then B's four
            # B was not pushed to the stopping worker only to be handed back
            assert [h.outcome for h in (await client.get_task(b.id)).history] == ["finished"]
    finally:
        await w.close()


async def test_a_worker_stopped_at_once_waits_for_a_revoked_proof_to_stop(
    sqlite_dsn: str, broker_factory: BrokerFactory, tmp_path: pathlib.Path
) -> None:
    # Given a worker whose revoked proof is still in its MSM
    broker = broker_factory(sqlite_dsn, "fs")
    w = await gated_worker(broker.url, tmp_path)
    try:
        async with BrokerClient(broker.url) as client:
            a = await client.submit_file(w.files.wtns, task_type="groth16", miner="f01000",
                                         comment=f"zkey={w.sha}")
            assert await asyncio.to_thread(w.gated.entered.wait, 30)
            await client.cancel(a.id, "wrong sector")
        await asyncio.sleep(0.5)
        # When it is told to stop at once (two signals)
        w.worker.on_signal(signal.SIGTERM)
        w.worker.on_signal(signal.SIGTERM)
        # Then it does not return, closing its backend and lock, under the running proof
        await asyncio.sleep(1.0)
        assert not w.running.done()
        w.gated.release.set()
        assert await asyncio.wait_for(w.running, 30) == 0
    finally:
        await w.close()
