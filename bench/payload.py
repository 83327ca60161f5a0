"""Submit and read back a large payload through a running broker; print throughput and the
broker's peak RSS growth beside the 64 MiB budget.

    python bench/payload.py [--size-mib 256] [--resource-type fs|db] [--db-dsn DSN]

It starts its own broker (SQLite and a temp folder unless --db-dsn is given), samples the
broker's resident memory every 10 ms from /proc, and streams the payload from a file.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import os
import pathlib
import socket
import subprocess
import sys
import tempfile
import threading
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent))

from broker.client import BrokerClient
from broker.flags import without_settings

BUDGET_MIB = 64


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


class Sampler(threading.Thread):
    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True)
        self.pid, self.peak, self.running = pid, 0, True

    def run(self) -> None:
        while self.running:
            self.peak = max(self.peak, rss_kib(self.pid))
            time.sleep(0.01)


def make_payload(path: pathlib.Path, size: int) -> str:
    digest = hashlib.sha256()
    block = os.urandom(1 << 20)
    with path.open("wb") as f:
        left = size
        while left:
            piece = block[: min(left, len(block))]
            f.write(piece)
            digest.update(piece)
            left -= len(piece)
    return digest.hexdigest()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def wait_ready(url: str) -> None:
    async with BrokerClient(url, timeout_s=1) as client:
        for _ in range(200):
            try:
                await client.list_tasks(page_size=1)
                return
            except Exception:
                await asyncio.sleep(0.1)
    raise SystemExit(f"broker at {url} did not start")


async def bench(args: argparse.Namespace, work: pathlib.Path) -> None:
    size = args.size_mib << 20
    payload = work / "payload.bin"
    sha = make_payload(payload, size)
    url = f"127.0.0.1:{free_port()}"
    dsn = args.db_dsn or f"sqlite:///{work}/bench.db"
    broker = subprocess.Popen(
        [sys.executable, "-m", "broker.cli", "run", "--url", url, "--db-dsn", dsn,
         "--resource-type", args.resource_type, "--fs-resource-path", str(work / "payloads"),
         "--log-level", "warning"],
        env={**without_settings(os.environ), "HOME": str(work)},
    )
    try:
        await wait_ready(url)
        await asyncio.sleep(0.5)
        base = rss_kib(broker.pid)
        sampler = Sampler(broker.pid)
        sampler.start()
        async with BrokerClient(url, timeout_s=600) as client:
            t0 = time.perf_counter()
            task = await client.submit_file(payload, task_type="bench", miner=f"m{time.time_ns()}")
            t1 = time.perf_counter()
            size_back, sha_back = await client.download_payload(task.id, work / "back.bin")
            t2 = time.perf_counter()
        sampler.running = False
        sampler.join()
        assert (size_back, sha_back) == (size, sha), "payload came back different"
        growth_mib = (sampler.peak - base) / 1024
        mib = size / (1 << 20)
        backend = dsn.split(":")[0]
        print(f"payload            {mib:.0f} MiB  ({args.resource_type} store, {backend})")
        print(f"upload             {mib / (t1 - t0):8.1f} MiB/s  ({t1 - t0:.2f} s)")
        print(f"read back          {mib / (t2 - t1):8.1f} MiB/s  ({t2 - t1:.2f} s)")
        print(f"broker RSS before  {base / 1024:8.1f} MiB")
        print(f"broker RSS growth  {growth_mib:8.1f} MiB  (budget {BUDGET_MIB} MiB, "
              f"ratio {growth_mib / BUDGET_MIB:.2f}, payload/growth "
              f"{mib / max(growth_mib, 0.1):.0f}x)")
        print("PASS" if growth_mib < BUDGET_MIB else "FAIL: broker memory grew with the payload")
    finally:
        broker.terminate()
        broker.wait(15)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mib", type=int, default=256)
    parser.add_argument("--resource-type", choices=("fs", "db"), default="fs")
    parser.add_argument("--db-dsn", default="")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="gpuproxy-bench-") as work:
        asyncio.run(bench(args, pathlib.Path(work)))


if __name__ == "__main__":
    main()
