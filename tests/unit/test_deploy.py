"""The shipped example configuration is one the broker accepts."""

from __future__ import annotations

import argparse
import pathlib

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
