"""One worker per GPU: an flock'ed file per GPU UUID in a lock folder shared by the host's workers.

The file holds the holder's worker id and pid, so a second worker is refused with a message that
names both workers and the GPU. The kernel drops an flock when its holder dies, even by kill -9:
a stale file never blocks a new worker.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import pathlib
import re

from worker import exceptions
from worker.gpus import Gpu


def lock_path(lock_dir: pathlib.Path, gpu: Gpu) -> pathlib.Path:
    # The UUID becomes a file name: keep it to safe characters.
    return lock_dir / f"{re.sub(r'[^A-Za-z0-9._-]', '_', gpu.uuid)}.lock"


def busy_error(gpu: Gpu, worker_id: str, path: pathlib.Path, content: str) -> exceptions.GpuBusy:
    """The refusal, from what the holder wrote in the lock file (maybe nothing yet)."""
    try:
        holder = json.loads(content)
    except ValueError:
        holder = None
    if not isinstance(holder, dict):
        holder = {}
    return exceptions.GpuBusy(
        index=gpu.index, uuid=gpu.uuid, worker_id=worker_id, path=str(path),
        holder=holder.get("worker_id") or "(unknown)", holder_pid=holder.get("pid") or "?",
    )


class GpuLock:
    """Held from `acquire` until `release` (or until the process ends)."""

    def __init__(self, gpu: Gpu, path: pathlib.Path, fd: int) -> None:
        self.gpu = gpu
        self.path = path
        self._fd: int | None = fd

    @classmethod
    def acquire(cls, lock_dir: pathlib.Path, gpu: Gpu, worker_id: str) -> GpuLock:
        lock_dir.mkdir(parents=True, exist_ok=True)
        path = lock_path(lock_dir, gpu)
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            busy = False
        except BlockingIOError:
            busy = True
        except BaseException:
            os.close(fd)
            raise
        if busy:
            content = os.pread(fd, 4096, 0).decode(errors="replace")
            os.close(fd)
            raise busy_error(gpu, worker_id, path, content)
        record = json.dumps({"worker_id": worker_id, "pid": os.getpid(), "gpu": gpu.uuid})
        os.ftruncate(fd, 0)
        os.pwrite(fd, record.encode() + b"\n", 0)
        return cls(gpu, path, fd)

    def release(self) -> None:
        if self._fd is None:
            return
        with contextlib.suppress(OSError):
            os.ftruncate(self._fd, 0)
        os.close(self._fd)  # closing drops the flock
        self._fd = None


def acquire_all(lock_dir: pathlib.Path, gpus: list[Gpu], worker_id: str) -> list[GpuLock]:
    """Lock every GPU or none."""
    held: list[GpuLock] = []
    try:
        for gpu in gpus:
            held.append(GpuLock.acquire(lock_dir, gpu, worker_id))
    except BaseException:
        for lock in held:
            lock.release()
        raise
    return held
