"""Real broker processes for end-to-end tests: started with the `gpuproxy` CLI, stopped (or
killed) by the test, their logs shown when a test fails."""

from __future__ import annotations

import contextlib
import dataclasses
import os
import pathlib
import signal
import socket
import stat
import subprocess
import sys
import time
from collections.abc import Callable, Iterator

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from broker.flags import without_settings
from tests.fixtures import fake_c2
from worker.groth16 import native

BIN = pathlib.Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclasses.dataclass
class BrokerProcess:
    url: str
    args: list[str]
    log_path: pathlib.Path
    env: dict[str, str]
    proc: subprocess.Popen[bytes] | None = None
    tls_ca: bytes | None = None  #: the CA of a broker serving TLS

    def start(self, timeout_s: float = 20.0) -> BrokerProcess:
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                [str(BIN / "gpuproxy"), "run", "--url", self.url, *self.args],
                stdout=log, stderr=log, env=self.env,
            )
        self.wait_serving(timeout_s)
        return self

    def wait_serving(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise AssertionError(f"broker exited with {self.proc.returncode}:\n{self.logs()}")
            try:
                with (grpc.secure_channel(self.url, grpc.ssl_channel_credentials(self.tls_ca))
                      if self.tls_ca else grpc.insecure_channel(self.url)) as ch:
                    reply = health_pb2_grpc.HealthStub(ch).Check(
                        health_pb2.HealthCheckRequest(service=""), timeout=1
                    )
                if reply.status == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.RpcError:
                time.sleep(0.1)
        raise AssertionError(f"broker not serving after {timeout_s}s:\n{self.logs()}")

    def stop(self, sig: int = signal.SIGTERM) -> int:
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else 0
        self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait()

    def logs(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


def cli_env(tmp_path: pathlib.Path) -> dict[str, str]:
    env = without_settings(os.environ)
    # Builds (the CPU prover's C helper, CUDA kernels) are shared, content-addressed: compiled
    # once per machine, not by every test's worker
    env["XDG_CACHE_HOME"] = str(native.cache_dir().parent)
    env["HOME"] = str(tmp_path / "home")  # never touch the real ~/.gpuproxy
    return env


@pytest.fixture(scope="session", autouse=True)
def native_prover_built() -> None:
    """The CPU prover's C helper, built before any worker starts (about 20 s on 2 cores, more
    than a test waits for a worker to register); a test that needs it says so if it cannot."""
    with contextlib.suppress(Exception):
        native.library()


BrokerFactory = Callable[..., BrokerProcess]


@pytest.fixture
def broker_factory(
    tmp_path: pathlib.Path, request: pytest.FixtureRequest
) -> Iterator[BrokerFactory]:
    """Start brokers: factory(dsn, resource_type="fs", payload_dir=None, extra=[...])."""
    started: list[BrokerProcess] = []

    def make(dsn: str, resource_type: str = "fs", payload_dir: pathlib.Path | None = None,
             extra: list[str] | None = None, port: int | None = None,
             tls_ca: bytes | None = None) -> BrokerProcess:
        payloads = payload_dir or tmp_path / "payloads"
        args = ["--db-dsn", dsn, "--resource-type", resource_type,
                "--fs-resource-path", str(payloads), "--log-level", "debug", *(extra or [])]
        b = BrokerProcess(url=f"127.0.0.1:{port or free_port()}", args=args,
                          log_path=tmp_path / f"broker-{len(started)}.log", env=cli_env(tmp_path),
                          tls_ca=tls_ca)
        started.append(b)
        return b.start()

    yield make
    for b in started:
        b.stop(signal.SIGKILL)
    if request.node.rep_call.failed if hasattr(request.node, "rep_call") else False:
        for b in started:
            print(f"--- {b.log_path.name} ---\n{b.logs()}")


@pytest.fixture
def gpuproxy(tmp_path: pathlib.Path) -> Callable[..., subprocess.CompletedProcess[str]]:
    """Run the `gpuproxy` CLI as a user would; returns the completed process."""

    def run(*args: str, timeout_s: float = 60.0) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(BIN / "gpuproxy"), *args], capture_output=True, text=True, timeout=timeout_s,
            env=cli_env(tmp_path), stdin=subprocess.DEVNULL,
        )

    return run


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]):  # type: ignore[no-untyped-def]
    rep = yield
    setattr(item, f"rep_{rep.when}", rep)
    return rep


# -- workers ---------------------------------------------------------------------------

FAKE_C2 = pathlib.Path(fake_c2.__file__)
LEASE_S = 6.0  #: the lease of the worker tests' brokers
SMI_OUTPUT = "0, Fake GPU A, GPU-e2e-0, 24576\n1, Fake GPU B, GPU-e2e-1, 24576\n"
#: What it says to -L: the same GPUs, none in MIG mode.
SMI_LISTING = "GPU 0: Fake GPU A (UUID: GPU-e2e-0)\nGPU 1: Fake GPU B (UUID: GPU-e2e-1)\n"


def fake_nvidia_smi(path: pathlib.Path, query: str = SMI_OUTPUT,
                    listing: str = SMI_LISTING) -> None:
    """An nvidia-smi at `path` that prints `listing` for -L and `query` for the CSV query."""
    path.write_text(f"""#!/bin/sh
if [ "$1" = -L ]; then cat <<'EOF'
{listing}EOF
else cat <<'EOF'
{query}EOF
fi
""")
    path.chmod(path.stat().st_mode | stat.S_IEXEC)


@dataclasses.dataclass
class WorkerProcess:
    argv: list[str]
    env: dict[str, str]
    log_path: pathlib.Path
    proc: subprocess.Popen[bytes] | None = None

    def start(self) -> WorkerProcess:
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen([str(BIN / "gpuproxy-worker"), *self.argv],
                                         stdout=log, stderr=log, env=self.env,
                                         stdin=subprocess.DEVNULL)
        return self

    def wait_for(self, text: str, timeout_s: float = 20.0, count: int = 1) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.logs().count(text) >= count:
                return
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise AssertionError(f"worker exited with {self.proc.returncode}:\n{self.logs()}")
            time.sleep(0.05)
        raise AssertionError(f"no {text!r} in the worker log after {timeout_s}s:\n{self.logs()}")

    def signal(self, sig: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    def wait(self, timeout_s: float = 15.0) -> int:
        assert self.proc is not None
        return self.proc.wait(timeout=timeout_s)

    def logs(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


WorkerFactory = Callable[..., WorkerProcess]


@pytest.fixture
def worker_factory(
    tmp_path: pathlib.Path, request: pytest.FixtureRequest
) -> Iterator[WorkerFactory]:
    """factory(url, gpu=0, extra=[...], env={...}, command="run"): a started worker process."""
    smi = tmp_path / "fake-nvidia-smi"  # a test may write another in its place
    fake_nvidia_smi(smi)
    started: list[WorkerProcess] = []

    def make(url: str, gpu: int | str | None = 0, extra: list[str] | None = None,
             env: dict[str, str] | None = None, command: str = "run",
             work_dir: str | None = None) -> WorkerProcess:
        argv = [command, "--gpuproxy-url", url, "--nvidia-smi", str(smi),
                "--lock-dir", str(tmp_path / "locks"),
                "--work-dir", work_dir or str(tmp_path / "workers" / "{gpu}"),
                "--c2-bin", sys.executable, "--c2-args", str(FAKE_C2), "--log-level", "debug",
                *(["--gpu", str(gpu)] if gpu is not None else []), *(extra or [])]
        full_env = {**cli_env(tmp_path), "FAKE_C2_PIDS": str(tmp_path / "c2-pids"),
                    **(env or {})}
        w = WorkerProcess(argv, full_env, tmp_path / f"worker-{len(started)}.log")
        started.append(w)
        return w.start()

    yield make
    for w in started:
        if w.proc is not None and w.proc.poll() is None:
            w.proc.kill()
            w.proc.wait()
    for pid in _pids(tmp_path):
        _kill(pid)
    if request.node.rep_call.failed if hasattr(request.node, "rep_call") else False:
        for w in started:
            print(f"--- {w.log_path.name} ---\n{w.logs()}")


def _pids(tmp_path: pathlib.Path) -> list[int]:
    path = tmp_path / "c2-pids"
    return [int(p) for p in path.read_text().split()] if path.exists() else []


def _alive(pid: int) -> bool:
    stat_path = pathlib.Path(f"/proc/{pid}/stat")
    try:
        return stat_path.read_text().split(") ")[-1][:1] not in ("Z", "X")
    except OSError:
        return False


def _kill(pid: int) -> None:
    if _alive(pid):
        os.kill(pid, signal.SIGKILL)
