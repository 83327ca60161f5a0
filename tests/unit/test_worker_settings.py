"""From flags, environment and TOML to a WorkerConfig; the executor registry."""

from __future__ import annotations

import argparse
import pathlib

import pytest

from broker import exceptions as broker_exceptions
from worker import cli, exceptions, executors
from worker.config import ProcessorConfig, WorkerConfig
from worker.executors.c2 import C2Executor
from worker.gpus import GpuId


@pytest.fixture(autouse=True)
def _no_logging_setup(monkeypatch: pytest.MonkeyPatch) -> None:
    # settings() configures logging for the process; leave pytest's alone.
    monkeypatch.setattr(cli.logs, "configure", lambda *args: None)


def parse(*argv: str) -> argparse.Namespace:
    return cli.build_parser().parse_args(["run", *argv])


def config_of(*argv: str, env: dict[str, str] | None = None) -> WorkerConfig:
    return cli.settings(parse(*argv), cli.RUN_FLAGS, env or {})[1]


def test_defaults() -> None:
    config = config_of()
    assert config.url == "127.0.0.1:18888"
    assert (config.max_tasks, config.task_types, config.gpu) == (1, ("c2",), None)
    assert config.resource_type == "stream" and config.fs_resource_path is None
    assert config.processors == {}
    assert config.work_dir_for("gpu0") == pathlib.Path.home() / ".gpuproxy" / "worker-gpu0"


def test_gpuproxy_style_flags() -> None:
    config = config_of("--gpuproxy-url", "http://10.0.0.5:18888", "--max-tasks", "2",
                       "--allow-type", "c2, groth16", "--gpu", "3", "--resource-type", "db")
    assert config.url == "http://10.0.0.5:18888"
    assert config.task_types == ("c2", "groth16") and config.max_tasks == 2
    assert config.gpu == GpuId(3)
    assert config.resource_type == "stream"  # gpuproxy's db: the payload comes over the wire


def test_fs_resource_type_needs_the_folder() -> None:
    with pytest.raises(exceptions.ConfigError, match="fs-resource-path"):
        config_of("--resource-type", "fs")
    config = config_of("--resource-type", "fs", "--fs-resource-path", "/mnt/nfs/gpuproxy")
    assert config.fs_resource_path == pathlib.Path("/mnt/nfs/gpuproxy")


def test_c2_processor_from_flags_args_shell_split_or_repeated() -> None:
    config = config_of("--c2-bin", "/opt/cluster_c2_plugin",
                       "--c2-args", "run --gpuproxy-url http://h:1", "--c2-args=--x",
                       "--c2-env", "RUST_LOG=info", "--c2-env", "FIL_PROOFS_USE_GPU=1")
    assert config.processors["c2"] == ProcessorConfig(
        bin="/opt/cluster_c2_plugin", args=("run", "--gpuproxy-url", "http://h:1", "--x"),
        envs={"RUST_LOG": "info", "FIL_PROOFS_USE_GPU": "1"},
    )


def test_c2_processor_from_the_environment() -> None:
    config = config_of(env={"GPUPROXY_C2_BIN": "/bin/c2", "GPUPROXY_C2_ARGS": "a 'b c'",
                            "GPUPROXY_C2_ENV": "K=v 'L=x y'"})
    assert config.processors["c2"] == ProcessorConfig(
        bin="/bin/c2", args=("a", "b c"), envs={"K": "v", "L": "x y"}
    )


def test_venus_worker_processor_block_in_the_config_file(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "worker.toml"
    path.write_text(
        'gpuproxy-url = "10.0.0.5:18888"\nmax-tasks = 2\n\n'
        '[[processors.c2]]\nbin = "/opt/c2"\nargs = ["run", "--flag"]\nweight = 1\n'
        'concurrent = 1\nenvs = { FIL_PROOFS_USE_GPU = "1" }\n'
    )
    config = config_of("--config", str(path))
    assert (config.url, config.max_tasks) == ("10.0.0.5:18888", 2)
    assert config.processors["c2"] == ProcessorConfig(
        bin="/opt/c2", args=("run", "--flag"), envs={"FIL_PROOFS_USE_GPU": "1"}
    )
    # Flags and environment win over the file, field by field.
    config = config_of("--config", str(path), "--c2-args", "other",
                       env={"GPUPROXY_C2_BIN": "/bin/mine"})
    assert config.processors["c2"] == ProcessorConfig(
        bin="/bin/mine", args=("other",), envs={"FIL_PROOFS_USE_GPU": "1"}
    )


@pytest.mark.parametrize(("keys", "args", "envs"), [
    ('c2-args = "run --x \'a b\'"\nc2-env = ["K=v", "L=x y"]\n', ("run", "--x", "a b"),
     {"K": "v", "L": "x y"}),
    ('c2_args = ["run", "a b"]\nc2_env = { K = "v" }\n', ("run", "a b"), {"K": "v"}),
], ids=["string and list", "list and table"])
def test_c2_args_and_env_as_config_file_keys(tmp_path: pathlib.Path, keys: str,
                                             args: tuple[str, ...], envs: dict[str, str]) -> None:
    # Like every flag, the two repeatable ones are config file keys too
    path = tmp_path / "worker.toml"
    path.write_text(f'c2-bin = "/opt/c2"\n{keys}')
    assert config_of("--config", str(path)).processors["c2"] == ProcessorConfig(
        bin="/opt/c2", args=args, envs=envs)
    # below the flags and the environment
    config = config_of("--config", str(path), "--c2-args", "other",
                       env={"GPUPROXY_C2_ENV": "M=1"})
    assert config.processors["c2"] == ProcessorConfig(bin="/opt/c2", args=("other",),
                                                      envs={"M": "1"})


@pytest.mark.parametrize(("keys", "message"), [
    ("c2-args = 3\n", "c2-args: in the config file it is a string or a list of strings"),
    ("c2-env = { K = 1 }\n", "c2-env: in the config file it is a table of strings"),
    ('c2-env = ["NOEQUALS"]\n', "not KEY=VALUE"),
])
def test_bad_c2_config_file_keys_are_named(tmp_path: pathlib.Path, keys: str,
                                          message: str) -> None:
    path = tmp_path / "worker.toml"
    path.write_text(f'c2-bin = "/opt/c2"\n{keys}')
    with pytest.raises(exceptions.ConfigError, match=message):
        config_of("--config", str(path))


def test_a_damocles_block_runs_as_damocles_would_run_it(tmp_path: pathlib.Path) -> None:
    # Given a block as damocles-worker's examples write it: bin alone, a card, numa and envs
    path = tmp_path / "worker.toml"
    path.write_text(
        '[[processors.c2]]\nbin = "/usr/local/bin/damocles-worker"\nnuma_preferred = 0\n'
        'inherit_envs = false\nenvs = { CUDA_VISIBLE_DEVICES = "0", FIL_PROOFS_USE_GPU = "1" }\n'
    )
    # Then without args it runs the binary's `processor c2`, as damocles does, inheriting nothing
    c2 = config_of("--config", str(path)).processors["c2"]
    assert c2.args == ("processor", "c2") and not c2.inherit_envs
    assert c2.envs == {"CUDA_VISIBLE_DEVICES": "0", "FIL_PROOFS_USE_GPU": "1"}
    # And a worker given --gpu runs it on that card, not on the one the block names
    c2 = config_of("--config", str(path), "--gpu", "1").processors["c2"]
    assert c2.envs == {"FIL_PROOFS_USE_GPU": "1"}


@pytest.mark.parametrize(("toml", "complaint"), [
    ('[[processors.c2]]\nargs = ["x"]\n', "bin"),
    ('[[processors.c2]]\nbin = "/x"\ninherit_envs = "no"\n', "inherit_envs must be true"),
    ('[[processors.c2]]\nbin = "/x"\nargs = "run"\n', "args must be a list"),
    ('[[processors.c2]]\nbin = "/x"\nenvs = { A = 1 }\n', "envs must be a table"),
    ('[[processors.c2]]\nbin = "/x"\nbinary = "/y"\n', "unknown keys"),
    ("processors = 3\n", "processors"),
])
def test_bad_processor_blocks_are_named(tmp_path: pathlib.Path, toml: str,
                                        complaint: str) -> None:
    path = tmp_path / "worker.toml"
    path.write_text(toml)
    with pytest.raises(exceptions.ConfigError, match=complaint):
        config_of("--config", str(path))


def test_bad_values_name_their_source() -> None:
    with pytest.raises(exceptions.ConfigError, match="KEY=VALUE"):
        config_of("--c2-bin", "/x", "--c2-env", "NOEQUALS")
    with pytest.raises(exceptions.ConfigError, match="binary"):
        config_of("--c2-args", "run")
    with pytest.raises(exceptions.ConfigError, match="max-tasks"):
        config_of("--max-tasks", "0")
    with pytest.raises(exceptions.ConfigError, match="max-tasks: must be 1 to 1024"):
        config_of("--max-tasks", "99999999999")  # announced in a 32-bit field
    with pytest.raises(broker_exceptions.ConfigError, match="GPUPROXY_GPU"):
        config_of(env={"GPUPROXY_GPU": "first"})


def test_supervise_passes_its_flags_on_without_gpus() -> None:
    argv = ["supervise", "--gpus", "0,1", "--max-tasks", "1", "--gpus=2", "--c2-args=--x"]
    assert cli.without_gpus_flag(argv) == ["--max-tasks", "1", "--c2-args=--x"]


def test_work_dir_placeholder() -> None:
    config = WorkerConfig(work_dir=pathlib.Path("/var/lib/gpuproxy/{gpu}"))
    assert config.work_dir_for("cpu") == pathlib.Path("/var/lib/gpuproxy/cpu")


def test_registry_finds_c2_by_itself() -> None:
    assert executors.known()["c2"] is C2Executor


def test_registry_refuses_a_type_nobody_runs() -> None:
    config = WorkerConfig(task_types=("c2", "pc2"),
                          processors={"c2": ProcessorConfig(bin="/x")})
    with pytest.raises(exceptions.ConfigError, match=r"no executor for pc2; .*runs c2"):
        executors.create(config)


def test_c2_without_a_processor_says_how_to_configure_one() -> None:
    with pytest.raises(exceptions.ConfigError, match=r"--c2-bin.*\[\[processors.c2\]\]"):
        executors.create(WorkerConfig())


def test_an_unknown_config_key_is_refused_naming_every_key_the_file_takes(
    tmp_path: pathlib.Path,
) -> None:
    path = tmp_path / "worker.toml"
    path.write_text('c2-argz = "run"\n')
    with pytest.raises(broker_exceptions.ConfigError) as info:
        config_of("--config", str(path))
    said = str(info.value)
    assert "c2-argz (did you mean c2-args?)" in said
    keys = said.rpartition("the keys are the flag names: ")[2].split(", ")
    assert {"c2-args", "c2-env", "gpus", "processors", "max-tasks"} <= set(keys)
