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
