"""A broker serving TLS (--tls-cert, --tls-key): a worker, a plugin and the CLI reach it by its
CA (--tls-ca), with its access token inside TLS; a program that does not speak TLS to it, or
does not trust its certificate, is told which, and TLS settings that cannot work stop the
broker before it serves."""

from __future__ import annotations

import asyncio
import pathlib
import subprocess
from typing import Any

import pytest

from tests.e2e.conftest import BrokerFactory, BrokerProcess, WorkerFactory
from tests.e2e.test_access_token import token_file  # noqa: F401 (a fixture)
from tests.e2e.test_plugin_e2e import (
    PluginFactory,
    plugin_factory,  # noqa: F401 (a fixture)
    proof_of,
    request_line,
    task_bytes,
)
from tests.fixtures import certs as test_certs

Run = Any  # the gpuproxy fixture: run(*args) -> CompletedProcess


@pytest.fixture
def certs(tmp_path: pathlib.Path) -> test_certs.Certs:
    return test_certs.write(tmp_path / "tls")


@pytest.fixture
def broker(sqlite_dsn: str, broker_factory: BrokerFactory, certs: test_certs.Certs,
           token_file: pathlib.Path) -> BrokerProcess:  # noqa: F811
    return broker_factory(sqlite_dsn, "fs", tls_ca=certs.ca.read_bytes(), extra=[
        "--tls-cert", str(certs.cert), "--tls-key", str(certs.key),
        "--token-file", str(token_file), "--lease-s", "6", "--max-attempts", "1",
    ])


async def test_a_worker_a_plugin_and_the_cli_prove_over_tls_by_the_brokers_ca(
    broker: BrokerProcess, worker_factory: WorkerFactory, plugin_factory: PluginFactory,  # noqa: F811
    gpuproxy: Run, certs: test_certs.Certs, token_file: pathlib.Path,  # noqa: F811
) -> None:
    # Given a worker (flags) and a plugin (variables) that trust the broker's CA
    worker_factory(broker.url, extra=["--tls-ca", str(certs.ca),
                                      "--token-file", str(token_file)])
    plugin = await plugin_factory(broker.url, env_add={
        "GPUPROXY_TLS_CA": str(certs.ca), "GPUPROXY_TOKEN_FILE": str(token_file)})
    # Then a request gets its proof
    task = task_bytes(181)
    await plugin.send(request_line(1, task))
    assert await plugin.proof(1) == proof_of(task)
    # And the CLI lists the task, by the certificate's host name too
    port = broker.url.rpartition(":")[2]
    listed = gpuproxy("tasks", "list", "--url", f"https://localhost:{port}",
                      "--tls-ca", str(certs.ca), "--token-file", str(token_file))
    assert listed.returncode == 0, listed.stderr
    assert "sector 181" in listed.stdout
    assert "tls=True" in broker.logs() and "access=token" in broker.logs()


UNTRUSTED = ("cannot work: the broker's certificate is not signed by the CA this program "
             "trusts: give --tls-ca the CA's certificate (or the broker's own, if self-signed)")


async def test_a_program_that_does_not_trust_or_speak_tls_is_told_which(
    broker: BrokerProcess, gpuproxy: Run, worker_factory: WorkerFactory,
    plugin_factory: PluginFactory, tmp_path: pathlib.Path,  # noqa: F811
    token_file: pathlib.Path,  # noqa: F811
) -> None:
    # The CLI speaking plain is told the broker may serve TLS
    plain = gpuproxy("tasks", "list", "--url", broker.url, "--token-file", str(token_file))
    assert plain.returncode == 1
    assert (f"No broker at {broker.url}: is `gpuproxy run` started there, and is the address "
            "right? (a broker serving TLS (--tls-cert) closes plain connections; if this one "
            "does, give --tls-ca, or an https:// address") in plain.stderr
    # Trusting another CA: the CLI, a worker and a plugin each say so, and none waits on
    stranger = test_certs.write(tmp_path / "other", "another CA")
    untrusted = gpuproxy("tasks", "list", "--url", broker.url, "--tls-ca", str(stranger.ca),
                         "--token-file", str(token_file))
    assert untrusted.returncode == 1
    assert f"TLS with the broker at {broker.url} {UNTRUSTED}" in untrusted.stderr
    worker = worker_factory(broker.url, extra=["--tls-ca", str(stranger.ca),
                                               "--token-file", str(token_file)])
    assert await asyncio.to_thread(worker.wait, 20) == 1
    assert UNTRUSTED in worker.logs()
    plugin = await plugin_factory(broker.url, ["--tls-ca", str(stranger.ca),
                                               "--token-file", str(token_file)])
    await plugin.send(request_line(1, task_bytes(191)))
    assert UNTRUSTED in await plugin.error(1, timeout_s=10)


def test_tls_settings_that_cannot_work_are_refused_before_anything_starts(
    gpuproxy: Run, certs: test_certs.Certs, tmp_path: pathlib.Path,
) -> None:
    stranger = test_certs.write(tmp_path / "other", "another CA")
    not_pem = tmp_path / "ca.der"
    not_pem.write_bytes(b"\x30\x82\x01\x0a")
    locked = tmp_path / "locked.key"
    locked.write_bytes(test_certs.encrypted(certs.key, b"pass phrase"))
    cases = [
        (["run", "--url", "127.0.0.1:0", "--tls-cert", str(certs.cert)],
         "Invalid setting tls-key: TLS needs both --tls-cert (the certificate chain) and "
         "--tls-key (its key)"),
        (["run", "--url", "127.0.0.1:0", "--tls-cert", str(certs.cert),
          "--tls-key", str(stranger.key)],
         f"Invalid setting tls-key: {stranger.key} is not the key of the certificate in "
         f"{certs.cert}"),
        (["run", "--url", "127.0.0.1:0", "--tls-cert", str(certs.cert),
          "--tls-key", str(locked)],
         f"Invalid setting tls-key: {locked} is encrypted, and the broker starts unattended"),
        (["tasks", "list", "--tls-ca", str(not_pem)],
         f"Invalid setting tls-ca: {not_pem} is not PEM: a CA certificate starts with a "
         "-----BEGIN line"),
    ]
    for args, message in cases:
        result: subprocess.CompletedProcess[str] = gpuproxy(*args)
        assert result.returncode == 1, result.stderr
        assert result.stderr.startswith(f"error: {message}"), result.stderr
