"""A worker's slots against a real broker process: the worker runs in this process, so that its
groth16 prover can hold a proof step open (tests/fixtures/gated_backend.py)."""

from __future__ import annotations

import asyncio
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


async def test_a_revoked_proof_keeps_the_slot_until_it_has_stopped(
    sqlite_dsn: str, broker_factory: BrokerFactory, tmp_path: pathlib.Path
) -> None:
    # Given a groth16 worker (one slot) whose proof of task A is in a long MSM
    broker = broker_factory(sqlite_dsn, "fs")
    config = WorkerConfig(url=broker.url, task_types=("groth16",), nvidia_smi="",
                          params_dir=tmp_path / "params", backend="cpu")
    executor = Groth16Executor(config)
    await executor.start()
    gated = GatedBackend()
    executor._cache = keycache.KeyCache(gated)
    files = groth16.write_demo(tmp_path / "circuit", 4, n_public=1, seed=11)
    sha = keycache.install(files.zkey, config.params_dir)
    remote = Remote(broker.url)
    worker = Worker(config=config, remote=remote,
                    identity=Identity(worker_id="w-slots", hostname="test", addresses=(),
                                      version="test", gpus=()),
                    payloads=PayloadFetcher(tmp_path / "tmp", remote),
                    executors={"groth16": executor})
    running = asyncio.create_task(worker.run())
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
    finally:
        gated.release.set()
        worker.on_signal(signal.SIGTERM)
        worker.on_signal(signal.SIGTERM)
        await asyncio.wait_for(running, 30)
        await executor.close()
        await remote.close()
