"""The key cache and the groth16 executor, with real keys in a params folder."""

from __future__ import annotations

import asyncio
import hashlib
import json
import pathlib
import shutil
import socket
from collections.abc import Callable

import pytest
import structlog

from tests.fixtures.gated_backend import GatedBackend
from worker import exceptions
from worker.config import WorkerConfig
from worker.executors import base, create
from worker.executors.groth16 import Groth16Executor, zkey_sha256
from worker.groth16 import backends, curve, devsetup, field, keycache, proofjson, wtns, zkey
from worker.groth16 import exceptions as g16

Demo = Callable[..., devsetup.DemoFiles]


def test_install_names_the_key_by_sha256(groth16_demo: Demo, tmp_path: pathlib.Path) -> None:
    files = groth16_demo(4, 1)
    sha = keycache.install(files.zkey, tmp_path / "params")
    assert sha == files.zkey_sha256 == hashlib.sha256(files.zkey.read_bytes()).hexdigest()
    assert (tmp_path / "params" / f"{sha}.zkey").read_bytes() == files.zkey.read_bytes()
    assert keycache.install(files.zkey, tmp_path / "params") == sha
    with pytest.raises(ValueError, match="not a lowercase hex sha256"):
        keycache.key_path(tmp_path, "../etc/passwd")


def test_an_install_cut_short_leaves_no_copy_behind(
    groth16_demo: Demo, tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def full_disk(src: object, dst: str) -> None:
        pathlib.Path(dst).write_bytes(b"part of a key")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(keycache.shutil, "copyfile", full_disk)
    with pytest.raises(OSError, match="No space left"):
        keycache.install(groth16_demo(4, 1).zkey, tmp_path / "params")
    assert list((tmp_path / "params").iterdir()) == []


def test_cache_loads_once_and_evicts_the_oldest(groth16_demo: Demo,
                                                tmp_path: pathlib.Path) -> None:
    shas = [keycache.install(groth16_demo(4, n).zkey, tmp_path) for n in (1, 2, 3)]
    cache = keycache.KeyCache(backends.create("cpu"), max_keys=2)
    first = cache.get(tmp_path, shas[0])
    assert cache.get(tmp_path, shas[0]) is first
    cache.get(tmp_path, shas[1])
    cache.get(tmp_path, shas[0])  # now the most recent
    cache.get(tmp_path, shas[2])
    assert shas[0] in cache and shas[2] in cache and shas[1] not in cache


def test_cache_errors_name_the_file_and_sha256(groth16_demo: Demo,
                                               tmp_path: pathlib.Path) -> None:
    cache = keycache.KeyCache(backends.create("cpu"))
    sha = "ab" * 32
    with pytest.raises(g16.KeyMissing, match=f"{tmp_path}/{sha}.zkey .*sha256 {sha}.*no such"):
        cache.get(tmp_path, sha)
    (tmp_path / f"{sha}.zkey").write_bytes(b"")
    with pytest.raises(g16.KeyMissing, match="the file is empty"):
        cache.get(tmp_path, sha)
    shutil.copyfile(groth16_demo(4, 1).zkey, tmp_path / f"{sha}.zkey")
    with pytest.raises(g16.KeyDamaged, match=f"not {sha}"):
        cache.get(tmp_path, sha)


def test_comment_names_the_key() -> None:
    sha = "0123456789abcdef" * 4
    assert zkey_sha256(f"zkey={sha}") == sha
    assert zkey_sha256(f"demo run, zkey={sha.upper()}; k=10") == sha
    for comment in ("", "zkey=abc", f"xzkey={sha}", f"zkey={sha}0"):
        with pytest.raises(exceptions.MalformedPayload, match="names no key"):
            zkey_sha256(comment)


async def _noop(phase: str, fraction: float) -> None:
    return None


def _job(payload: pathlib.Path, comment: str) -> base.Job:
    return base.Job(task_id="t1", task_type="groth16", payload=payload, timeout_s=60.0,
                    progress=_noop, comment=comment)


@pytest.fixture
async def executor(tmp_path: pathlib.Path) -> Groth16Executor:
    # No broker: a port nothing listens on (a broker on the default port must not answer)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        nobody = f"127.0.0.1:{s.getsockname()[1]}"
    config = WorkerConfig(task_types=("groth16",), params_dir=tmp_path / "params", url=nobody)
    runner = create(config)["groth16"]
    assert isinstance(runner, Groth16Executor)
    await runner.start()
    return runner


async def test_executor_returns_a_verified_proof(groth16_demo: Demo,
                                                 executor: Groth16Executor) -> None:
    files = groth16_demo(6, 3)
    sha = keycache.install(files.zkey, executor.params_dir)
    result = await executor.run(_job(files.wtns, f"zkey={sha}"))
    vk = proofjson.read_verification_key(files.verification_key.read_text())
    assert proofjson.verify_proof_json(vk, result)
    assert len(json.loads(result)["public"]) == 3


async def test_executor_failures(groth16_demo: Demo, executor: Groth16Executor,
                                 tmp_path: pathlib.Path) -> None:
    files = groth16_demo(4, 1)
    missing = "cd" * 32
    # Not in --params-dir, and no broker to fetch it from: retryable (the broker may come back)
    with pytest.raises(exceptions.TaskFailed, match=f"proving key {missing}.*No broker") as info:
        await executor.run(_job(files.wtns, f"zkey={missing}"))
    assert info.value.retryable
    sha = keycache.install(files.zkey, executor.params_dir)
    garbage = tmp_path / "garbage.wtns"
    garbage.write_bytes(b"wtns" + bytes(20))
    with pytest.raises(exceptions.MalformedPayload, match="not a valid wtns") as info:
        await executor.run(_job(garbage, f"zkey={sha}"))
    assert not info.value.retryable
    other = groth16_demo(5, 1)
    with pytest.raises(exceptions.MalformedPayload, match="does not fit the proving key"):
        await executor.run(_job(other.wtns, f"zkey={sha}"))


async def test_a_damaged_key_the_broker_cannot_replace_fails_the_attempt_for_another_worker(
    groth16_demo: Demo, executor: Groth16Executor
) -> None:
    # Given a truncated copy of the key in --params-dir, and no broker to fetch it from
    files = groth16_demo(4, 1)
    sha = keycache.install(files.zkey, executor.params_dir)
    local = executor.params_dir / f"{sha}.zkey"
    local.write_bytes(local.read_bytes()[:500])
    # Then the attempt fails retryable (a worker with a good copy may prove it), saying what
    # was done with the file and why it was not replaced
    with pytest.raises(exceptions.KeyFileUnusable) as info:
        await executor.run(_job(files.wtns, f"zkey={sha}"))
    assert info.value.retryable
    assert f"set aside as {sha}.zkey.unusable" in str(info.value)
    assert "could not replace it" in str(info.value) and "No broker" in str(info.value)
    assert not local.exists() and (executor.params_dir / f"{sha}.zkey.unusable").exists()


class FaultyBackend(backends.Backend):
    """The CPU backend with a G1 MSM that returns the generator: a broken GPU."""

    def __init__(self) -> None:
        self.inner = backends.create("cpu")
        self.name = "faulty"

    def load_bases(self, group: str, points: zkey.Points) -> backends.Bases:
        return self.inner.load_bases(group, points)

    def intt(self, domain, evaluations):  # type: ignore[no-untyped-def]
        return self.inner.intt(domain, evaluations)

    def coset_ntt(self, domain, coefficients):  # type: ignore[no-untyped-def]
        return self.inner.coset_ntt(domain, coefficients)

    def msm_g1(self, bases, scalars):  # type: ignore[no-untyped-def]
        return curve.g1_generator()

    def msm_g2(self, bases, scalars):  # type: ignore[no-untyped-def]
        return self.inner.msm_g2(bases, scalars)


async def test_a_wrong_proof_from_a_device_is_made_again_on_the_cpu(
    groth16_demo: Demo, executor: Groth16Executor
) -> None:
    # Given a device whose proofs do not verify
    executor._cache = keycache.KeyCache(FaultyBackend())
    files = groth16_demo(4, 1)
    sha = keycache.install(files.zkey, executor.params_dir)
    # Then the task's proof is the CPU's, which verifies, and the log names the faulty device
    with structlog.testing.capture_logs() as logs:
        result = await executor.run(_job(files.wtns, f"zkey={sha}"))
    vk = proofjson.read_verification_key(files.verification_key.read_text())
    assert proofjson.verify_proof_json(vk, result)
    assert any("the GPU is faulty (run `gpuproxy-worker check-gpu`)" in e["event"]
               for e in logs if e["log_level"] == "error")


@pytest.mark.parametrize("backend", ["cpu", "faulty"])
async def test_a_witness_that_does_not_satisfy_the_circuit_fails_for_good(
    groth16_demo: Demo, executor: Groth16Executor, tmp_path: pathlib.Path, backend: str
) -> None:
    if backend == "faulty":
        executor._cache = keycache.KeyCache(FaultyBackend())
    # Given a witness of the right size whose last private signal is wrong
    files = groth16_demo(4, 1)
    sha = keycache.install(files.zkey, executor.params_dir)
    values = field.from_vector(wtns.read(files.wtns.read_bytes()))
    values[-1] = (values[-1] + 1) % field.R
    bad = tmp_path / "bad.wtns"
    bad.write_bytes(wtns.write(values))
    # Then the task fails for good, saying why: no other worker could prove it
    with pytest.raises(exceptions.TaskFailed, match="the witness does not satisfy the circuit "
                       f"of proving key {sha}") as info:
        await executor.run(_job(bad, f"zkey={sha}"))
    assert not info.value.retryable


async def test_a_stopped_proof_returns_only_once_its_thread_has_stopped(
    groth16_demo: Demo, executor: Groth16Executor
) -> None:
    # Given a proof in its first G1 MSM, a step that lasts until the gate opens
    gated = GatedBackend()
    executor._cache = keycache.KeyCache(gated)
    files = groth16_demo(4, 1)
    sha = keycache.install(files.zkey, executor.params_dir)
    running = asyncio.create_task(executor.run(_job(files.wtns, f"zkey={sha}")))
    try:
        assert await asyncio.to_thread(gated.entered.wait, 30)
        # When the task is stopped (revoked, or the worker stops at once)
        running.cancel()
        # Then it does not end while the device still works for it: the slot stays taken
        await asyncio.sleep(0.3)
        assert not running.done()
    finally:
        gated.release.set()
    # And once the step ends, the proof stops there: no further MSM runs for it
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(running, 30)
    assert gated.msm_g1_calls == 1


def test_key_downloads_a_killed_worker_left_are_removed_and_live_ones_kept(
    tmp_path: pathlib.Path,
) -> None:
    import os
    import time

    from worker.executors.groth16 import STALE_DOWNLOAD_S, remove_stale_downloads

    sha = "ab" * 32
    left = tmp_path / f".{sha}.zkey.1a2b3c4d.part"
    live = tmp_path / f".{sha}.zkey.5e6f7a8b.part"  # another worker's, being written now
    key = tmp_path / f"{sha}.zkey"
    for path in (left, live, key):
        path.write_bytes(b"x")
    old = time.time() - STALE_DOWNLOAD_S - 60
    os.utime(left, (old, old))
    os.utime(key, (old, old))
    assert remove_stale_downloads(tmp_path) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([live.name, key.name])
