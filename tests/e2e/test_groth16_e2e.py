"""Groth16 tasks through real processes: the demo command, and a submit with a key that the
worker fetches from the broker on first use."""

from __future__ import annotations

import asyncio
import json
import os
import pathlib
import re
import subprocess
import sys

from broker.client import BrokerClient
from tests.cuda import pycuda_emu
from tests.e2e.conftest import BrokerFactory, WorkerFactory
from worker import groth16

BIN = pathlib.Path(sys.executable).parent


def test_demo_proves_and_verifies_through_broker_and_worker(tmp_path: pathlib.Path) -> None:
    # (settings in the user's environment are for their own broker, not for the demo's)
    token = tmp_path / "token"
    token.write_text("a-token-of-the-users-own-broker")
    done = subprocess.run(
        [str(BIN / "gpuproxy"), "demo", "--log-size", "5", "--keep", str(tmp_path / "demo")],
        capture_output=True, text=True, timeout=180, stdin=subprocess.DEVNULL,
        env={**os.environ, "GPUPROXY_TOKEN_FILE": str(token), "GPUPROXY_URL": "10.9.9.9:1"},
    )
    assert done.returncode == 0, done.stdout + done.stderr
    for phase in ("upload the proving key", "wait for the proof", "verify the proof here"):
        assert phase in done.stdout
    # The worker had no key of its own: it fetched it from the broker.
    worker_log = (tmp_path / "demo/worker.log").read_text()
    assert "proving key fetched from the broker" in worker_log
    # And the demo names the backend the worker said it runs (cpu here, unless pycuda and a GPU)
    said = re.search(r"Groth16 backend: (cpu|cuda) \(auto: ", worker_log)
    assert said, worker_log
    assert f"proof VERIFIED (worker backend: {said.group(1)})" in done.stdout


def test_demo_names_the_backend_its_worker_proved_on(tmp_path: pathlib.Path) -> None:
    # Given a folder where a demo on the CPU kept its files and logs
    def demo(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
        done = subprocess.run(
            [str(BIN / "gpuproxy"), "demo", "--log-size", "4", "--keep", str(tmp_path / "demo")],
            capture_output=True, text=True, timeout=180, stdin=subprocess.DEVNULL, env=env)
        assert done.returncode == 0, done.stdout + done.stderr
        return done

    no_gpu = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}
    assert "proof VERIFIED (worker backend: cpu)" in demo(no_gpu).stdout
    # When a demo runs there on a host whose pycuda drives the emulated CUDA driver (a GPU, to
    # the demo's worker)
    done = demo({**os.environ, **pycuda_emu.prepare(tmp_path / "emulation")})
    # Then it says the proof was made on CUDA, as its worker's log does
    assert "proof VERIFIED (worker backend: cuda)" in done.stdout, done.stdout
    assert "Groth16 backend: cuda (auto: a CUDA device is present)" in (
        tmp_path / "demo/worker.log").read_text()


async def test_submit_with_zkey_and_wtns_writes_snarkjs_files(
    sqlite_dsn: str, broker_factory: BrokerFactory, worker_factory: WorkerFactory,
    gpuproxy, tmp_path: pathlib.Path,  # type: ignore[no-untyped-def]
) -> None:
    broker = broker_factory(sqlite_dsn, "fs", extra=["--lease-s", "3"])  # heartbeats each 1 s
    worker = worker_factory(broker.url, gpu=None, extra=[
        "--allow-type", "groth16", "--params-dir", str(tmp_path / "params")])
    worker.wait_for("registered")
    # Its log says what the CPU backend runs on (threads, field arithmetic)
    assert re.search(r"runs_on='?cpu: \d+ threads, field arithmetic (x86-64 mulx/adx|portable C)",
                     worker.logs()), worker.logs()
    files = groth16.write_demo(tmp_path / "circuit", 4, n_public=2, seed=7)

    out = tmp_path / "out" / "proof.json"
    out.parent.mkdir()
    done = gpuproxy("tasks", "submit", "--url", broker.url, "--type", "groth16",
                    "--zkey", str(files.zkey), "--wtns", str(files.wtns), "--wait",
                    "-o", str(out), timeout_s=120)
    assert done.returncode == 0, done.stderr

    vk = groth16.read_verification_key(files.verification_key.read_bytes())
    public = json.loads((out.parent / "public.json").read_text())
    assert len(public) == 2
    assert groth16.verify_proof_json(vk, out.read_bytes(), public)
    tampered = [str(int(public[0]) + 1), public[1]]
    assert not groth16.verify_proof_json(vk, out.read_bytes(), tampered)
    # The key went to the broker once and reached the worker's params folder.
    assert (tmp_path / "params" / f"{files.zkey_sha256}.zkey").read_bytes() == \
        files.zkey.read_bytes()

    # The worker reports the key it now holds loaded
    for _ in range(50):
        listed = json.loads(gpuproxy("workers", "list", "--url", broker.url, "--json").stdout)
        if listed[0].get("resident_keys"):
            break
        await asyncio.sleep(0.1)
    assert listed[0]["resident_keys"] == [files.zkey_sha256]

    # A task naming a key that neither the worker nor the broker holds fails for good, saying so
    async with BrokerClient(broker.url) as client:
        orphan = await client.submit_file(files.wtns, task_type="groth16", miner="other",
                                          comment="zkey=" + "ab" * 32)
        done_task = [t async for t in client.watch(orphan.id)][-1]
    assert done_task.state == 3 and done_task.attempts == 1
    assert "ab" * 32 in done_task.error_message
    assert "gpuproxy keys upload" in done_task.error_message

    missing_key = gpuproxy("tasks", "submit", "--url", broker.url, "--type", "groth16",
                           "--wtns", str(files.wtns))
    assert missing_key.returncode == 1 and "--zkey" in missing_key.stderr


async def test_a_damaged_key_file_is_set_aside_and_replaced_from_the_broker(
    sqlite_dsn: str, broker_factory: BrokerFactory, worker_factory: WorkerFactory,
    gpuproxy, tmp_path: pathlib.Path,  # type: ignore[no-untyped-def]
) -> None:
    # Given a key the broker holds, and a truncated copy of it in the worker's params folder
    broker = broker_factory(sqlite_dsn, "fs")
    files = groth16.write_demo(tmp_path / "circuit", 4, n_public=1, seed=3)
    assert gpuproxy("keys", "upload", "--url", broker.url, str(files.zkey)).returncode == 0
    params = tmp_path / "params"
    params.mkdir()
    local = params / f"{files.zkey_sha256}.zkey"
    local.write_bytes(files.zkey.read_bytes()[:1000])
    worker = worker_factory(broker.url, gpu=None, extra=[
        "--allow-type", "groth16", "--params-dir", str(params)])
    worker.wait_for("registered")
    # When a task needs that key, it is proved in its first attempt with the broker's copy
    async with BrokerClient(broker.url) as client:
        task = await client.submit_file(files.wtns, task_type="groth16", miner="f01000",
                                        comment=f"zkey={files.zkey_sha256}")
        done = [t async for t in client.watch(task.id)][-1]
    assert (done.state, done.attempts) == (4, 1), done.error_message
    assert local.read_bytes() == files.zkey.read_bytes()
    assert (params / f"{files.zkey_sha256}.zkey.unusable").stat().st_size == 1000
    assert "proving key file unusable; set aside" in worker.logs()


async def test_a_worker_on_the_cuda_backend_proves_with_the_real_pycuda(
    sqlite_dsn: str, broker_factory: BrokerFactory, worker_factory: WorkerFactory,
    gpuproxy, tmp_path: pathlib.Path,  # type: ignore[no-untyped-def]
) -> None:
    # Given a worker forced onto CUDA, whose pycuda drives the host emulation of the driver
    env = pycuda_emu.prepare(tmp_path / "emulation")
    broker = broker_factory(sqlite_dsn, "fs", extra=["--lease-s", "3"])
    worker = worker_factory(broker.url, gpu=0, env=env, extra=[
        "--allow-type", "groth16", "--backend", "cuda", "--params-dir", str(tmp_path / "p")])
    worker.wait_for("registered", timeout_s=120)  # a first start compiles the kernels
    files = groth16.write_demo(tmp_path / "circuit", 5, n_public=1, seed=3)
    # When a groth16 task is submitted, the proof comes back and verifies
    out = tmp_path / "proof.json"
    done = gpuproxy("tasks", "submit", "--url", broker.url, "--type", "groth16",
                    "--zkey", str(files.zkey), "--wtns", str(files.wtns), "--wait",
                    "-o", str(out), timeout_s=120)
    assert done.returncode == 0, done.stderr + worker.logs()
    vk = groth16.read_verification_key(files.verification_key.read_bytes())
    public = json.loads((tmp_path / "public.json").read_text())
    assert groth16.verify_proof_json(vk, out.read_bytes(), public)
    # And it was made on the CUDA backend, after its start-up self-test
    logs = worker.logs()
    assert "Groth16 backend: cuda (forced by --backend cuda)" in logs
    assert "CUDA backend ready" in logs and "GPU 0 (Host emulation)" in logs


async def test_a_worker_whose_gpu_fails_hands_the_task_back_and_exits_to_be_restarted(
    sqlite_dsn: str, broker_factory: BrokerFactory, worker_factory: WorkerFactory,
    gpuproxy, tmp_path: pathlib.Path,  # type: ignore[no-untyped-def]
) -> None:
    # Given a CUDA worker on the emulated driver, whose next kernel launch fails as at an Xid
    env = pycuda_emu.prepare(tmp_path / "emulation")
    env["CUDA_EMU_FAIL_FILE"] = str(tmp_path / "xid")
    broker = broker_factory(sqlite_dsn, "fs")
    worker = worker_factory(broker.url, gpu=0, env=env, extra=[
        "--allow-type", "groth16", "--backend", "cuda", "--params-dir", str(tmp_path / "p")])
    worker.wait_for("registered", timeout_s=120)
    (tmp_path / "xid").touch()
    files = groth16.write_demo(tmp_path / "circuit", 4, n_public=1, seed=5)
    done = gpuproxy("tasks", "submit", "--url", broker.url, "--type", "groth16",
                    "--zkey", str(files.zkey), "--wtns", str(files.wtns))
    assert done.returncode == 0, done.stderr
    task_id = done.stdout.strip()
    # When the proof hits the failure, the worker reports it and exits 1 (to be restarted)
    assert worker.proc is not None
    assert worker.proc.wait(timeout=60) == 1, worker.logs()
    logs = worker.logs()
    assert "the GPU context is lost; the worker stops" in logs
    assert "This worker stops, to be started again with a fresh GPU context" in logs
    # Then the task went back to the queue at once, the attempt counted, the reason kept
    shown = json.loads(gpuproxy("tasks", "show", task_id, "--url", broker.url, "--json").stdout)
    assert shown["state"] == "init" and shown["attempts"] == 1, shown
    assert "unspecified launch failure; the GPU context is lost" in json.dumps(shown)


async def test_keys_are_listed_and_removed_once_no_task_needs_them(
    sqlite_dsn: str, broker_factory: BrokerFactory, gpuproxy, tmp_path: pathlib.Path,  # type: ignore[no-untyped-def]
) -> None:
    # Given a groth16 task waiting (no worker) with its key uploaded on the way
    payloads = tmp_path / "payloads"
    broker = broker_factory(sqlite_dsn, "fs", payload_dir=payloads)
    files = groth16.write_demo(tmp_path / "circuit", 4, n_public=1, seed=9)
    submitted = gpuproxy("tasks", "submit", "--url", broker.url, "--type", "groth16",
                         "--zkey", str(files.zkey), "--wtns", str(files.wtns))
    task_id = submitted.stdout.strip()
    sha = files.zkey_sha256
    [key] = json.loads(gpuproxy("keys", "list", "--url", broker.url, "--json").stdout)
    assert key["sha256"] == sha and int(key["size"]) == files.zkey.stat().st_size
    assert key["name"] == files.zkey.name
    stored = payloads / sha[:2] / sha[2:4] / sha
    assert stored.is_file()
    # When it is removed while the task waits, that is refused, naming the task
    refused = gpuproxy("keys", "remove", sha, "--url", broker.url)
    assert refused.returncode == 1 and f"named by task {task_id}" in refused.stderr
    # Once the task is cancelled, the key goes, its file with it
    assert gpuproxy("tasks", "cancel", task_id, "--url", broker.url).returncode == 0
    removed = gpuproxy("keys", "remove", sha, "--url", broker.url)
    assert removed.returncode == 0 and f"{sha} ({files.zkey.name}) removed" in removed.stdout
    assert json.loads(gpuproxy("keys", "list", "--url", broker.url, "--json").stdout) == []
    assert not stored.exists()
