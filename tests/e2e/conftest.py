"""Real broker processes for end-to-end tests: started with the `gpuproxy` CLI, stopped (or
killed) by the test, their logs shown when a test fails."""

from __future__ import annotations

import dataclasses
import os
import pathlib
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

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
                with grpc.insecure_channel(self.url) as ch:
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
    env = {k: v for k, v in os.environ.items() if not k.startswith("GPUPROXY_")}
    env["HOME"] = str(tmp_path / "home")  # never touch the real ~/.gpuproxy
    return env


BrokerFactory = Callable[..., BrokerProcess]


@pytest.fixture
def broker_factory(
    tmp_path: pathlib.Path, request: pytest.FixtureRequest
) -> Iterator[BrokerFactory]:
    """Start brokers: factory(dsn, resource_type="fs", payload_dir=None, extra=[...])."""
    started: list[BrokerProcess] = []

    def make(dsn: str, resource_type: str = "fs", payload_dir: pathlib.Path | None = None,
             extra: list[str] | None = None, port: int | None = None) -> BrokerProcess:
        payloads = payload_dir or tmp_path / "payloads"
        args = ["--db-dsn", dsn, "--resource-type", resource_type,
                "--fs-resource-path", str(payloads), "--log-level", "debug", *(extra or [])]
        b = BrokerProcess(url=f"127.0.0.1:{port or free_port()}", args=args,
                          log_path=tmp_path / f"broker-{len(started)}.log", env=cli_env(tmp_path))
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
