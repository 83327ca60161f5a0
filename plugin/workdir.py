"""The folder where the plugin stages each request's C2 input (tens of MB) while it waits.

One folder per process under TMPDIR, named with the host and pid, holding a lock file that the
process keeps flock'ed for its life. venus-worker stops and restarts its processors with
SIGKILL, which leaves no chance to clean up, so a starting plugin removes this host's folders
whose lock nobody holds: the kernel drops a dead process's flock, in whatever pid namespace
(container) it ran, so a live plugin's folder is never taken for a dead one's.
"""

from __future__ import annotations

import collections.abc
import contextlib
import fcntl
import os
import pathlib
import re
import shutil
import socket
import tempfile
import threading
import time

import structlog

log = structlog.get_logger(__name__)

PREFIX = "cluster-c2-plugin-"
LOCK = ".lock"
#: A folder without its lock file this old was left by a plugin killed while it started.
UNLOCKED_AGE_S = 600.0
#: Locks of folders made again after they were removed under us, held for the process's life.
_relocked: list[int] = []
#: Two requests finding the folder gone at once must not both lock it (the second would wait
#: on the first's lock for ever).
_reviving = threading.Lock()


@contextlib.contextmanager
def staging_folder(parent: pathlib.Path | None = None) -> collections.abc.Iterator[pathlib.Path]:
    """This process's folder, removed on the way out; leftovers of dead plugins go first."""
    parent = parent or pathlib.Path(tempfile.gettempdir())
    if removed := remove_left_by_dead(parent):
        log.info("removed C2 inputs left by plugins that were killed", folders=len(removed))
    prefix = f"{PREFIX}{_host()}-{os.getpid()}-"
    with tempfile.TemporaryDirectory(prefix=prefix, dir=parent) as path:
        folder = pathlib.Path(path)
        fd = _lock(folder)
        try:
            yield folder
        finally:
            os.close(fd)


def revive(folder: pathlib.Path) -> None:
    """Make this process's folder again if something removed it (a /tmp cleaner ageing out
    the files of a plugin that sat idle for days): otherwise every request would fail until
    the plugin is restarted. Locked again, so that other plugins take it for a live one's."""
    with _reviving:
        if folder.is_dir():
            return
        folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        _relocked.append(_lock(folder))
    log.warning("the staging folder was removed by something else; made again",
                folder=str(folder))


def remove_left_by_dead(parent: pathlib.Path) -> list[pathlib.Path]:
    """Remove the folders of this host's plugins that are no longer running; the ones removed."""
    removed = []
    for folder in parent.glob(f"{PREFIX}{_host()}-*"):
        if folder.is_dir() and not folder.is_symlink() and _abandoned(folder):
            shutil.rmtree(folder, ignore_errors=True)
            removed.append(folder)
    return removed


def _lock(folder: pathlib.Path) -> int:
    # Locked under a temporary name, then renamed: a cleaner never finds it unlocked.
    tmp = folder / f"{LOCK}.tmp"
    fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    fcntl.flock(fd, fcntl.LOCK_EX)
    tmp.rename(folder / LOCK)
    return fd


def _abandoned(folder: pathlib.Path) -> bool:
    try:
        fd = os.open(folder / LOCK, os.O_RDWR | os.O_CLOEXEC)
    except FileNotFoundError:
        try:
            return time.time() - folder.stat().st_mtime > UNLOCKED_AGE_S
        except OSError:
            return False
    except OSError:
        return False  # another user's folder
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False  # its plugin is running
    finally:
        os.close(fd)
    return True


def _host() -> str:
    # Folders of other hosts (a TMPDIR shared over the network) are never touched.
    return re.sub(r"[^A-Za-z0-9.]", "_", socket.gethostname())
