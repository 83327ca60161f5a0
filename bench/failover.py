"""A broker killed under load, with workers given one broker address and with two: how long the
workers take to be back at work, the longest stretch without a finished task, and what the
queue looked like at the end. Two brokers share one scratch MariaDB database and folder.

    python bench/failover.py [--workers 4] [--seconds 12] [--kill-at 4] [--rate 20] [--how kill]

A client given both brokers submits no-op tasks at a steady rate throughout; broker a is killed
(SIGKILL) part-way through and not restarted. With --how stop it is stopped instead (SIGSTOP),
as a host that lost power: its connections stay open and nothing answers on them, so clients
find it gone by its unanswered pings (give --seconds 45 for that).
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import pathlib
import signal
import subprocess
import sys
import tempfile
import time

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.dispatch import BIN, free_port, mysql_database, start, wait_workers  # noqa: E402
from broker import logs  # noqa: E402 - after the path fix-up above
from broker.client import BrokerClient  # noqa: E402


async def run_one(dsn: str, args: argparse.Namespace, work: pathlib.Path,
                  both_to_workers: bool) -> dict[str, float]:
    a, b = (f"127.0.0.1:{free_port()}" for _ in range(2))
    brokers = [start([str(BIN / "gpuproxy"), "run", "--url", url, "--db-dsn", dsn,
                      "--fs-resource-path", str(work / "payloads"), "--log-level", "warning",
                      "--lease-s", str(args.lease_s)], work, f"broker-{i}")
               for i, url in enumerate((a, b))]
    workers: list[subprocess.Popen[bytes]] = []
    try:
        given = f"{a},{b}" if both_to_workers else a
        workers = [start([str(BIN / "gpuproxy-worker"), "run", "--gpuproxy-url", given,
                          "--allow-type", "noop", "--nvidia-smi", "", "--work-dir",
                          str(work / f"w{i}"), "--log-level", "warning"], work, f"worker-{i}")
                   for i in range(args.workers)]
        await wait_workers(a, args.workers, {})
        finished: list[float] = []
        back_s = float("nan")
        async with BrokerClient(f"{a},{b}", timeout_s=10) as client:

            async def one(i: int) -> None:
                path = work / f"p{i}"
                path.write_bytes(f"{work.name} {i}".encode())
                submitted = await client.submit_file(path, task_type="noop", miner="f01000")
                if [t async for t in client.watch(submitted.id)][-1].state == 4:
                    finished.append(time.monotonic())

            t0 = time.monotonic()
            killed = t0 + args.kill_at
            pending: list[asyncio.Task[None]] = []
            i = 0
            gone = False
            while (now := time.monotonic()) < t0 + args.seconds:
                if now >= killed and not gone:
                    brokers[0].send_signal(signal.SIGKILL if args.how == "kill" else
                                           signal.SIGSTOP)
                    gone = True
                if now >= killed and back_s != back_s:  # (nan: not back yet)
                    on_b = [w for w in await client.list_workers() if w.online and w.broker == b]
                    if len(on_b) == args.workers:
                        back_s = time.monotonic() - killed
                pending.append(asyncio.create_task(one(i)))
                i += 1
                await asyncio.sleep(1 / args.rate)
            await asyncio.wait(pending, timeout=2)
            for task in pending:
                task.cancel()
            listed = (await client.list_tasks(page_size=1000)).tasks
        marks = [t0, *sorted(finished), t0 + args.seconds]
        return {"submitted": i, "finished": len(finished),
                "waiting": sum(t.state == 1 for t in listed),
                "retried": sum(t.attempts > 1 for t in listed),
                "back_s": back_s, "gap_s": max(y - x for x, y in itertools.pairwise(marks))}
    finally:
        brokers[0].send_signal(signal.SIGCONT)  # a stopped broker, to be stopped for good
        for p in [*workers, *brokers]:
            p.terminate()
        for p in [*workers, *brokers]:
            try:
                p.wait(15)
            except subprocess.TimeoutExpired:
                p.kill()


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=12.0)
    parser.add_argument("--kill-at", type=float, default=4.0)
    parser.add_argument("--rate", type=float, default=20.0, help="tasks submitted per second")
    parser.add_argument("--lease-s", type=float, default=60.0)
    parser.add_argument("--how", choices=("kill", "stop"), default="kill",
                        help="kill: SIGKILL (connections reset); stop: SIGSTOP (a silent host)")
    parser.add_argument("--mysql", default="mysql://root:@127.0.0.1:3306",
                        help="MariaDB server (a scratch database is created)")
    args = parser.parse_args()
    logs.configure("warning")  # (the client's moves between brokers are not the output)
    results: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory(prefix="gpuproxy-failover-") as tmp:
        for label, both in (("one address", False), ("two addresses", True)):
            work = pathlib.Path(tmp) / label.replace(" ", "-")
            work.mkdir()
            with mysql_database(args.mysql) as dsn:
                results[label] = await run_one(dsn, args, work, both)
    names = list(results)
    print(f"{args.workers} workers, no-op tasks at {args.rate:g}/s for {args.seconds:g} s; "
          f"broker a {'killed' if args.how == 'kill' else 'stopped (SIGSTOP)'} at "
          f"{args.kill_at:g} s (lease {args.lease_s:g} s)")
    print(f"{'':42}" + "".join(f"{n:>16}" for n in names))
    for key, label, form in (
            ("submitted", "tasks submitted", "16.0f"), ("finished", "tasks finished", "16.0f"),
            ("waiting", "tasks still waiting at the end", "16.0f"),
            ("retried", "tasks run more than once", "16.0f"),
            ("back_s", "a gone -> all workers at work on b (s)", "16.2f"),
            ("gap_s", "longest stretch without a finish (s)", "16.2f")):
        print(f"{label:42}" + "".join(
            format(results[n][key], form) if results[n][key] == results[n][key]
            else f"{'not in the run':>16}" for n in names))  # (nan: never)
    one, two = results["one address"], results["two addresses"]
    print(f"two/one: tasks finished {two['finished'] / max(one['finished'], 1):.2f}x, longest "
          f"stall {two['gap_s'] / one['gap_s']:.2f}x")


if __name__ == "__main__":
    asyncio.run(main())
