"""The shipped example configuration is one the broker accepts; the deploy scripts start
well or refuse clearly."""

from __future__ import annotations

import argparse
import os
import pathlib
import subprocess

from broker import cli
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


def test_wheelhouse_script_refuses_to_start_without_a_cuda_toolkit(tmp_path: pathlib.Path
                                                                    ) -> None:
    script = DEPLOY / "wheelhouse.sh"
    assert subprocess.run(["bash", "-n", str(script)], capture_output=True).returncode == 0
    result = subprocess.run(["bash", str(script), str(tmp_path / "wheels")], capture_output=True,
                            text=True, env={**os.environ, "CUDA_ROOT": str(tmp_path)})
    assert result.returncode == 1
    assert "no CUDA toolkit found" in result.stderr and "pycuda needs its headers" in result.stderr
    assert not (tmp_path / "wheels").exists()  # nothing half-built
