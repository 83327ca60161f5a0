"""`cluster-c2-plugin run` settings: gpuproxy's plugin flags and environment variables, ours, and
the errors of bad ones (all before anything touches stdout)."""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys

import pytest

from broker import exceptions as broker_exceptions
from broker.flags import resolve
from plugin import cli, exceptions
from plugin.config import PluginConfig


def config_of(argv: list[str], environ: dict[str, str] | None = None) -> PluginConfig:
    args = cli.build_parser().parse_args(["run", *argv])
    return cli.config_from(resolve(args, cli.RUN_FLAGS, environ=environ or {}))


def test_defaults_are_gpuproxys_with_a_generous_deadline() -> None:
    config = config_of([])
    assert config.url == "http://127.0.0.1:18888"
    assert config.poll_interval_s == 60.0 and config.deadline_s == 24 * 3600.0
    assert config.dump_dir is None


def test_gpuproxys_plugin_environment_variables_still_work() -> None:
    environ = {"C2PROXY_LISTEN_URL": "http://10.0.0.5:18888", "C2PROXY_POLL_TASK_INTERVAL": "5",
               "C2PROXY_LOG_LEVEL": "WARN", "GPUPROXY_DEADLINE_S": "600",
               "GPUPROXY_DUMP_DIR": "/tmp/c2-dumps"}
    args = cli.build_parser().parse_args(["run"])
    values = resolve(args, cli.RUN_FLAGS, environ=environ)
    assert values["log_level"] == "warning"
    config = cli.config_from(values)
    assert config.url == "http://10.0.0.5:18888" and config.poll_interval_s == 5.0
    assert config.deadline_s == 600.0 and config.dump_dir == pathlib.Path("/tmp/c2-dumps")


def test_flags_win_over_the_environment() -> None:
    config = config_of(["--gpuproxy-url", "h:1", "--poll-task-interval", "2"],
                       {"C2PROXY_LISTEN_URL": "other:2", "C2PROXY_POLL_TASK_INTERVAL": "9"})
    assert (config.url, config.poll_interval_s) == ("h:1", 2.0)


def test_the_original_command_line_is_accepted() -> None:
    args = cli.build_parser().parse_args(
        ["run", "--gpuproxy-url", "http://127.0.0.1:18888", "--no-gpu", "--log-level", "trace"]
    )
    assert args.no_gpu and args.log_level == "debug"


@pytest.mark.parametrize(("given", "level"), [
    ("off", "error"), ("info,hyper=warn", "info"), ("debug,h2=info", "debug"),
    ("hyper=warn", "info"), ("WARN", "warning"),
])
def test_env_logger_levels_and_filters_are_read_as_gpuproxys_plugin_was_started(
    given: str, level: str
) -> None:
    args = cli.build_parser().parse_args(["run", "--log-level", given])
    assert args.log_level == level
    assert resolve(cli.build_parser().parse_args(["run"]), cli.RUN_FLAGS,
                   environ={"C2PROXY_LOG_LEVEL": given})["log_level"] == level


def test_an_unknown_log_level_lists_every_accepted_form() -> None:
    with pytest.raises(broker_exceptions.ConfigError, match=(
            "'verbose' from environment variable C2PROXY_LOG_LEVEL: not a log level: one of "
            "debug, info, warning, error, or env_logger's trace, warn, off")):
        resolve(cli.build_parser().parse_args(["run"]), cli.RUN_FLAGS,
                environ={"C2PROXY_LOG_LEVEL": "verbose"})


def test_a_poll_interval_of_0_waits_a_second() -> None:
    assert config_of(["--poll-task-interval", "0"]).poll_interval_s == cli.MIN_POLL_S


def test_help_names_the_environment_variables(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        cli.build_parser().parse_args(["run", "--help"])
    shown = " ".join(capsys.readouterr().out.split())
    for env in ("C2PROXY_LISTEN_URL", "C2PROXY_POLL_TASK_INTERVAL", "C2PROXY_LOG_LEVEL",
                "C2PROXY_NO_GPU", "GPUPROXY_DUMP_DIR", "GPUPROXY_DEADLINE_S"):
        assert env in shown


@pytest.mark.parametrize(("argv", "field"), [
    (["--deadline-s", "0"], "deadline-s"),
    (["--poll-task-interval", "-1"], "poll-task-interval"),
    (["--retry-min-s", "5", "--retry-max-s", "1"], "retry-max-s"),
])
def test_bad_settings_name_their_flag(argv: list[str], field: str) -> None:
    with pytest.raises(exceptions.ConfigError, match=f"Invalid setting {field}"):
        config_of(argv)


def test_a_bad_setting_exits_1_saying_why(tmp_path: pathlib.Path) -> None:
    not_a_dir = tmp_path / "file"
    not_a_dir.write_text("")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("GPUPROXY_", "C2PROXY_"))}
    done = subprocess.run(
        [sys.executable, "-m", "plugin.cli", "run", "--dump-dir", str(not_a_dir / "sub")],
        capture_output=True, text=True, timeout=30, env=env, stdin=subprocess.DEVNULL,
    )
    assert done.returncode == 1 and done.stdout == ""
    assert done.stderr.startswith("error: Invalid setting dump-dir: cannot create ")


def test_a_broker_address_that_cannot_be_right_is_refused_at_start(
    capsys: pytest.CaptureFixture[str]
) -> None:
    for url in ("127.0.0.1:99999", "ftp://x:1", " "):
        with pytest.raises(SystemExit) as exit_info:
            config_of(["--gpuproxy-url", url])
        assert exit_info.value.code == 2
        assert "argument --gpuproxy-url" in capsys.readouterr().err


def test_a_bad_environment_value_writes_nothing_on_the_protocol_pipe() -> None:
    # Settings are read before logging is set up: nothing of the error may reach stdout,
    # which venus-worker reads as responses
    env = {k: v for k, v in os.environ.items() if not k.startswith(("GPUPROXY_", "C2PROXY_"))}
    done = subprocess.run(
        [sys.executable, "-m", "plugin.cli", "run"], capture_output=True, text=True, timeout=30,
        env={**env, "C2PROXY_POLL_TASK_INTERVAL": "abc"}, stdin=subprocess.DEVNULL,
    )
    assert done.returncode == 1 and done.stdout == ""
    assert done.stderr.startswith("error: Invalid setting poll-task-interval: 'abc' from "
                                  "environment variable C2PROXY_POLL_TASK_INTERVAL")
