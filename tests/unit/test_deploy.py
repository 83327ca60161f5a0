"""The shipped example configuration is one the broker accepts; the deploy scripts start
well or refuse clearly."""

from __future__ import annotations

import argparse
import os
import pathlib
import re
import subprocess
from typing import Any

import pytest
import yaml

from broker import cli, logs
from broker.flags import load_toml, resolve

DEPLOY = pathlib.Path(__file__).resolve().parents[2] / "deploy"


def test_example_broker_config_is_valid() -> None:
    values = resolve(argparse.Namespace(), cli.RUN_FLAGS, load_toml(str(DEPLOY / "broker.toml")),
                     environ={})
    config = cli.broker_config_from(values)
    assert config.listen == "0.0.0.0:18888"
    assert config.dsn.startswith("mysql://") and config.resource_type == "fs"
    assert config.max_attempts_for("c2") == 3 > 1


def test_example_worker_config_is_valid() -> None:
    from worker import cli as worker_cli

    args = worker_cli.build_parser().parse_args(
        ["run", "--config", str(DEPLOY / "worker.toml")]
    )
    _, config = worker_cli.settings(args, worker_cli.RUN_FLAGS, environ={})
    assert config.url == "10.0.0.5:18888" and config.task_types == ("c2",)
    assert config.resource_type == "fs" and config.max_tasks == 1
    c2 = config.processors["c2"]
    assert c2.bin == "/usr/local/bin/venus-worker" and list(c2.args) == ["processor", "c2"]


def test_one_worker_config_serves_the_supervisor_and_its_workers(tmp_path: pathlib.Path) -> None:
    from worker import cli as worker_cli

    # The supervisor hands its --config to each worker it starts: its `gpus` must not stop them
    path = tmp_path / "worker.toml"
    path.write_text('gpus = "0,1"\ngpu = 0\n' + (DEPLOY / "worker.toml").read_text())
    for command, flags in (("run", worker_cli.RUN_FLAGS),
                           ("supervise", worker_cli.SUPERVISE_FLAGS)):
        args = worker_cli.build_parser().parse_args([command, "--config", str(path)])
        values, _ = worker_cli.settings(args, flags, environ={})
        assert values.get("gpus", "0,1") == "0,1" and str(values.get("gpu", 0)) == "0"


def test_the_worker_unit_signals_the_supervisor_alone_and_gives_it_a_home() -> None:
    unit = (DEPLOY / "gpuproxy-worker.service").read_text()
    # SIGTERM to the whole group would kill the C2 processors mid-proof, past the grace period
    assert "\nKillMode=mixed\n" in unit and "\nType=notify\n" in unit
    assert "\nStateDirectory=gpuproxy\n" in unit and "HOME=/var/lib/gpuproxy" in unit
    timeout = int(re.search(r"\nTimeoutStartSec=(\d+)\n", unit).group(1))  # type: ignore[union-attr]
    assert timeout > 120  # a C2 processor's ready wait


def test_wheelhouse_script_refuses_to_start_without_a_cuda_toolkit(tmp_path: pathlib.Path
                                                                    ) -> None:
    script = DEPLOY / "wheelhouse.sh"
    assert subprocess.run(["bash", "-n", str(script)], capture_output=True).returncode == 0
    result = subprocess.run(["bash", str(script), str(tmp_path / "wheels")], capture_output=True,
                            text=True, env={**os.environ, "CUDA_ROOT": str(tmp_path)})
    assert result.returncode == 1
    assert "no CUDA toolkit found" in result.stderr and "pycuda needs its headers" in result.stderr
    assert not (tmp_path / "wheels").exists()  # nothing half-built


# --- deploy/compose.yaml -------------------------------------------------------------------------

@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    return loaded


def _env(service: dict[str, Any]) -> dict[str, str]:
    return {k: str(v) for k, v in service["environment"].items()}


def test_compose_broker_settings_are_valid_and_match_the_database_setup(
    compose: dict[str, Any],
) -> None:
    broker = compose["services"]["broker"]
    assert broker["command"][:2] == ["gpuproxy", "run"]
    values = resolve(argparse.Namespace(), cli.RUN_FLAGS, {}, environ=_env(broker))
    config = cli.broker_config_from(values)
    assert config.listen == "0.0.0.0:18888" and config.resource_type == "fs"
    # The DSN's user, password and database are the ones mariadb-setup.sql creates
    setup = (DEPLOY / "mariadb-setup.sql").read_text()
    dsn = re.fullmatch(r"mysql://(\w+):([^@]+)@mariadb:3306/(\w+)", config.dsn)
    assert dsn is not None, config.dsn
    user, password, database = dsn.groups()
    assert f"CREATE USER IF NOT EXISTS '{user}'@'%' IDENTIFIED BY '{password}'" in setup
    assert f"CREATE DATABASE IF NOT EXISTS {database} " in setup
    assert "./mariadb-setup.sql:/docker-entrypoint-initdb.d/gpuproxy.sql:ro" in \
        compose["services"]["mariadb"]["volumes"]
    # Its health check is a command the CLI takes
    check = broker["healthcheck"]["test"]
    assert check[0] == "CMD" and check[1] == "gpuproxy"
    cli.build_parser().parse_args(check[2:])


@pytest.mark.parametrize(("name", "subcommand", "backend"), [
    ("worker", "run", "cpu"), ("worker-gpu", "supervise", "cuda"),
])
def test_compose_workers_reach_the_broker_and_read_its_payload_folder(
    compose: dict[str, Any], name: str, subcommand: str, backend: str,
) -> None:
    from worker import cli as worker_cli

    services = compose["services"]
    worker = services[name]
    assert worker["command"] == ["gpuproxy-worker", subcommand]
    args = worker_cli.build_parser().parse_args([subcommand])
    flags = worker_cli.RUN_FLAGS if subcommand == "run" else worker_cli.SUPERVISE_FLAGS
    try:
        _, config = worker_cli.settings(args, flags, environ=_env(worker))
    finally:
        logs.configure("info", "console")
    assert config.url == "broker:18888" and config.backend == backend
    assert "groth16" in config.task_types
    # The payload folder is the broker's own volume, mounted where the setting says
    broker_fs = _env(services["broker"])["GPUPROXY_FS_RESOURCE_PATH"]
    assert config.resource_type == "fs" and str(config.fs_resource_path) == broker_fs
    assert f"payloads:{broker_fs}" in services["broker"]["volumes"]
    assert f"payloads:{broker_fs}:ro" in worker["volumes"]
    # Its id lives on a volume: a re-created container is the same worker, not a new one
    work_dir = str(config.work_dir).split("/{gpu}")[0]
    assert f"workers:{work_dir}" in worker["volumes"]


def test_compose_builds_the_dockerfile_targets(compose: dict[str, Any]) -> None:
    dockerfile = (DEPLOY / "Dockerfile").read_text()
    for name in ("broker", "worker", "worker-gpu"):
        build = compose["services"][name]["build"]
        assert build["dockerfile"] == "deploy/Dockerfile" and build["context"] == ".."
        assert f" AS {build['target']}\n" in dockerfile
    gpu = compose["services"]["worker-gpu"]["deploy"]["resources"]["reservations"]["devices"]
    assert gpu == [{"driver": "nvidia", "count": "all", "capabilities": ["gpu"]}]


def test_alert_rules_name_only_metrics_the_broker_exports() -> None:
    from broker import metrics

    rules = yaml.safe_load((DEPLOY / "alerts.yaml").read_text())
    exprs = [r["expr"] for g in rules["groups"] for r in g["rules"]]
    named = {m for e in exprs for m in re.findall(r"\b(gpuproxy_[a-z_]+)", e)}
    families = list(metrics.REGISTRY.collect())  # a counter's samples end in _total
    exported = {m.name + ("_total" if m.type == "counter" else "") for m in families}
    assert named and named <= exported, named - exported


@pytest.mark.parametrize("program", ["broker", "worker"])
def test_the_readme_lists_every_flag_with_its_variable(program: str) -> None:
    from worker import cli as worker_cli

    readme = (DEPLOY.parent / "README.md").read_text()
    flags = cli.RUN_FLAGS if program == "broker" else worker_cli.RUN_FLAGS
    missing = [f.name for f in flags if f"| `--{f.name}` | `{f.env}` |" not in readme]
    assert not missing, f"README lacks the {program} flags {missing}"


def test_compose_c2_workers_run_the_hosts_processor_with_its_parameters(
    compose: dict[str, Any],
) -> None:
    from worker import cli as worker_cli

    service = compose["services"]["worker-c2"]
    assert service["command"] == ["gpuproxy-worker", "supervise"]
    args = worker_cli.build_parser().parse_args(["supervise"])
    try:
        _, config = worker_cli.settings(args, worker_cli.SUPERVISE_FLAGS, environ=_env(service))
    finally:
        logs.configure("info", "console")
    assert config.task_types == ("c2",)
    c2 = config.processors["c2"]
    assert c2.args == ("processor", "c2")
    # The binary and the parameter files come from the host, read-only, where the settings say
    params = _env(service)["FIL_PROOFS_PARAMETER_CACHE"]
    assert f"{c2.bin}:{c2.bin}:ro" in service["volumes"]
    assert f"{params}:{params}:ro" in service["volumes"]
    assert "workers:/var/lib/gpuproxy/workers" in service["volumes"]
