"""`gpuproxy`: run the broker, and operate on tasks from the command line.

Command output goes to stdout; logs and errors go to stderr. Errors print their chain of causes,
one per line, and exit with status 1 (2 for wrong flags).
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import os
import pathlib
import select
import signal
import sys
from collections.abc import Callable, Coroutine, Sequence
from typing import Any, TypeVar

import structlog
from google.protobuf import json_format

from broker import __version__, access, exceptions, logs, policy, tls
from broker import config as broker_config
from broker.client import BrokerClient
from broker.flags import (
    Flag,
    add_flags,
    addresses,
    listen_address,
    load_toml,
    parse_args,
    resolve,
    seconds,
)
from protos.gpuproxy.v1 import tasks_pb2, workers_pb2

log = structlog.get_logger(__name__)
N = TypeVar("N", int, float)

STATE_NAMES = {1: "init", 2: "running", 3: "error", 4: "finished"}
#: By name, and by number as the gRPC API and gpuproxy's tables count them (1-4).
STATE_NUMBERS = {name: num for num, name in STATE_NAMES.items()} | {
    str(num): num for num in STATE_NAMES}
#: Longest pause between tries to reach a broker that `tasks wait` lost.
WAIT_RETRY_MAX_S = 10.0

LOG_FLAGS = [
    Flag("log-level", "log level", "info", choices=logs.LEVELS),
    Flag("log-format", "log format on stderr", "console", choices=("console", "json")),
]
#: The flags of every program that calls a broker, besides its address.
ACCESS_FLAGS = [
    Flag("token-file", "file holding the broker's access token (empty: none)", ""),
    Flag("tls-ca", "PEM file of the CA (or the broker's self-signed certificate) to trust: "
         "TLS to the broker (an https:// address uses the system's CAs)", ""),
]
CLIENT_FLAGS = [Flag("url", "address of the broker; brokers sharing one database, "
                     "comma-separated: a call goes to the next while one is down",
                     "127.0.0.1:18888", addresses),
                *ACCESS_FLAGS]
RUN_FLAGS = [
    Flag("url", "address to listen on", "127.0.0.1:18888", listen_address),
    Flag("db-dsn", "task database: sqlite:///PATH or mysql://USER:PASS@HOST:PORT/DB",
         "sqlite:///~/.gpuproxy/gpuproxy.db"),
    Flag("resource-type", "where payloads live", "fs", choices=("fs", "db")),
    Flag("fs-resource-path", "payload folder for --resource-type fs (an NFS mount shared "
         "with the workers in production)", "~/.gpuproxy/payloads"),
    Flag("max-payload-bytes", "largest accepted payload", broker_config.GIB, int),
    Flag("max-attempts", "default attempts per task before it goes to error", 3, int),
    Flag("lease-s", "seconds a worker keeps a task without a heartbeat", 60.0, seconds),
    Flag("retry-backoff-s", "wait before a failed attempt is retried, doubled each time",
         5.0, seconds),
    Flag("type-max-attempts", "attempts per task type over --max-attempts, e.g. c2=5,groth16=3",
         ""),
    Flag("type-timeout-s", "longest one attempt of a type may run, e.g. c2=3600", ""),
    Flag("orphan-age-s", "age after which interrupted uploads and unneeded payloads go",
         3600.0, seconds),
    Flag("retention-s", "how long finished and errored tasks are kept", 7 * 86400.0, seconds),
    Flag("clean-interval-s", "seconds between cleaner sweeps", 300.0, seconds),
    Flag("metrics-url", "HOST:PORT to serve Prometheus metrics on (off when empty)", "",
         lambda text: listen_address(text) if text.strip() else ""),
    Flag("metrics-refresh-s", "seconds between readings of the task counts per type and state "
         "(gpuproxy_tasks) from the database", 5.0, seconds),
    Flag("token-file", "file holding the access token every call must carry (health checks "
         "excepted); empty: any caller is served", ""),
    Flag("tls-cert", "PEM certificate chain: serve TLS only (with --tls-key)", ""),
    Flag("tls-key", "PEM private key of --tls-cert", ""),
    *LOG_FLAGS,
]


def _expand(path: str) -> str:
    return str(pathlib.Path(path).expanduser())


def broker_config_from(values: dict[str, Any]) -> broker_config.BrokerConfig:
    dsn = values["db_dsn"]
    if dsn.startswith("sqlite:///~"):
        dsn = "sqlite:///" + _expand(dsn[len("sqlite:///"):])
    elif dsn.startswith("sqlite:///") and not dsn.startswith("sqlite:////"):
        # Relative to where the broker happens to start: started elsewhere, it would open
        # another, empty database, and the tasks would seem lost. Said, and fixed here.
        path = pathlib.Path(dsn[len("sqlite:///"):]).resolve()
        log.warning("the SQLite path is relative to the folder the broker started in; write "
                    "sqlite:////ABSOLUTE/PATH (four slashes) for a fixed place",
                    given=values["db_dsn"], file=str(path))
        dsn = f"sqlite:///{path}"
    return broker_config.BrokerConfig(
        listen=values["url"],
        db_dsn=dsn,
        resource_type=values["resource_type"],
        fs_resource_path=_expand(values["fs_resource_path"]),
        max_payload_bytes=values["max_payload_bytes"],
        default_max_attempts=values["max_attempts"],
        lease_s=values["lease_s"],
        retry_backoff_s=values["retry_backoff_s"],
        type_max_attempts=tuple(_pairs("type-max-attempts", values["type_max_attempts"], int)),
        type_timeout_s=tuple(_pairs("type-timeout-s", values["type_timeout_s"], seconds)),
        orphan_age_s=values["orphan_age_s"],
        retention_s=values["retention_s"],
        clean_interval_s=values["clean_interval_s"],
        metrics_listen=values["metrics_url"],
        metrics_refresh_s=values["metrics_refresh_s"],
        token=access.read_token(values["token_file"]),
        tls=tls.server_tls(values["tls_cert"], values["tls_key"]),
    )


# -- commands -------------------------------------------------------------------------------


async def cmd_run(args: argparse.Namespace) -> int:
    from broker import server

    values = resolve(args, RUN_FLAGS, load_toml(args.config))
    logs.configure(values["log_level"], values["log_format"])
    return await server.serve(broker_config_from(values))


def _client(args: argparse.Namespace) -> BrokerClient:
    values = resolve(args, [*CLIENT_FLAGS, *LOG_FLAGS])
    logs.configure(values["log_level"], values["log_format"])
    return BrokerClient(values["url"], token=access.read_token(values["token_file"]),
                        tls_ca=tls.read_ca(values["tls_ca"]))


def _when(ts: Any) -> str:
    if not ts.seconds and not ts.nanos:
        return "-"
    dt = datetime.datetime.fromtimestamp(ts.seconds, tz=datetime.UTC).astimezone()
    return dt.strftime("%Y-%m-%d %H:%M:%S")


def task_dict(task: tasks_pb2.Task) -> dict[str, Any]:
    d: dict[str, Any] = json_format.MessageToDict(
        task, preserving_proto_field_name=True, always_print_fields_with_no_presence=True
    )
    d["state"] = STATE_NAMES.get(task.state, str(task.state))
    return d


def _brief(error: str, width: int = 60) -> str:
    """The end of an error for a table cell: "failed after 3 attempts: #1 on worker ..." says
    the cause last (`tasks show` has it whole)."""
    error = " ".join(error.split())
    return error if len(error) <= width else "..." + error[-(width - 3):]


def print_table(rows: Sequence[Sequence[object]], headers: Sequence[str]) -> None:
    """Columns padded to their widest cell; a cell's line breaks and runs of spaces become one
    space (a processor's multi-line error would break the rows)."""
    cells = [[" ".join(str(x).split()) for x in row] for row in (headers, *rows)]
    widths = [max(len(x) for x in col) for col in zip(*cells, strict=True)]
    for row in cells:
        print("  ".join(x.ljust(w) for x, w in zip(row, widths, strict=True)).rstrip())


async def cmd_tasks_list(args: argparse.Namespace) -> int:
    states = [STATE_NUMBERS[s] for s in _csv(args.state)]
    async with _client(args) as client:
        tasks: list[tasks_pb2.Task] = []
        token = ""
        while len(tasks) < args.limit:
            reply = await client.list_tasks(
                states=states, task_types=_csv(args.type), miner=args.miner or "",
                worker_id=args.worker or "", page_size=min(args.limit - len(tasks), 1000),
                page_token=token,
            )
            tasks.extend(reply.tasks)
            token = reply.next_page_token
            if not token:
                break
    if token:
        print(f"(the first {len(tasks)} tasks; there are more: raise --limit, or narrow with "
              "--state, --type, --miner or --worker)", file=sys.stderr)
    if args.json:
        print(json.dumps([task_dict(t) for t in tasks], indent=2))
        return 0
    print_table(
        # A task keeps the worker of its last attempt: not shown once it waits again (it would
        # read as assigned)
        [(t.id, t.task_type, t.miner, STATE_NAMES.get(t.state, "?"),
          t.worker_id if t.state != tasks_pb2.TASK_STATE_INIT and t.worker_id else "-",
          f"{t.attempts}/{t.max_attempts}", _when(t.created_at), _when(t.finished_at),
          t.comment, _brief(t.error_message)
          or (f"retrying: {_brief(t.last_failure, 50)}" if t.last_failure else "")) for t in tasks],
        ("ID", "TYPE", "MINER", "STATE", "WORKER", "ATTEMPTS", "CREATED", "FINISHED",
         "COMMENT", "ERROR"),
    )
    return 0


async def cmd_tasks_show(args: argparse.Namespace) -> int:
    async with _client(args) as client:
        task = await client.get_task(args.id)
    if args.json:
        print(json.dumps(task_dict(task), indent=2))
        return 0
    fields = [
        ("id", task.id), ("type", task.task_type), ("miner", task.miner),
        ("comment", task.comment), ("priority", task.priority),
        ("state", STATE_NAMES.get(task.state, "?")), ("worker", task.worker_id or "-"),
        ("attempts", f"{task.attempts}/{task.max_attempts}"),
        ("payload", f"{task.payload_sha256} ({task.payload_size} bytes)"),
        ("created", _when(task.created_at)), ("started", _when(task.started_at)),
        ("finished", _when(task.finished_at)),
        ("lease until", _when(task.lease_expires_at)),
        # The last attempt's progress stays in the record: said only while it runs
        ("progress", f"{task.progress.phase} {task.progress.fraction:.0%}"
         if task.progress.phase and task.state == tasks_pb2.TASK_STATE_RUNNING else "-"),
        ("result", f"{task.result_sha256} ({task.result_size} bytes)"
         if task.result_sha256 else "-"),
        ("error", task.error_message or "-"),
    ]
    if task.last_failure:
        fields.append(("retrying", f"after: {task.last_failure}"))
    for name, value in fields:
        print(f"{name + ':':<13}{value}")
    if task.history:
        print("history:" + (f" (the {task.history_omitted} oldest attempts left out)"
                            if task.history_omitted else ""))
        print_table(
            [(str(a.number), a.worker_id or "-", _when(a.started_at), _when(a.ended_at),
              a.outcome, a.reason) for a in task.history],
            ("  #", "WORKER", "STARTED", "ENDED", "OUTCOME", "REASON"),
        )
    return 0


async def cmd_tasks_reset(args: argparse.Namespace) -> int:
    async with _client(args) as client:
        for task in await client.reset(args.ids):
            print(f"{task.id} {STATE_NAMES[task.state]}")
    return 0


async def cmd_tasks_cancel(args: argparse.Namespace) -> int:
    """Each task on its own: one that cannot be cancelled (finished, say) is named, the others
    are cancelled all the same, and the exit status says whether all were."""
    refused = []
    async with _client(args) as client:
        for task_id in dict.fromkeys(args.ids):
            try:
                task = await client.cancel(task_id, args.reason or "")
            except (exceptions.BrokerUnreachable, exceptions.NotABroker,
                    exceptions.AccessDenied, exceptions.TlsFailed):
                raise
            except exceptions.BrokerError as exc:
                print(f"{task_id} not cancelled: {exc}", file=sys.stderr)
                refused.append(task_id)
                continue
            print(f"{task.id} {STATE_NAMES[task.state]}: {task.error_message}")
    if refused:
        raise exceptions.RemoteError(detail=f"{len(refused)} of {len(set(args.ids))} tasks "
                                     "were not cancelled (said above)")
    return 0


def _existing_file(path: str, what: str) -> pathlib.Path:
    p = pathlib.Path(path)
    if not p.exists():
        raise exceptions.InvalidArgument(detail=f"{what} {p} does not exist")
    if not p.is_file():
        raise exceptions.InvalidArgument(detail=f"{what} {p} is not a regular file")
    if not os.access(p, os.R_OK):
        raise exceptions.InvalidArgument(detail=f"{what} {p} is not readable by this user")
    return p


def _output_file(path: str) -> pathlib.Path:
    """-o FILE, checked before anything is sent: its folder must exist and take a new file."""
    out = pathlib.Path(path)
    if out.is_dir():
        raise exceptions.InvalidArgument(detail=f"-o {out} is a folder: name a file in it")
    folder = out.parent
    if not folder.is_dir():
        raise exceptions.InvalidArgument(detail=f"-o {out}: folder {folder} does not exist")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise exceptions.InvalidArgument(detail=f"-o {out}: folder {folder} is not writable")
    return out


def _proving_key(path: str) -> pathlib.Path:
    """The .zkey at `path`, checked before it is uploaded: a file that is not a key would be
    fetched and refused by every worker, each time using up an attempt of the task."""
    from worker.groth16 import exceptions as g16
    from worker.groth16 import zkey

    key = _existing_file(path, "proving key")
    try:
        zkey.check_file(key)
    except g16.Groth16Error as exc:
        raise exceptions.InvalidArgument(detail=str(exc)) from None
    return key


async def cmd_tasks_submit(args: argparse.Namespace) -> int:
    if (args.file is None) == (args.wtns is None):
        raise exceptions.InvalidArgument(detail="give the payload as FILE or as --wtns, once")
    path = _existing_file(args.file or args.wtns, "payload file")
    zkey = _proving_key(args.zkey) if args.zkey else None
    out = _output_file(args.output) if args.output else None
    if args.type == "groth16" and zkey is None:
        raise exceptions.InvalidArgument(detail="groth16 tasks need their proving key: --zkey")
    comment = args.comment or ""
    async with _client(args) as client:
        if zkey is not None:
            # The key travels once, as a broker resource; the task names it by sha256.
            key = await client.upload_resource(zkey)
            log.info("proving key on the broker", sha256=key.sha256, bytes=key.size)
            comment = policy.key_comment(key.sha256) + (f" {comment}" if comment else "")
        task, existed = await client.submit(
            path, task_type=args.type, miner=args.miner, comment=comment,
            priority=args.priority, max_attempts=args.max_attempts,
            rerun=(args.reason or "rerun by operator") if args.rerun else None,
        )
        print(task.id, flush=True)
        if existed and args.rerun:
            print(f"(this payload's task existed; it is {STATE_NAMES.get(task.state)} now: had "
                  "it finished, it runs again, its result dropped)", file=sys.stderr)
        elif existed:
            print(f"(this payload was submitted before for {task.miner} as {task.task_type}: "
                  f"that task, {STATE_NAMES.get(task.state)}, is the answer, with its own "
                  "comment, priority and attempts; `gpuproxy tasks reset` runs one in error "
                  "again, and submitting with --rerun a finished one)", file=sys.stderr)
        await _say_if_nobody_runs(client, task.task_type)
        if not args.wait:
            return 0
        await _wait(client, task.id, out)
    return 0


async def _say_if_nobody_runs(client: BrokerClient, task_type: str) -> None:
    """A task of a type no worker runs (a typo: C2) would wait forever without a word."""
    try:
        workers = await client.list_workers()
    except exceptions.BrokerError:
        return  # only advice: the task is submitted
    if not any(task_type in w.task_types for w in workers):
        print(f"(no worker known to the broker runs {task_type} tasks: the task waits until "
              "one registers; see `gpuproxy workers list`)", file=sys.stderr)


async def cmd_tasks_wait(args: argparse.Namespace) -> int:
    out = _output_file(args.output) if args.output else None
    async with _client(args) as client:
        await _wait(client, args.id, out)
    return 0


async def _wait(client: BrokerClient, task_id: str, out: pathlib.Path | None) -> None:
    """Follow the task until it ends, through broker restarts; its result into `out`."""
    task, outage = None, 0
    unreached: set[str] = set()  #: the brokers that failed before the task was first seen
    while task is None or task.state not in (3, 4):
        try:
            async for task in client.watch(task_id):
                outage = 0
                log.info("task state", task_id=task.id, state=STATE_NAMES.get(task.state),
                         worker=task.worker_id or None)
        except (exceptions.BrokerUnreachable, exceptions.BrokerCannotServe) as exc:
            unreached.add(getattr(exc, "url", ""))
            if task is None and unreached >= set(client.brokers.urls):
                raise  # none ever reached: wrong addresses, not a restart
            if not outage:
                log.warning("the broker cannot be reached; waiting for it to come back",
                            error=str(exc))
            outage += 1
            await asyncio.sleep(min(WAIT_RETRY_MAX_S, 0.5 * 2 ** min(outage, 5)))
    if task.state != 4:
        raise exceptions.RemoteError(
            detail=f"task {task.id} ended in {STATE_NAMES.get(task.state)}: {task.error_message}"
        )
    if out is not None:
        size, _ = await client.download_result(task.id, out)
        if task.task_type == "groth16":
            split_groth16_result(out)
        log.info("result written", path=str(out), bytes=size)


def split_groth16_result(out: pathlib.Path) -> None:
    """A groth16 result holds proof and public signals: write them as snarkjs's proof.json
    (at `out`) and public.json (beside it), so `snarkjs groth16 verify` takes them as they are."""
    document = json.loads(out.read_text())
    out.write_text(json.dumps(document["proof"], indent=1) + "\n")
    (out.parent / "public.json").write_text(json.dumps(document["public"], indent=1) + "\n")


async def cmd_demo(args: argparse.Namespace) -> int:
    from broker import demo

    values = resolve(args, LOG_FLAGS)
    logs.configure(values["log_level"], values["log_format"])
    keep = pathlib.Path(args.keep).resolve() if args.keep else None
    if keep is not None:
        try:
            keep.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            why = ("it is a file, not a folder" if keep.exists() and not keep.is_dir()
                   else exc.strerror or str(exc))
            raise exceptions.ConfigError(field="keep", detail=f"cannot keep the demo's files "
                                         f"in {keep}: {why}; give a folder") from exc
    return await demo.run(args.log_size, keep)


async def cmd_keys_upload(args: argparse.Namespace) -> int:
    path = _proving_key(args.file)
    async with _client(args) as client:
        key = await client.upload_resource(path)
    print(key.sha256)
    return 0


async def cmd_keys_list(args: argparse.Namespace) -> int:
    async with _client(args) as client:
        keys = await client.list_resources()
    if args.json:
        print(json.dumps([json_format.MessageToDict(k, preserving_proto_field_name=True)
                          for k in keys], indent=2))
        return 0
    print_table([(k.sha256, k.name, k.size, _when(k.created_at)) for k in keys],
                ("SHA256", "NAME", "BYTES", "UPLOADED"))
    return 0


async def cmd_keys_remove(args: argparse.Namespace) -> int:
    async with _client(args) as client:
        key = await client.delete_resource(args.sha256)
    print(f"{key.sha256} ({key.name}) removed")
    return 0


async def cmd_tasks_result(args: argparse.Namespace) -> int:
    out = _output_file(args.output)
    async with _client(args) as client:
        size, sha = await client.download_result(args.id, out)
    print(f"{args.output} {size} bytes sha256 {sha}")
    return 0


async def cmd_tasks_payload(args: argparse.Namespace) -> int:
    out = _output_file(args.output)
    async with _client(args) as client:
        size, sha = await client.download_payload(args.id, out)
    print(f"{args.output} {size} bytes sha256 {sha}")
    return 0


def _pairs(field: str, value: str, number: Callable[[str], N]) -> list[tuple[str, N]]:
    """TYPE=NUMBER,TYPE=NUMBER; a malformed item is a ConfigError naming the flag."""
    pairs = []
    for item in _csv(value):
        key, sep, val = item.partition("=")
        try:
            parsed = number(val.strip())
        except ValueError:
            sep = ""
        if not sep or not key.strip():
            kind = "a whole number" if number is int else "a finite number"
            raise exceptions.ConfigError(field=field, detail=f"{item!r} is not TYPE=NUMBER "
                                         f"with NUMBER {kind}")
        pairs.append((key.strip(), parsed))
    return pairs


async def cmd_workers_list(args: argparse.Namespace) -> int:
    async with _client(args) as client:
        workers = await client.list_workers()
    if args.json:
        print(json.dumps([json_format.MessageToDict(
            w, preserving_proto_field_name=True, always_print_fields_with_no_presence=True
        ) for w in workers], indent=2))
        return 0
    print_table(
        [(w.worker_id, w.hostname,
          ",".join(f"{_gpu_id(g)}:{g.name}" for g in w.gpus) or "cpu", _worker_state(w),
          ",".join(w.task_ids) or "-", ",".join(w.task_types), str(len(w.resident_keys)),
          _when(w.last_seen), w.broker or "-")
         for w in workers],
        ("ID", "HOST", "GPUS", "STATE", "TASKS", "TYPES", "KEYS", "LAST HEARTBEAT", "BROKER"),
    )
    for w in workers:
        if w.HasField("drained_at"):
            print(f"{w.worker_id} drained since {_when(w.drained_at)}"
                  f"{': ' + w.drain_reason if w.drain_reason else ''} (gpuproxy workers resume)")
        if w.HasField("paused_until"):
            print(f"{w.worker_id} takes no task until {_when(w.paused_until)}: {w.pause_reason}")
    return 0


def _gpu_id(gpu: workers_pb2.Gpu) -> str:
    """As --gpu names it: 1, or 1:0 for MIG device 0 of GPU 1."""
    return f"{gpu.index}:{gpu.mig}" if gpu.HasField("mig") else str(gpu.index)


def _worker_state(w: workers_pb2.WorkerInfo) -> str:
    if w.HasField("drained_at"):  # said even offline: it stays drained when it comes back
        return ("draining" if w.task_ids else "drained") if w.online else "offline,drained"
    if not w.online:
        return "offline"
    return "paused" if w.HasField("paused_until") else "online"


async def cmd_workers_drain(args: argparse.Namespace) -> int:
    async with _client(args) as client:
        await client.drain_worker(args.id, args.reason or "")
    print(f"{args.id} drained: it takes no new task (within 5 s if it is connected to another "
          "broker); what it runs goes on (gpuproxy workers list shows when it has none left)")
    return 0


async def cmd_workers_resume(args: argparse.Namespace) -> int:
    async with _client(args) as client:
        was_drained = await client.resume_worker(args.id)
    print(f"{args.id} takes tasks again" if was_drained else
          f"{args.id} was not drained: nothing changed")
    return 0


async def cmd_workers_remove(args: argparse.Namespace) -> int:
    async with _client(args) as client:
        await client.remove_worker(args.id)
    print(f"{args.id} removed")
    return 0


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} is not a positive number")
    return value


def _int_in(low: int, high: int) -> Callable[[str], int]:
    """An argparse type: an integer from low to high (the protocol's fields are 32-bit)."""
    def in_range(text: str) -> int:
        value = int(text)
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"{value} is not from {low} to {high}")
        return value

    in_range.__name__ = "integer"
    return in_range


def _csv(value: str | None) -> list[str]:
    return [v.strip() for v in (value or "").split(",") if v.strip()]


def _state_list(value: str) -> str:
    for s in _csv(value):
        if s not in STATE_NUMBERS:
            raise argparse.ArgumentTypeError(
                f"unknown state {s!r}; use {','.join(STATE_NAMES.values())} (or 1-4)"
            )
    return value


# -- parser ---------------------------------------------------------------------------------

Command = Callable[[argparse.Namespace], Coroutine[Any, Any, int]]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="gpuproxy", description="Broker of C2 proof tasks between sealers and GPU workers."
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="run the broker")
    run.add_argument("--config", help="TOML file with flag names as keys")
    add_flags(run, RUN_FLAGS)
    run.set_defaults(func=cmd_run)

    tasks = sub.add_parser("tasks", help="list, inspect and operate on tasks")
    tsub = tasks.add_subparsers(dest="tasks_command", required=True)

    def client_cmd(name: str, help_text: str, func: Command) -> argparse.ArgumentParser:
        p = tsub.add_parser(name, help=help_text)
        add_flags(p, [*CLIENT_FLAGS, *LOG_FLAGS])
        p.set_defaults(func=func)
        return p

    p = client_cmd("list", "list tasks, newest first", cmd_tasks_list)
    p.add_argument("--state", type=_state_list, help="init,running,error,finished (or 1-4)")
    p.add_argument("--type", help="task types, comma separated")
    p.add_argument("--miner")
    p.add_argument("--worker", help="tasks whose last attempt ran on this worker (running "
                   "there, or ended there)")
    p.add_argument("--limit", type=_positive, default=100)
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")

    p = client_cmd("show", "show a task and its attempt history", cmd_tasks_show)
    p.add_argument("id")
    p.add_argument("--json", action="store_true")

    p = client_cmd("reset", "put tasks in error back to init", cmd_tasks_reset)
    p.add_argument("ids", nargs="+", metavar="ID")

    p = client_cmd("cancel", "stop tasks: they go to error", cmd_tasks_cancel)
    p.add_argument("ids", nargs="+", metavar="ID")
    p.add_argument("--reason")

    p = client_cmd("submit", "submit a file as a task's payload", cmd_tasks_submit)
    p.add_argument("file", nargs="?", help="the payload (for groth16: or --wtns)")
    p.add_argument("--type", required=True, help="task type: c2, groth16, noop")
    p.add_argument("--miner", default="local", help="miner address, e.g. f01000")
    p.add_argument("--zkey", help="groth16: the proving key (uploaded to the broker once)")
    p.add_argument("--wtns", help="groth16: the witness, i.e. the payload")
    p.add_argument("--comment")
    p.add_argument("--priority", type=_int_in(-(2**31), 2**31 - 1), default=0,
                   help="higher runs first (a 32-bit number)")
    p.add_argument("--max-attempts", type=_int_in(0, broker_config.MAX_ATTEMPTS), default=0,
                   help="0: the broker's default")
    p.add_argument("--rerun", action="store_true", help="when this payload's task finished "
                   "already: drop its result and run it again (a result found wrong, or lost)")
    p.add_argument("--reason", help="with --rerun: why, kept in the task's history")
    p.add_argument("--wait", action="store_true", help="wait until the task ends")
    p.add_argument("-o", "--output", help="with --wait: write the result here (groth16: "
                   "snarkjs proof.json, with public.json beside it)")

    p = client_cmd("wait", "wait until a task ends (through broker restarts); exit 1 unless "
                   "it finished", cmd_tasks_wait)
    p.add_argument("id")
    p.add_argument("-o", "--output", help="write the result here (groth16: snarkjs "
                   "proof.json, with public.json beside it)")

    p = client_cmd("result", "download a finished task's result", cmd_tasks_result)
    p.add_argument("id")
    p.add_argument("-o", "--output", required=True)

    p = client_cmd("payload", "download a task's payload as submitted", cmd_tasks_payload)
    p.add_argument("id")
    p.add_argument("-o", "--output", required=True)

    demo = sub.add_parser("demo", help="prove a synthetic circuit through a local broker "
                          "and worker, and print each phase's time")
    demo.add_argument("--log-size", type=int, default=10, choices=range(2, 21), metavar="K",
                      help="2^K constraints (2..20, default 10)")
    demo.add_argument("--keep", metavar="DIR", help="keep the demo's files and logs here")
    add_flags(demo, LOG_FLAGS)
    demo.set_defaults(func=cmd_demo)

    keys = sub.add_parser("keys", help="proving keys kept on the broker for the workers")
    ksub = keys.add_subparsers(dest="keys_command", required=True)
    _client_command(ksub, "upload", "upload a .zkey once; prints its sha256",
                    cmd_keys_upload).add_argument("file")
    _client_command(ksub, "list", "the keys the broker keeps",
                    cmd_keys_list).add_argument("--json", action="store_true")
    _client_command(ksub, "remove", "drop a key no waiting or running task names",
                    cmd_keys_remove).add_argument("sha256")

    workers = sub.add_parser("workers", help="list, drain, resume and remove workers")
    wsub = workers.add_subparsers(dest="workers_command", required=True)
    _client_command(wsub, "list", "workers with their GPUs, state and current tasks",
                    cmd_workers_list).add_argument("--json", action="store_true")
    p = _client_command(wsub, "drain", "give a worker no new task (maintenance); what it runs "
                        "goes on", cmd_workers_drain)
    p.add_argument("id")
    p.add_argument("--reason", help="said in workers list")
    _client_command(wsub, "resume", "let a drained worker take tasks again",
                    cmd_workers_resume).add_argument("id")
    _client_command(wsub, "remove", "forget an offline worker",
                    cmd_workers_remove).add_argument("id")
    _no_abbreviations(parser)
    return parser


def _client_command(sub: Any, name: str, help: str, func: Callable[..., Any]
                    ) -> argparse.ArgumentParser:
    """A subcommand that calls a broker: its flags, and what it runs."""
    p: argparse.ArgumentParser = sub.add_parser(name, help=help)
    add_flags(p, [*CLIENT_FLAGS, *LOG_FLAGS])
    p.set_defaults(func=func)
    return p


def _no_abbreviations(parser: argparse.ArgumentParser) -> None:
    """`--stat init` must not pass for `--state init`: a flag is spelled whole, as the
    worker's and the plugin's are (a later flag could make an abbreviation mean another)."""
    parser.allow_abbrev = False
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                _no_abbreviations(sub)


def report(exc: BaseException) -> None:
    """Print the chain of causes, outermost first, one line each."""
    chain: list[BaseException] = []
    cur: BaseException | None = exc
    while cur is not None and cur not in chain:
        chain.append(cur)
        cur = cur.__cause__ or (None if cur.__suppress_context__ else cur.__context__)
    causes = []
    for cause in chain[1:]:
        details = getattr(cause, "details", None)  # a gRPC error's own words are its details
        text = str(details() if callable(details) else cause).strip().splitlines()
        causes.append(f"{type(cause).__name__}: {text[0] if text else ''}")
    if logs.current_format == "json":  # a log collector reads one object per line
        print(json.dumps({"timestamp": datetime.datetime.now(datetime.UTC).isoformat(),
                          "level": "error", "event": str(chain[0]), "causes": causes}),
              file=sys.stderr)
        return
    print(f"error: {chain[0]}", file=sys.stderr)
    for line in causes:
        print(f"  caused by: {line}", file=sys.stderr)


def _stdout_gone() -> bool:
    """Whether stdout is a pipe whose reader has closed it."""
    try:
        poll = select.poll()
        poll.register(sys.stdout.fileno(), select.POLLOUT)
        return any(events & select.POLLERR for _, events in poll.poll(0))
    except (OSError, ValueError):
        return False


def run_command(command: Coroutine[Any, Any, int],
                errors: tuple[type[Exception], ...] = (exceptions.BrokerError,)) -> int:
    """Run a command (this CLI's, the worker's, the plugin's): its exit status; 1 once one of
    `errors` or an OSError is printed with its causes; 130 on Ctrl-C."""
    reported: tuple[type[Exception], ...] = (*errors, OSError)
    logs.configure()  # until the command sets its own: nothing may reach stdout (the plugin's
    # protocol pipe), and a settings error stays one line
    try:
        status = asyncio.run(command)
        sys.stdout.flush()  # a reader gone shows here, not as a traceback at exit
        return status
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError as exc:
        if not _stdout_gone():
            report(exc)
            return 1
        # `gpuproxy tasks list | head`: stop quietly, as a program killed by SIGPIPE does
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 128 + signal.SIGPIPE
    except reported as exc:
        report(exc)
        log.debug("command failed", exc_info=exc)
        return 1


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(build_parser(), argv)
    return run_command(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
