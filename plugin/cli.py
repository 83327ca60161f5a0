"""`cluster-c2-plugin`: the C2 processor of venus-worker / damocles-worker that proves through
the gpuproxy broker.

A drop-in for gpuproxy's `cluster_c2_plugin`: the same `run` command, flags and environment
variables (`--gpuproxy-url` C2PROXY_LISTEN_URL, `--poll-task-interval`
C2PROXY_POLL_TASK_INTERVAL, `--log-level` C2PROXY_LOG_LEVEL, `--no-gpu` C2PROXY_NO_GPU); the
flags it adds read GPUPROXY_<FLAG>. stdout carries protocol lines only; logs and errors go to
stderr. A setting error prints its chain of causes and exits with status 1 (2 for wrong flags).
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import os
import pathlib
import signal
import sys
from collections.abc import Sequence
from typing import Any

import structlog

from broker import __version__, access, logs, tls
from broker import exceptions as broker_exceptions
from broker.cli import ACCESS_FLAGS, run_command
from broker.client import BrokerClient
from broker.flags import Flag, add_flags, addresses, parse_args, resolve, seconds
from plugin import exceptions, stdio, workdir
from plugin.config import PluginConfig
from plugin.dump import Dumper
from plugin.processor import Processor
from plugin.waiter import Waiter, channel_options

log = structlog.get_logger(__name__)

#: env_logger's level names, as gpuproxy's plugin took them, to ours ("off": errors only).
LEVEL_ALIASES = {"trace": "debug", "warn": "warning", "off": "error"}
#: The shortest wait between task reads; gpuproxy's plugin took 0 as "no wait".
MIN_POLL_S = 1.0


@dataclasses.dataclass(frozen=True)
class LegacyFlag(Flag):
    """A flag of gpuproxy's plugin: its environment variable keeps its old name."""

    legacy_env: str = ""

    @property
    def env(self) -> str:
        return self.legacy_env


def log_level(value: str) -> str:
    """A level as env_logger reads it: `info`, `warn`, or a filter list such as
    `info,hyper=warn` whose bare level counts (per-module levels mean nothing here)."""
    bare = [p.strip().lower() for p in value.split(",") if p.strip() and "=" not in p]
    level = bare[-1] if bare else "info"
    level = LEVEL_ALIASES.get(level, level)
    if level not in logs.LEVELS:
        raise ValueError(f"not a log level: one of {', '.join(logs.LEVELS)}, or env_logger's "
                         f"{', '.join(LEVEL_ALIASES)}, or a filter list such as info,hyper=warn")
    return level


def poll_seconds(text: str) -> float:
    value = seconds(text)
    return MIN_POLL_S if value == 0 else value


RUN_FLAGS = [
    LegacyFlag("gpuproxy-url", "address of the broker (http://HOST:PORT as in gpuproxy, or "
               "HOST:PORT); brokers sharing one database, comma-separated: the next is used "
               "while one is down", "http://127.0.0.1:18888", addresses,
               legacy_env="C2PROXY_LISTEN_URL"),
    LegacyFlag("poll-task-interval", "seconds between task reads when the broker's watch "
               "stream cannot be held (otherwise the broker pushes every change)", 60.0,
               poll_seconds, legacy_env="C2PROXY_POLL_TASK_INTERVAL"),
    LegacyFlag("log-level", "log level (env_logger's trace, warn, off and filter lists such as "
               "info,hyper=warn are taken too)", "info",
               log_level, choices=logs.LEVELS, legacy_env="C2PROXY_LOG_LEVEL"),
    Flag("log-format", "log format on stderr", "console", choices=("console", "json")),
    *ACCESS_FLAGS,
    Flag("dump-dir", "write each request and response line, as it crossed the pipe, to a file "
         "here named by request id (kept until deleted: a request is tens of MB; debugging "
         "only)"),
    Flag("deadline-s", "a request still without a proof after this many seconds is answered "
         "with an error saying what was tried", 24 * 3600.0, seconds),
    Flag("retry-min-s", "first wait before calling an unreachable broker again", 1.0, seconds),
    Flag("retry-max-s", "longest wait between calls to an unreachable broker", 30.0, seconds),
]


def config_from(values: dict[str, Any]) -> PluginConfig:
    dump_dir = values["dump_dir"]
    return PluginConfig(
        url=values["gpuproxy_url"],
        poll_interval_s=values["poll_task_interval"],
        deadline_s=values["deadline_s"],
        retry_min_s=values["retry_min_s"],
        retry_max_s=values["retry_max_s"],
        dump_dir=pathlib.Path(dump_dir).expanduser() if dump_dir else None,
        token=access.read_token(values["token_file"]),
        tls_ca=tls.read_ca(values["tls_ca"]),
    )


def make_dump_dir(path: pathlib.Path | None) -> None:
    if path is None:
        return
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise exceptions.ConfigError(field="dump-dir", detail=f"cannot create {path}: "
                                     f"{exc.strerror or exc}") from exc


async def cmd_run(args: argparse.Namespace) -> int:
    values = resolve(args, RUN_FLAGS)
    logs.configure(values["log_level"], values["log_format"])
    config = config_from(values)
    make_dump_dir(config.dump_dir)
    if args.no_gpu or os.environ.get("C2PROXY_NO_GPU"):
        log.info("--no-gpu ignored: proofs are made by the broker's workers")
    protocol_fd = stdio.take_stdout()
    log.info("starting", broker=config.url, deadline_s=config.deadline_s,
             dump_dir=str(config.dump_dir) if config.dump_dir else None)
    with workdir.staging_folder() as work_dir:
        async with BrokerClient(config.url, options=channel_options(config),
                                token=config.token, tls_ca=config.tls_ca) as client:
            waiter = Waiter(config, client, work_dir)
            processor = Processor(waiter, stdio.LineWriter(protocol_fd), Dumper(config.dump_dir))
            reader = stdio.LineReader(sys.stdin.fileno())
            reader.start()
            loop = asyncio.get_running_loop()
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(sig, reader.stop)
            await processor.run(reader)
    log.info("stopped")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cluster-c2-plugin", allow_abbrev=False,
        description="C2 processor for venus-worker / damocles-worker ([[processors.c2]]) that "
        "has the gpuproxy broker's GPU workers make the proofs.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", allow_abbrev=False,
                         help="serve C2 requests on stdin/stdout (started by venus-worker)")
    add_flags(run, RUN_FLAGS)
    run.add_argument("--no-gpu", action="store_true",
                     help="accepted for gpuproxy's plugin compatibility; ignored "
                     "[env C2PROXY_NO_GPU]")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(build_parser(), argv)
    return run_command(cmd_run(args),
                       errors=(exceptions.PluginError, broker_exceptions.BrokerError))


if __name__ == "__main__":
    sys.exit(main())
