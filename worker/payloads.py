"""Getting a task's payload onto this host, checked against its size and sha256.

By default it streams from the broker into a temp file in the worker's work folder, removed when
the task ends (and leftovers at start-up). With the broker's shared folder (`--resource-type fs
--fs-resource-path PATH`, an NFS mount) the worker reads PATH/<sha[0:2]>/<sha[2:4]>/<sha256> in
place after checking it, and falls back to the stream when the file is missing or damaged.
File I/O and hashing run in threads, a chunk at a time: heartbeats never wait on a slow disk.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import pathlib
import re
import secrets
import time

import structlog

from broker.client import file_sha256
from broker.payloads.fs import MARKER
from protos.gpuproxy.v1 import tasks_pb2, workers_pb2
from worker import exceptions
from worker.executors.base import ProgressFn
from worker.remote import Remote

log = structlog.get_logger(__name__)

TEMP_SUFFIX = ".payload.part"
_SHA256 = re.compile(r"[0-9a-f]{64}")
#: Seconds between two progress reports while a payload streams in.
PROGRESS_EVERY_S = 2.0


@dataclasses.dataclass
class Payload:
    path: pathlib.Path
    size: int
    temporary: bool  #: ours to delete (a streamed copy), not the broker's shared file

    def discard(self) -> None:
        if self.temporary:
            self.path.unlink(missing_ok=True)


def shared_path(root: pathlib.Path, sha256: str) -> pathlib.Path | None:
    """Where the broker's `fs` store keeps a payload; None for a name that is not a sha256."""
    if not _SHA256.fullmatch(sha256):
        return None
    return root / sha256[0:2] / sha256[2:4] / sha256


class PayloadFetcher:
    def __init__(self, temp_dir: pathlib.Path, remote: Remote,
                 shared_root: pathlib.Path | None = None) -> None:
        self.temp_dir = temp_dir
        self.remote = remote
        self.shared_root = shared_root

    def shared_folder_problem(self) -> str:
        """What is wrong with the shared folder ("" when nothing is, or none is used): one
        without the broker's marker is an NFS mount that did not happen, or another folder."""
        if self.shared_root is None:
            return ""
        try:
            if not self.shared_root.is_dir():
                return "missing"
            if not (self.shared_root / MARKER).is_file():
                return f"not the broker's payload folder (no {MARKER} in it)"
            return ""
        except OSError as exc:
            return f"unreadable ({exc.strerror or exc})"

    def remove_leftovers(self) -> int:
        """Delete temp payloads a previous run left behind (it was killed mid-task)."""
        self.temp_dir.mkdir(parents=True, exist_ok=True)
        removed = 0
        for path in self.temp_dir.glob(f"*{TEMP_SUFFIX}"):
            path.unlink(missing_ok=True)
            removed += 1
        return removed

    async def fetch(
        self, task: tasks_pb2.Task, fence: int, progress: ProgressFn
    ) -> Payload:
        if self.shared_root is not None:
            payload = await self._from_shared_folder(task)
            if payload is not None:
                return payload
        return await self._from_stream(task, fence, progress)

    async def _from_shared_folder(self, task: tasks_pb2.Task) -> Payload | None:
        assert self.shared_root is not None
        path = shared_path(self.shared_root, task.payload_sha256)
        if path is None:
            return None
        try:
            size, sha = await asyncio.to_thread(file_sha256, path)
        except FileNotFoundError:
            log.info("payload not in the shared folder; streaming it from the broker",
                     task_id=task.id, path=str(path))
            return None
        except OSError as exc:
            log.warning("shared payload folder unreadable; streaming from the broker",
                        task_id=task.id, path=str(path), error=str(exc))
            return None
        if (size, sha) != (task.payload_size, task.payload_sha256):
            log.warning("shared payload file is damaged; streaming from the broker",
                        task_id=task.id, path=str(path), size=size, sha256=sha)
            return None
        log.info("payload read in place from the shared folder", task_id=task.id,
                 path=str(path))
        return Payload(path=path, size=size, temporary=False)

    async def _from_stream(self, task: tasks_pb2.Task, fence: int,
                           progress: ProgressFn) -> Payload:
        self.temp_dir.mkdir(parents=True, exist_ok=True)
        path = self.temp_dir / f"{task.id}.{secrets.token_hex(4)}{TEMP_SUFFIX}"
        payload = Payload(path=path, size=0, temporary=True)
        try:
            await self._stream_into(payload, task, fence, progress)
        except BaseException:
            payload.discard()
            raise
        return payload

    async def _stream_into(self, payload: Payload, task: tasks_pb2.Task, fence: int,
                           progress: ProgressFn) -> None:
        digest = hashlib.sha256()
        announced: tuple[int, str] | None = None
        reported_at = time.monotonic()
        held = workers_pb2.HeldTask(task_id=task.id, fence=fence)
        with payload.path.open("wb") as f:
            async for chunk in self.remote.fetch_payload(held):
                announced = announced or (chunk.size, chunk.sha256)
                await asyncio.to_thread(f.write, chunk.data)
                digest.update(chunk.data)
                payload.size += len(chunk.data)
                if time.monotonic() - reported_at >= PROGRESS_EVERY_S and announced[0]:
                    reported_at = time.monotonic()
                    await progress("fetching", payload.size / announced[0])
        received = (payload.size, digest.hexdigest())
        expected = {announced or (0, hashlib.sha256().hexdigest())}
        if task.payload_sha256:
            expected.add((task.payload_size, task.payload_sha256))
        if expected != {received}:
            raise exceptions.PayloadDamaged(
                task_id=task.id, detail=f"received {received[0]} bytes with sha256 "
                f"{received[1]}, expected {' and '.join(f'{n} bytes {s}' for n, s in expected)}",
            )
