"""The folder where the plugin stages each request's C2 input (tens of MB) while it waits.

One folder per process under TMPDIR, named with the host and pid. venus-worker stops and
restarts its processors with SIGKILL, which leaves no chance to clean up, so a starting plugin
removes the folders of this host's plugins that are no longer running.
"""

from __future__ import annotations

import collections.abc
import contextlib
import os
import pathlib
import re
import shutil
import socket
import tempfile

import structlog

log = structlog.get_logger(__name__)

PREFIX = "cluster-c2-plugin-"


@contextlib.contextmanager
def staging_folder(parent: pathlib.Path | None = None) -> collections.abc.Iterator[pathlib.Path]:
    """This process's folder, removed on the way out; leftovers of dead plugins go first."""
    parent = parent or pathlib.Path(tempfile.gettempdir())
    if removed := remove_left_by_dead(parent):
        log.info("removed C2 inputs left by plugins that were killed", folders=len(removed))
    prefix = f"{PREFIX}{_host()}-{os.getpid()}-"
    with tempfile.TemporaryDirectory(prefix=prefix, dir=parent) as path:
        yield pathlib.Path(path)


def remove_left_by_dead(parent: pathlib.Path) -> list[pathlib.Path]:
    """Remove the folders of this host's plugins whose process is gone; the ones removed."""
    mine = re.compile(re.escape(f"{PREFIX}{_host()}-") + r"(\d+)-")
    removed = []
    for entry in parent.glob(f"{PREFIX}*"):
        match = mine.match(entry.name)
        if match is None or _running(int(match[1])) or not _owned(entry):
            continue
        shutil.rmtree(entry, ignore_errors=True)
        removed.append(entry)
    return removed


def _host() -> str:
    # Folders of other hosts (a TMPDIR shared over the network) are never touched.
    return re.sub(r"[^A-Za-z0-9.]", "_", socket.gethostname())


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's process
    return True


def _owned(path: pathlib.Path) -> bool:
    try:
        return path.lstat().st_uid == os.getuid() and path.is_dir()
    except OSError:
        return False
