"""Dispatch latency and throughput: submit -> worker start (p50/p99) and sustained tasks per
second with no-op tasks, on SQLite and MariaDB side by side, and on SQLite with an access token
and TLS (what they cost).

    python bench/dispatch.py [--tasks 300] [--workers 4] [--mysql mysql://root:@127.0.0.1:3306]

Each run gets its own broker and CPU workers (`--allow-type noop`); tasks are submitted from
several concurrent clients, and the broker's own timestamps give the latencies.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import pathlib
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from typing import Any

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from broker.client import BrokerClient  # noqa: E402 - after the path fix-up above
from broker.flags import without_settings  # noqa: E402
from tests.fixtures import certs  # noqa: E402

BIN = pathlib.Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start(argv: list[str], work: pathlib.Path, name: str) -> subprocess.Popen[bytes]:
    with (work / f"{name}.log").open("ab") as log:
        return subprocess.Popen(argv, stdout=log, stderr=log, stdin=subprocess.DEVNULL,
                                env={**without_settings(os.environ), "HOME": str(work)})


async def wait_workers(url: str, count: int, access: dict[str, Any]) -> None:
    async with BrokerClient(url, timeout_s=2, **access) as client:
        for _ in range(300):
            try:
                if sum(w.online for w in await client.list_workers()) >= count:
                    return
            except Exception:
                pass
            await asyncio.sleep(0.1)
    raise SystemExit(f"{count} workers did not come online at {url}")


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(int(q * len(ordered)), len(ordered) - 1)]


async def run_one(dsn: str, args: argparse.Namespace, work: pathlib.Path,
                  secure: bool = False) -> dict[str, float]:
    """One broker and its workers; `secure`: with an access token and TLS."""
    url = f"127.0.0.1:{free_port()}"
    served: list[str] = []
    calling: list[str] = []
    access: dict[str, Any] = {}
    if secure:
        tls = certs.write(work / "tls")
        token = work / "token"
        token.write_text(uuid.uuid4().hex)
        token.chmod(0o600)
        served = ["--token-file", str(token), "--tls-cert", str(tls.cert),
                  "--tls-key", str(tls.key)]
        calling = ["--token-file", str(token), "--tls-ca", str(tls.ca)]
        access = {"token": token.read_text(), "tls_ca": tls.ca.read_bytes()}
    procs = [start([str(BIN / "gpuproxy"), "run", "--url", url, "--db-dsn", dsn,
                    "--fs-resource-path", str(work / "payloads"), "--log-level", "warning",
                    *served], work, "broker")]
    try:
        for i in range(args.workers):
            procs.append(start([
                str(BIN / "gpuproxy-worker"), "run", "--gpuproxy-url", url, "--allow-type",
                "noop", "--nvidia-smi", "", "--work-dir", str(work / f"w{i}"),
                "--log-level", "warning", *calling], work, f"worker-{i}"))
        await wait_workers(url, args.workers, access)
        payloads = []
        for i in range(args.tasks):
            p = work / f"p{i}"
            p.write_bytes(f"{uuid.uuid4()} {i}".encode())
            payloads.append(p)
        sem = asyncio.Semaphore(args.clients)
        async with BrokerClient(url, timeout_s=60, **access) as client:

            async def one(p: pathlib.Path) -> tuple[float, float, float]:
                async with sem:
                    submitted = await client.submit_file(p, task_type="noop", miner="f01000")
                task = [t async for t in client.watch(submitted.id)][-1]
                assert task.state == 4, task.error_message
                created = task.created_at.ToMilliseconds()
                return created, task.started_at.ToMilliseconds(), task.finished_at.ToMilliseconds()

            # Idle workers: one task at a time, so the latency is the dispatch path alone.
            idle = [await one(p) for p in payloads[: args.idle_tasks]]
            # Loaded: everything at once; the latency then includes waiting in the queue.
            t0 = time.perf_counter()
            times = await asyncio.gather(*(one(p) for p in payloads[args.idle_tasks:]))
            wall = time.perf_counter() - t0
        idle_lat = [s - c for c, s, _ in idle]
        latencies = [s - c for c, s, _ in times]
        span_s = (max(f for _, _, f in times) - min(c for c, _, _ in times)) / 1000
        return {"idle_p50": percentile(idle_lat, 0.5), "idle_p99": percentile(idle_lat, 0.99),
                "p50": percentile(latencies, 0.5), "p99": percentile(latencies, 0.99),
                "mean": statistics.fmean(latencies), "tps": len(times) / span_s, "wall": wall}
    finally:
        for p in procs[::-1]:
            p.terminate()
        for p in procs:
            try:
                p.wait(15)
            except subprocess.TimeoutExpired:
                p.kill()


@contextlib.contextmanager
def mysql_database(server: str) -> Iterator[str]:
    """The DSN of a scratch database on the MariaDB `server`, dropped afterwards."""
    name = f"gpuproxy_bench_{uuid.uuid4().hex[:8]}"
    subprocess.run(["mysql", "-uroot", "-h127.0.0.1", "-e", f"CREATE DATABASE {name}"],
                   check=True)
    try:
        yield f"{server.rstrip('/')}/{name}"
    finally:
        subprocess.run(["mysql", "-uroot", "-h127.0.0.1", "-e", f"DROP DATABASE {name}"],
                       check=False)


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=300)
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--clients", type=int, default=16, help="concurrent submitters")
    parser.add_argument("--idle-tasks", type=int, default=50,
                        help="tasks submitted one by one to idle workers first")
    parser.add_argument("--mysql", default="mysql://root:@127.0.0.1:3306",
                        help="MariaDB server (a scratch database is created); '' to skip")
    parser.add_argument("--no-secure", dest="secure", action="store_false",
                        help="skip the run with an access token and TLS")
    args = parser.parse_args()
    results: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory(prefix="gpuproxy-dispatch-") as tmp:
        work = pathlib.Path(tmp)
        (work / "sqlite").mkdir()
        results["sqlite"] = await run_one(f"sqlite:///{work}/sqlite/b.db", args, work / "sqlite")
        if args.secure:
            (work / "secure").mkdir()
            results["sqlite+tls"] = await run_one(f"sqlite:///{work}/secure/b.db", args,
                                                  work / "secure", secure=True)
        if args.mysql:
            (work / "mariadb").mkdir()
            with mysql_database(args.mysql) as dsn:
                results["mariadb"] = await run_one(dsn, args, work / "mariadb")
    names = list(results)
    print(f"{args.workers} workers; {args.idle_tasks} tasks one by one, then "
          f"{args.tasks - args.idle_tasks} at once from {args.clients} submitters")
    print(f"{'':34}" + "".join(f"{n:>12}" for n in names))
    for key, label in (("idle_p50", "idle: submit->start p50 (ms)"),
                       ("idle_p99", "idle: submit->start p99 (ms)"),
                       ("p50", "loaded: submit->start p50 (ms)"),
                       ("p99", "loaded: submit->start p99 (ms)"),
                       ("tps", "loaded: tasks per second")):
        print(f"{label:34}" + "".join(f"{results[n][key]:12.1f}" for n in names))
    for other in names[1:]:
        a, b = results["sqlite"], results[other]
        print(f"{other}/sqlite: throughput {b['tps'] / a['tps']:.2f}, idle p50 latency "
              f"{b['idle_p50'] / a['idle_p50']:.2f}")


if __name__ == "__main__":
    asyncio.run(main())
