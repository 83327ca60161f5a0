from __future__ import annotations

import json
import os
import pathlib

import pytest

from worker import exceptions, locks
from worker.gpus import Gpu

GPU = Gpu(0, "NVIDIA GeForce RTX 3090", "GPU-5f1c2a9e", 24 << 30)


def test_second_worker_on_a_gpu_is_refused_naming_both(tmp_path: pathlib.Path) -> None:
    # Given worker A holds GPU 0
    held = locks.GpuLock.acquire(tmp_path, GPU, "host-gpu0-aaaa")
    try:
        # When worker B asks for the same GPU
        with pytest.raises(exceptions.GpuBusy) as info:
            locks.GpuLock.acquire(tmp_path, GPU, "host-gpu0-bbbb")
        # Then the refusal names both workers, A's pid and the GPU
        message = str(info.value)
        assert "host-gpu0-aaaa" in message
        assert f"pid {os.getpid()}" in message
        assert "host-gpu0-bbbb" in message
        assert "GPU 0 (GPU-5f1c2a9e)" in message
        assert info.value.__cause__ is None and info.value.__context__ is None
    finally:
        held.release()
    # And once A is gone, B gets it
    locks.GpuLock.acquire(tmp_path, GPU, "host-gpu0-bbbb").release()


def test_lock_file_records_the_holder(tmp_path: pathlib.Path) -> None:
    held = locks.GpuLock.acquire(tmp_path, GPU, "host-gpu0-aaaa")
    record = json.loads(held.path.read_text())
    assert record == {"worker_id": "host-gpu0-aaaa", "pid": os.getpid(), "gpu": "GPU-5f1c2a9e"}
    held.release()
    held.release()  # twice is harmless


def test_refusal_without_a_readable_holder() -> None:
    error = locks.busy_error(GPU, "me", pathlib.Path("/x.lock"), "")
    assert "(unknown)" in str(error) and "me" in str(error)


def test_all_or_nothing(tmp_path: pathlib.Path) -> None:
    other = Gpu(1, "B", "GPU-other", 1)
    blocker = locks.GpuLock.acquire(tmp_path, other, "someone")
    with pytest.raises(exceptions.GpuBusy):
        locks.acquire_all(tmp_path, [GPU, other], "me")
    blocker.release()
    # GPU 0 was let go when GPU 1 was refused
    locks.GpuLock.acquire(tmp_path, GPU, "third").release()


def test_uuid_cannot_escape_the_lock_folder(tmp_path: pathlib.Path) -> None:
    path = locks.lock_path(tmp_path, Gpu(0, "x", "../../etc/passwd", 0))
    assert path.parent == tmp_path


def test_a_work_folder_that_cannot_be_made_names_the_flag(tmp_path: pathlib.Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    with pytest.raises(exceptions.ConfigError) as info:
        locks.lock_work_dir(blocker / "w")
    assert str(info.value) == f"Invalid setting work-dir: cannot use {blocker / 'w'}: Not a " \
        "directory"


def test_a_second_worker_in_one_work_folder_is_refused_naming_the_first(
    tmp_path: pathlib.Path
) -> None:
    held = locks.lock_work_dir(tmp_path)
    with pytest.raises(exceptions.WorkDirBusy, match=f"pid {os.getpid()}"):
        locks.lock_work_dir(tmp_path)
    held.release()
    locks.lock_work_dir(tmp_path).release()


def test_the_lock_folder_and_files_are_made_for_every_users_workers(
    tmp_path: pathlib.Path,
) -> None:
    # A worker run once by hand as root must not leave files the service's user cannot lock
    old = os.umask(0o022)
    try:
        locks.GpuLock.acquire(tmp_path / "locks", GPU, "host-gpu0-aaaa").release()
    finally:
        os.umask(old)
    assert (tmp_path / "locks").stat().st_mode & 0o7777 == 0o1777  # sticky, as /tmp
    assert locks.lock_path(tmp_path / "locks", GPU).stat().st_mode & 0o777 == 0o666
    # A work folder lock stays private to its worker
    locks.lock_work_dir(tmp_path / "work").release()
    assert (tmp_path / "work").stat().st_mode & 0o777 == 0o755


def test_a_link_planted_in_the_lock_folder_is_not_followed(tmp_path: pathlib.Path) -> None:
    # In a folder every user may write, a link could point a worker at anyone's file
    victim = tmp_path / "victim"
    victim.write_text("precious")
    victim.chmod(0o600)
    folder = tmp_path / "locks"
    folder.mkdir()
    locks.lock_path(folder, GPU).symlink_to(victim)
    with pytest.raises(exceptions.ConfigError, match="cannot lock"):
        locks.GpuLock.acquire(folder, GPU, "host-gpu0-aaaa")
    locks.lock_path(folder, GPU).unlink()
    os.link(victim, locks.lock_path(folder, GPU))  # a hard link: one more name of the victim
    with pytest.raises(exceptions.ConfigError, match="not a lock file of its own"):
        locks.GpuLock.acquire(folder, GPU, "host-gpu0-aaaa")
    assert victim.read_text() == "precious" and victim.stat().st_mode & 0o777 == 0o600
