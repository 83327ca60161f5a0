"""`gpuproxy-worker`: run one worker (`run`), or one per GPU (`supervise`).

Every flag also reads GPUPROXY_<FLAG> and the TOML file given with --config (flag names as keys,
plus venus-worker style `[[processors.c2]]` blocks with bin, args and envs). Logs and errors go
to stderr; errors print their chain of causes and exit with status 1 (2 for wrong flags).
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import os
import pathlib
import shlex
import sys
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import structlog

from broker import __version__, access, logs, tls
from broker import exceptions as broker_exceptions
from broker.cli import ACCESS_FLAGS, LOG_FLAGS, run_command
from broker.flags import (
    Flag,
    add_flags,
    addresses,
    argparse_type,
    load_toml,
    parse_args,
    resolve,
    seconds,
)
from worker import config as worker_config
from worker import daemon, exceptions, executors, gpus
from worker.supervisor import Supervisor

log = structlog.get_logger(__name__)

COMMON_FLAGS = [
    Flag("gpuproxy-url", "address of the broker (http://HOST:PORT as in gpuproxy works too); "
         "brokers sharing one database, comma-separated: the next is used while one is down",
         "127.0.0.1:18888", addresses),
    *ACCESS_FLAGS,
    Flag("max-tasks", "tasks this worker runs at once", 1, int),
    Flag("allow-type", "task types this worker runs, comma separated", "c2"),
    Flag("nvidia-smi", "GPU inventory command; '' (or none installed) makes a CPU worker",
         "nvidia-smi"),
    Flag("lock-dir", "folder of the per-GPU lock files shared by this host's workers",
         "/tmp/gpuproxy-gpu-locks"),
    Flag("work-dir", "worker id and temp payloads; {gpu} becomes gpu0, gpu1, ... or cpu",
         "~/.gpuproxy/worker-{gpu}"),
    Flag("resource-type", "stream: payloads from the broker over gRPC (db is taken as stream, "
         "as in gpuproxy); fs: read them from the broker's shared folder", "stream",
         choices=("stream", "fs", "db")),
    Flag("fs-resource-path", "with --resource-type fs: the broker's payload folder as mounted "
         "here (NFS)"),
    Flag("task-timeout-s", "longest a task may run in its executor before it is killed",
         7200.0, seconds),
    Flag("grace-s", "on SIGTERM/SIGINT, how long running tasks may finish before they are "
         "handed back", 60.0, seconds),
    Flag("pause-after-failures", "after this many failed tasks in a row, take no new task "
         "for 30 s, doubling up to 10 min, so that healthy workers get the queue; 0: never",
         3, int),
    Flag("twin-wait-s", "when the broker refuses this worker because a live worker has its "
         "id, try again this long (it may be this host's previous run) before exiting", 120.0,
         seconds),
    Flag("c2-bin", "the external C2 processor (bin of venus-worker's [[processors.c2]])"),
    Flag("params-dir", "groth16 proving keys, each named <sha256>.zkey", "~/.gpuproxy/params"),
    Flag("backend", "groth16 prover: auto (CUDA when pycuda and a GPU work, else CPU), cpu, "
         "cuda", "auto", choices=("auto", "cpu", "cuda")),
    *LOG_FLAGS,
]
RUN_FLAGS = [
    Flag("gpu", "GPU index as nvidia-smi numbers it, or N:M for MIG device M of GPU N (as "
         "nvidia-smi -L lists them); sets CUDA_VISIBLE_DEVICES for the worker and its children",
         None, gpus.GpuId.parse),
    *COMMON_FLAGS,
]
SUPERVISE_FLAGS = [
    Flag("gpus", "GPU indices (N:M for a MIG device), comma separated; default every visible "
         "GPU, and each MIG device of a GPU in MIG mode"),
    *COMMON_FLAGS,
]
#: Keys of venus-worker's [[processors.*]] blocks that have no meaning here.
VENUS_ONLY_KEYS = frozenset({"name", "weight", "concurrent", "cgroup", "locks",
                             "auto_restart", "stable_wait", "numa_preferred"})


# -- settings -------------------------------------------------------------------------------------


def split_args(values: Sequence[str]) -> list[str]:
    """--c2-args values: each is shell-split, so both `--c2-args "run --x 1"` and repeats work."""
    return [word for value in values for word in shlex.split(value)]


def parse_envs(items: Sequence[str], source: str) -> dict[str, str]:
    envs = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise exceptions.ConfigError(field="c2-env", detail=f"{item!r} from {source} is "
                                         "not KEY=VALUE")
        envs[key] = value
    return envs


def processors_from(
    args: argparse.Namespace, c2_bin: str | None, section: Any, environ: Mapping[str, str],
    file_keys: Mapping[str, Any] | None = None,
) -> dict[str, worker_config.ProcessorConfig]:
    """External processors from [[processors.<stage>]]; for c2, the flags, then the
    environment, then the config file's c2-args and c2-env keys override the block's."""
    blocks = _processor_blocks(section)
    c2 = blocks.get("c2", {})
    file_keys = file_keys or {}
    if args.c2_args:
        c2["args"] = split_args(args.c2_args)
    elif "GPUPROXY_C2_ARGS" in environ:
        c2["args"] = shlex.split(environ["GPUPROXY_C2_ARGS"])
    elif "c2-args" in file_keys:
        c2["args"] = _file_args(file_keys["c2-args"])
    if args.c2_env:
        c2["envs"] = parse_envs(args.c2_env, "--c2-env")
    elif "GPUPROXY_C2_ENV" in environ:
        c2["envs"] = parse_envs(shlex.split(environ["GPUPROXY_C2_ENV"]), "GPUPROXY_C2_ENV")
    elif "c2-env" in file_keys:
        c2["envs"] = _file_envs(file_keys["c2-env"])
    if c2_bin:
        c2["bin"] = c2_bin
    if c2 and "bin" not in c2:
        raise exceptions.ConfigError(field="c2-bin", detail="C2 args or envs are set but not the "
                                     "processor binary")
    if c2:
        blocks["c2"] = c2
    return {
        stage: worker_config.ProcessorConfig(
            bin=block["bin"], args=tuple(block.get("args", ())), envs=dict(block.get("envs", {})),
            inherit_envs=block.get("inherit_envs", True),
        )
        for stage, block in blocks.items()
    }


#: Config file keys of the two repeatable flags, which `resolve` does not know (dashes or
#: underscores, as for every key).
FILE_ONLY_KEYS = {"c2-args": "c2-args", "c2_args": "c2-args", "c2-env": "c2-env",
                  "c2_env": "c2-env"}


def _file_args(raw: Any) -> list[str]:
    """c2-args in the config file: a string, shell-split as the flag's, or a list of
    arguments taken as they are (as a [[processors.c2]] block's args)."""
    if isinstance(raw, str):
        return shlex.split(raw)
    if isinstance(raw, list) and all(isinstance(x, str) for x in raw):
        return list(raw)
    raise exceptions.ConfigError(field="c2-args", detail="in the config file it is a string or "
                                 f"a list of strings, not {raw!r}")


def _file_envs(raw: Any) -> dict[str, str]:
    """c2-env in the config file: a table (KEY = "VALUE") or a list of "KEY=VALUE"."""
    if isinstance(raw, dict) and all(isinstance(v, str) for v in raw.values()):
        return {str(k): v for k, v in raw.items()}
    if isinstance(raw, list) and all(isinstance(x, str) for x in raw):
        return parse_envs(raw, "the config file's c2-env")
    raise exceptions.ConfigError(field="c2-env", detail="in the config file it is a table of "
                                 f'strings (KEY = "VALUE") or a list of "KEY=VALUE", not {raw!r}')


def _processor_blocks(section: Any) -> dict[str, dict[str, Any]]:
    if section is None:
        return {}
    if not isinstance(section, dict):
        raise exceptions.ConfigError(field="processors", detail="must be [[processors.<stage>]]")
    blocks = {}
    for stage, entries in section.items():
        entries = entries if isinstance(entries, list) else [entries]
        if len(entries) != 1:
            log.warning("only the first processor of a stage is used; run one worker per GPU "
                        "instead", stage=stage, found=len(entries))
        blocks[stage] = _check_block(stage, entries[0] if entries else {})
    return blocks


def _check_block(stage: str, block: Any) -> dict[str, Any]:
    field = f"processors.{stage}"
    if not isinstance(block, dict) or not isinstance(block.get("bin"), str):
        raise exceptions.ConfigError(field=field, detail="needs bin = \"/path/to/processor\"")
    # Without args, venus-worker runs the binary's own `processor <stage>` subcommand: its
    # blocks often name bin alone.
    args, envs = block.get("args", ["processor", stage]), block.get("envs", {})
    inherit = block.get("inherit_envs", True)
    if not isinstance(args, list) or not all(isinstance(a, str) for a in args):
        raise exceptions.ConfigError(field=field, detail="args must be a list of strings")
    if not isinstance(envs, dict) or not all(isinstance(v, str) for v in envs.values()):
        raise exceptions.ConfigError(field=field, detail="envs must be a table of strings")
    if not isinstance(inherit, bool):
        raise exceptions.ConfigError(field=field, detail="inherit_envs must be true or false")
    ignored = sorted(set(block) - {"bin", "args", "envs", "inherit_envs"})
    if set(ignored) - VENUS_ONLY_KEYS:
        raise exceptions.ConfigError(field=field, detail=f"unknown keys {ignored}")
    if ignored:
        log.info("venus-worker processor keys ignored", stage=stage, keys=ignored)
    return {"bin": block["bin"], "args": list(args), "envs": dict(envs), "inherit_envs": inherit}


def _gpu_decides(processors: dict[str, worker_config.ProcessorConfig], gpu: gpus.GpuId | None
                 ) -> dict[str, worker_config.ProcessorConfig]:
    """With --gpu the worker picks its card for its processors too: a CUDA_VISIBLE_DEVICES
    in a block copied from a venus-worker config would send every worker of a supervisor to
    that one card, past the GPU locks."""
    if gpu is None:
        return processors
    kept = {}
    for stage, processor in processors.items():
        clash = {k: v for k, v in processor.envs.items() if k in gpus.GPU_ENVS}
        if clash:
            log.warning("the processor's own GPU setting is replaced by --gpu", stage=stage,
                        ignored=clash, gpu=str(gpu))
            processor = dataclasses.replace(processor, envs={
                k: v for k, v in processor.envs.items() if k not in gpus.GPU_ENVS})
        kept[stage] = processor
    return kept


def settings(
    args: argparse.Namespace, flags: Sequence[Flag], environ: Mapping[str, str] | None = None
) -> tuple[dict[str, Any], worker_config.WorkerConfig]:
    """Flag values and the WorkerConfig they make; configures logging on the way."""
    environ = os.environ if environ is None else environ
    file = load_toml(args.config)
    # One file serves both commands (the supervisor hands its --config to every worker it
    # starts): `gpus` is the supervisor's key, `gpu` a single worker's; each skips the other's
    file.pop("gpu" if flags is SUPERVISE_FLAGS else "gpus", None)
    section = file.pop("processors", None)
    file_keys = {FILE_ONLY_KEYS[k]: file.pop(k) for k in list(file) if k in FILE_ONLY_KEYS}
    values = resolve(args, flags, file, environ, file_only=(
        *sorted(set(FILE_ONLY_KEYS.values())), "gpu" if flags is SUPERVISE_FLAGS else "gpus",
        "processors"))
    logs.configure(values["log_level"], values["log_format"])
    fs_path = values["fs_resource_path"]
    config = worker_config.WorkerConfig(
        url=values["gpuproxy_url"],
        max_tasks=values["max_tasks"],
        task_types=tuple(_csv(values["allow_type"])),
        gpu=values.get("gpu"),
        nvidia_smi=values["nvidia_smi"],
        lock_dir=pathlib.Path(values["lock_dir"]).expanduser(),
        work_dir=pathlib.Path(values["work_dir"]),
        resource_type="stream" if values["resource_type"] == "db" else values["resource_type"],
        fs_resource_path=pathlib.Path(fs_path).expanduser() if fs_path else None,
        task_timeout_s=values["task_timeout_s"],
        grace_s=values["grace_s"],
        processors=_gpu_decides(processors_from(args, values["c2_bin"], section, environ,
                                                file_keys), values.get("gpu")),
        params_dir=pathlib.Path(values["params_dir"]).expanduser(),
        backend=values["backend"],
        pause_after_failures=values["pause_after_failures"],
        twin_wait_s=values["twin_wait_s"],
        token=access.read_token(values["token_file"]),
        tls_ca=tls.read_ca(values["tls_ca"]),
    )
    return values, config


def _csv(value: str | None) -> list[str]:
    return [v.strip() for v in (value or "").split(",") if v.strip()]


# -- commands -------------------------------------------------------------------------------------


async def cmd_run(args: argparse.Namespace, argv: Sequence[str]) -> int:
    _, config = settings(args, RUN_FLAGS)
    return await daemon.serve(config)


async def cmd_supervise(args: argparse.Namespace, argv: Sequence[str]) -> int:
    values, config = settings(args, SUPERVISE_FLAGS)
    # A setting its workers would refuse (no --c2-bin for c2, say) is said once, here: the
    # workers would otherwise exit at start and be restarted forever.
    executors.create(config)
    ids = [_gpu_id(v) for v in _csv(values["gpus"])]
    if twice := [i for n, i in enumerate(ids) if i in ids[:n]]:
        raise exceptions.ConfigError(field="gpus", detail=f"GPU {twice[0]} is listed twice: "
                                     "one worker per GPU")
    found = await gpus.inventory(config.nvidia_smi)
    for wanted in ids:
        try:
            gpus.resolve(found, wanted, config.nvidia_smi, flag="--gpus")  # usable as named
        except exceptions.GpuNotFound as exc:
            raise exceptions.ConfigError(
                field="gpus", detail=f"GPU {wanted.index} is not on this host; nvidia-smi "
                f"lists {', '.join(str(g.index) for g in found or []) or 'none'}") from exc
        except exceptions.MigNeedsInventory:
            raise
        except exceptions.WorkerError as exc:  # a MIG mode that the list does not follow
            raise exceptions.ConfigError(field="gpus", detail=str(exc)) from exc
    if not ids:
        try:
            ids = [g.id for g in gpus.visible_or_refused(
                found or [], os.environ.get("CUDA_VISIBLE_DEVICES"), flag="--gpus")]
        except exceptions.GpuInMigMode as exc:
            raise exceptions.ConfigError(field="gpus", detail=str(exc)) from exc
    if not ids:
        raise exceptions.ConfigError(
            field="gpus", detail="no GPU found to supervise; check nvidia-smi, or run a CPU "
            "worker with `gpuproxy-worker run`",
        )
    if len(ids) > 1 and worker_config.GPU_PLACEHOLDER not in str(config.work_dir):
        raise exceptions.ConfigError(
            field="work-dir", detail="must contain {gpu} so that each worker has its own"
        )
    return await Supervisor(ids, without_gpus_flag(argv)).run()


async def cmd_check_gpu(args: argparse.Namespace, argv: Sequence[str]) -> int:
    """The acceptance check of this host's GPU: 0 all passed, 1 a check failed, 2 no CUDA."""
    from worker.cuda import acceptance, select
    from worker.cuda import exceptions as cuda_exceptions
    from worker.groth16 import backends

    logs.configure(args.log_level, "console")
    if args.gpu is not None:
        # The card as `run --gpu` takes it: a MIG device by its UUID, a GPU in MIG mode refused
        try:
            found = await gpus.inventory(args.nvidia_smi)
        except exceptions.InventoryFailed as exc:
            if args.gpu.mig is not None:
                raise
            # A broken driver: CUDA says so next (exit status 2), in its own words
            log.warning("nvidia-smi failed; GPU taken by its index", error=str(exc))
            found = None
        chosen = gpus.resolve(found, args.gpu, args.nvidia_smi)
        os.environ.update(gpus.cuda_env(chosen or args.gpu.index))
    if why := select.why_unusable(await asyncio.to_thread(select.probe)):
        print(f"gpuproxy-worker check-gpu: this host cannot run CUDA: {why}", file=sys.stderr)
        return 2
    try:
        cuda, message = await asyncio.to_thread(select.open_backend, "cuda")
    except cuda_exceptions.CudaUnavailable as exc:
        print(f"gpuproxy-worker check-gpu: {exc}", file=sys.stderr)
        return 2
    except cuda_exceptions.CudaError as exc:  # the kernels do not compile, or the self-test
        print(f"gpuproxy-worker check-gpu: FAIL: {exc}", file=sys.stderr)
        return 1
    print(f"{message}; {cuda.name}", flush=True)
    cpu = backends.create("cpu")
    print(f"against {cpu.describe()}", flush=True)  # what the cpu column runs on
    try:
        outcomes = await asyncio.to_thread(
            acceptance.run, cuda, cpu, args.msm_sizes, args.ntt_max,
            args.prove_sizes, lambda line: print(line, flush=True))
    finally:
        await asyncio.to_thread(cuda.close)
    return 0 if all(o.ok for o in outcomes) else 1


def _gpu_id(value: str) -> gpus.GpuId:
    try:
        return gpus.GpuId.parse(value)
    except ValueError as exc:
        raise exceptions.ConfigError(field="gpus", detail=str(exc)) from exc


def without_gpus_flag(argv: Sequence[str]) -> list[str]:
    """The supervise arguments to pass on to each `run`: all but the subcommand and --gpus."""
    rest, skip = [], True  # skip the subcommand name
    for arg in argv:
        if skip:
            skip = False
        elif arg == "--gpus":
            skip = True
        elif not arg.startswith("--gpus="):
            rest.append(arg)
    return rest


# -- parser ---------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="gpuproxy-worker", allow_abbrev=False,
        description="Per-GPU worker that runs C2 (and other) tasks pushed by the gpuproxy broker.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run one worker", allow_abbrev=False)
    _add_worker_flags(run, RUN_FLAGS)
    run.set_defaults(func=cmd_run)
    supervise = sub.add_parser(
        "supervise", allow_abbrev=False,
        help="run and restart one worker per GPU (the run flags apply to each)",
    )
    _add_worker_flags(supervise, SUPERVISE_FLAGS)
    supervise.set_defaults(func=cmd_supervise)
    _add_check_gpu(sub)
    return parser


def _acceptance(name: str) -> Callable[[str], list[int]]:
    """worker.cuda.acceptance's parser `name`, imported when used: building the parser must not
    load the prover for `run` and `supervise`."""

    def parse(text: str) -> list[int]:
        from worker.cuda import acceptance

        values: list[int] = getattr(acceptance, name)(text)
        return values

    parse.__name__ = name  # argparse names it in its error message
    return parse


def _add_check_gpu(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    check = sub.add_parser(
        "check-gpu", allow_abbrev=False,
        help="check this host's GPU before it joins the pool: the CUDA backend against the CPU "
        "backend, MSMs, NTTs and proofs (exit 0 all passed, 1 a check failed, 2 no usable CUDA)",
    )
    check.add_argument("--gpu", type=argparse_type(gpus.GpuId.parse),
                       help="GPU index as nvidia-smi numbers it, or N:M for a MIG device")
    check.add_argument("--nvidia-smi", default="nvidia-smi",
                       help="GPU inventory command, for --gpu ['nvidia-smi']")
    check.add_argument("--msm-sizes", type=_acceptance("sizes"), default="1,2,3,1000,16,20",
                       help="MSM sizes: counts, or log2 sizes from 4 to 24 [1,2,3,1000,16,20]")
    check.add_argument("--ntt-max", type=int, default=20,
                       help="largest NTT domain checked, log2 [20]")
    check.add_argument("--prove-sizes", type=_acceptance("log_sizes"), default="10,16",
                       help="demo circuits proved on both backends, log2 constraints [10,16]")
    check.add_argument("--log-level", default="warning", choices=logs.LEVELS)
    check.set_defaults(func=cmd_check_gpu)


def _add_worker_flags(parser: argparse.ArgumentParser, flags: Sequence[Flag]) -> None:
    parser.add_argument("--config", help="TOML file: flag names as keys, and [[processors.c2]] "
                        "blocks with bin, args, envs as in venus-worker")
    add_flags(parser, flags)
    parser.add_argument("--c2-args", action="append", default=[], metavar="ARGS",
                        help="arguments of the C2 processor, shell-split; repeatable "
                        "[env GPUPROXY_C2_ARGS]")
    parser.add_argument("--c2-env", action="append", default=[], metavar="KEY=VALUE",
                        help="environment of the C2 processor; repeatable "
                        "[env GPUPROXY_C2_ENV, shell-split]")


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(build_parser(), argv)
    return run_command(args.func(args, argv),
                       errors=(exceptions.WorkerError, broker_exceptions.BrokerError))


if __name__ == "__main__":
    sys.exit(main())
