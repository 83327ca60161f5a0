"""One worker per GPU: an flock'ed file per GPU UUID in a lock folder shared by the host's workers;
and one worker per work folder.

The file holds the holder's worker id and pid, so a second worker is refused with a message that
names both workers and the GPU. The kernel drops an flock when its holder dies, even by kill -9:
a stale file never blocks a new worker.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import pathlib
import re
import stat

from worker import exceptions
from worker.gpus import Gpu


def lock_path(lock_dir: pathlib.Path, gpu: Gpu) -> pathlib.Path:
    # The UUID becomes a file name: keep it to safe characters.
    return lock_dir / f"{re.sub(r'[^A-Za-z0-9._-]', '_', gpu.uuid)}.lock"


def _holder(content: str) -> dict[str, object]:
    try:
        holder = json.loads(content)
    except ValueError:
        return {}
    return holder if isinstance(holder, dict) else {}


def busy_error(gpu: Gpu, worker_id: str, path: pathlib.Path, content: str) -> exceptions.GpuBusy:
    """The refusal, from what the holder wrote in the lock file (maybe nothing yet)."""
    holder = _holder(content)
    return exceptions.GpuBusy(
        index=gpu.index, uuid=gpu.uuid, worker_id=worker_id, path=str(path),
        holder=holder.get("worker_id") or "(unknown)", holder_pid=holder.get("pid") or "?",
    )


class HeldLock:
    """An flock'ed file, held until `release` (or until the process ends)."""

    def __init__(self, path: pathlib.Path, fd: int) -> None:
        self.path = path
        self._fd: int | None = fd

    @classmethod
    def take(cls, path: pathlib.Path, record: dict[str, object],
             shared: bool = False) -> HeldLock | str:
        """The lock with `record` written in it; or, when another process holds it, what that
        holder wrote (maybe nothing yet). A `shared` lock's folder and file are made for every
        user's workers (a sticky folder, as /tmp is), whoever came first: a worker run once by
        hand as root must not lock the service's user out of the GPU."""
        if shared:
            try:
                path.parent.mkdir(parents=True)
                os.chmod(path.parent, 0o1777)
            except FileExistsError:
                pass
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
        # Never through a link: in a folder every user may write, a link planted there would
        # have this worker truncate (and open to all) a file of the link's choosing
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o666)
        if shared:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode) or st.st_nlink != 1:
                os.close(fd)
                raise OSError(errno.EPERM, "not a lock file of its own (a link to another "
                              "file?): remove it", str(path))
            with contextlib.suppress(PermissionError):  # only its owner may, and needs to
                os.fchmod(fd, 0o666)  # the umask took write access from the other users
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            content = os.pread(fd, 4096, 0).decode(errors="replace")
            os.close(fd)
            return content
        except BaseException:
            os.close(fd)
            raise
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(record).encode() + b"\n", 0)
        return cls(path, fd)

    def release(self) -> None:
        if self._fd is None:
            return
        with contextlib.suppress(OSError):
            os.ftruncate(self._fd, 0)
        os.close(self._fd)  # closing drops the flock
        self._fd = None


class GpuLock(HeldLock):
    """This worker's claim on one GPU."""

    @classmethod
    def acquire(cls, lock_dir: pathlib.Path, gpu: Gpu, worker_id: str) -> HeldLock:
        path = lock_path(lock_dir, gpu)
        try:
            held = cls.take(path, {"worker_id": worker_id, "pid": os.getpid(), "gpu": gpu.uuid},
                            shared=True)
        except OSError as exc:
            hint = (" (made by another user's worker: let every user write it, chmod 666, or "
                    "give another --lock-dir)" if isinstance(exc, PermissionError) else "")
            raise exceptions.ConfigError(
                field="lock-dir",
                detail=f"cannot lock {path}: {exc.strerror or exc}{hint}") from exc
        if isinstance(held, str):
            raise busy_error(gpu, worker_id, path, held)
        return held


def lock_work_dir(work_dir: pathlib.Path) -> HeldLock:
    """One worker per work folder: it holds the worker's id (two processes with one id would
    take each other's tasks back) and its temp payloads (which a starting worker clears)."""
    path = work_dir / "worker.lock"
    try:
        held = HeldLock.take(path, {"pid": os.getpid()})
    except OSError as exc:
        raise exceptions.ConfigError(
            field="work-dir", detail=f"cannot use {work_dir}: {exc.strerror or exc}") from exc
    if isinstance(held, str):
        raise exceptions.WorkDirBusy(path=str(work_dir), holder_pid=_holder(held).get("pid") or "?")
    return held


def acquire_all(lock_dir: pathlib.Path, gpus: list[Gpu], worker_id: str) -> list[HeldLock]:
    """Lock every GPU or none."""
    held: list[HeldLock] = []
    try:
        for gpu in gpus:
            held.append(GpuLock.acquire(lock_dir, gpu, worker_id))
    except BaseException:
        for lock in held:
            lock.release()
        raise
    return held
