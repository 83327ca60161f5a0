"""A broker started with --token-file: the CLI, workers and plugins reach it with its token
only, each one without it is told what to do, and health probes need no token."""

from __future__ import annotations

import asyncio
import json
import pathlib
import secrets
import subprocess
import urllib.request

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tests.e2e.conftest import BrokerFactory, BrokerProcess, WorkerFactory, free_port
from tests.e2e.test_plugin_e2e import (
    PluginFactory,
    plugin_factory,  # noqa: F401 (a fixture)
    proof_of,
    request_line,
    task_bytes,
)
from worker import groth16

REFUSED = ("this broker takes calls with its access token only: give this program the "
           "broker's token file (--token-file, or GPUPROXY_TOKEN_FILE)")


@pytest.fixture
def token_file(tmp_path: pathlib.Path) -> pathlib.Path:
    path = tmp_path / "token"
    path.write_text(secrets.token_hex(32) + "\n")
    path.chmod(0o600)
    return path


@pytest.fixture
def metrics_url() -> str:
    return f"127.0.0.1:{free_port()}"


@pytest.fixture
def broker(sqlite_dsn: str, broker_factory: BrokerFactory, token_file: pathlib.Path,
           metrics_url: str) -> BrokerProcess:
    return broker_factory(sqlite_dsn, "fs", extra=[
        "--token-file", str(token_file), "--lease-s", "6", "--retry-backoff-s", "0.1",
        "--max-attempts", "1", "--metrics-url", metrics_url,
    ])


def test_the_cli_reaches_a_broker_with_its_token_only(
    broker: BrokerProcess, gpuproxy: subprocess.CompletedProcess[str],
    token_file: pathlib.Path, tmp_path: pathlib.Path, metrics_url: str,
) -> None:
    # Without a token, the call is refused, saying what to give the program
    bare = gpuproxy("tasks", "list", "--url", broker.url)  # type: ignore[operator]
    assert bare.returncode == 1 and bare.stdout == ""
    assert f"The broker at {broker.url} refused the call: {REFUSED}" in bare.stderr
    # With another token, the call is refused as such
    wrong = tmp_path / "wrong-token"
    wrong.write_text("not-the-token")
    wrong.chmod(0o600)
    other = gpuproxy("workers", "list", "--url", broker.url,  # type: ignore[operator]
                     "--token-file", str(wrong))
    assert other.returncode == 1
    assert "refused the call: the access token sent is not this broker's" in other.stderr
    # With the broker's token, it is served
    served = gpuproxy("tasks", "list", "--url", broker.url,  # type: ignore[operator]
                      "--token-file", str(token_file))
    assert served.returncode == 0, served.stderr
    assert served.stdout.split()[:3] == ["ID", "TYPE", "MINER"]
    # Health probes need no token
    with grpc.insecure_channel(broker.url) as channel:
        reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(),
                                                          timeout=5)
    assert reply.status == health_pb2.HealthCheckResponse.SERVING
    # The broker said it takes tokens, logged and counted both refusals, and never wrote the
    # token
    assert "access=token" in broker.logs()
    assert broker.logs().count("call refused for its access token") == 2
    assert token_file.read_text().strip() not in broker.logs()
    with urllib.request.urlopen(f"http://{metrics_url}/metrics", timeout=5) as reply:
        scraped = reply.read().decode().splitlines()
    assert 'gpuproxy_calls_refused_total{token="missing"} 1.0' in scraped
    assert 'gpuproxy_calls_refused_total{token="wrong"} 1.0' in scraped


def test_an_unreadable_or_empty_token_file_stops_the_program_before_it_calls(
    gpuproxy: subprocess.CompletedProcess[str], tmp_path: pathlib.Path,
) -> None:
    empty = tmp_path / "empty"
    empty.write_text("\n")
    missing = tmp_path / "missing"
    for path, why in ((missing, f"cannot read {missing}: No such file or directory"),
                      (empty, f"{empty} is empty: write the token in it")):
        for args in (["tasks", "list"], ["run", "--url", "127.0.0.1:0"]):
            result = gpuproxy(*args, "--token-file", str(path))  # type: ignore[operator]
            assert result.returncode == 1, result.stderr
            [line] = result.stderr.strip().splitlines()  # the reason, and only it
            assert line.startswith(f"error: Invalid setting token-file: {why}")


async def test_workers_and_plugins_prove_with_the_token_and_are_told_without_it(
    broker: BrokerProcess, worker_factory: WorkerFactory, plugin_factory: PluginFactory,  # noqa: F811
    token_file: pathlib.Path,
) -> None:
    # Given a worker with the token flag and a plugin with the token variable
    worker_factory(broker.url, extra=["--token-file", str(token_file)])
    plugin = await plugin_factory(broker.url, env_add={"GPUPROXY_TOKEN_FILE": str(token_file)})
    # Then a request gets its proof
    task = task_bytes(171)
    await plugin.send(request_line(1, task))
    assert await plugin.proof(1) == proof_of(task)
    # A plugin without the token answers its request with the broker's reason at once
    stranger = await plugin_factory(broker.url)
    await stranger.send(request_line(2, task_bytes(172)))
    assert REFUSED in await stranger.error(2, timeout_s=10)
    # A worker without it stops at once, saying why, instead of retrying forever
    lost = worker_factory(broker.url, gpu=1)
    assert await asyncio.to_thread(lost.wait, 20) == 1
    assert f"refused this worker (UNAUTHENTICATED): {REFUSED}" in lost.logs()


def test_a_groth16_worker_fetches_its_key_with_the_token(
    broker: BrokerProcess, worker_factory: WorkerFactory,
    gpuproxy: subprocess.CompletedProcess[str], token_file: pathlib.Path, tmp_path: pathlib.Path,
) -> None:
    # Given a groth16 worker with the token and no key of its own
    worker = worker_factory(broker.url, gpu=None, extra=[
        "--allow-type", "groth16", "--params-dir", str(tmp_path / "params"),
        "--token-file", str(token_file)])
    worker.wait_for("registered")
    files = groth16.write_demo(tmp_path / "circuit", 4, n_public=1, seed=11)
    # When a task naming a key the CLI uploads is submitted and waited for, with the token
    out = tmp_path / "proof.json"
    done = gpuproxy("tasks", "submit", "--url", broker.url,  # type: ignore[operator]
                    "--token-file", str(token_file), "--type", "groth16",
                    "--zkey", str(files.zkey), "--wtns", str(files.wtns), "--wait",
                    "-o", str(out), timeout_s=120)
    # Then the worker fetched the key from the broker, and the proof verifies
    assert done.returncode == 0, done.stderr
    assert "proving key fetched from the broker" in worker.logs()
    vk = groth16.read_verification_key(files.verification_key.read_bytes())
    public = json.loads((tmp_path / "public.json").read_text())
    assert groth16.verify_proof_json(vk, out.read_bytes(), public)
