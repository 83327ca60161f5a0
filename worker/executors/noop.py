"""`noop` tasks: the result is the payload's sha256 (hex). For measuring the dispatch path
(bench/dispatch.py) and for checking a new deployment end to end without a GPU."""

from __future__ import annotations

import asyncio
import hashlib

from worker import executors
from worker.config import WorkerConfig
from worker.executors.base import Executor, Job


@executors.register("noop")
class NoopExecutor(Executor):
    def __init__(self, config: WorkerConfig) -> None:
        self.config = config

    async def run(self, job: Job) -> bytes:
        data = await asyncio.to_thread(job.payload.read_bytes)
        return hashlib.sha256(data).hexdigest().encode()
