"""The plugin's staging folder: removed on exit, and what a killed plugin left is removed by the
next one on the same host, never the folder of one that runs."""

from __future__ import annotations

import os
import pathlib
import signal
import subprocess
import sys
import time

from plugin import workdir

#: A plugin's staging folder in another process, printed once it is locked.
HOLDER = """
import sys, pathlib, time
from plugin import workdir
with workdir.staging_folder(pathlib.Path(sys.argv[1])) as folder:
    (folder / "1-0.c2-input.json").write_bytes(b"{}" * 1000)
    print(folder, flush=True)
    time.sleep(60)
"""


def plugin_holding_a_folder(parent: pathlib.Path) -> tuple[subprocess.Popen[str], pathlib.Path]:
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(parent)], text=True,
                            stdout=subprocess.PIPE, cwd=pathlib.Path(workdir.__file__).parents[1])
    assert proc.stdout is not None
    return proc, pathlib.Path(proc.stdout.readline().strip())


def test_a_killed_plugins_inputs_are_removed_and_a_running_ones_kept(
    tmp_path: pathlib.Path
) -> None:
    # Given one plugin killed (as venus-worker stops it), one running, and another host's folder
    killed, killed_folder = plugin_holding_a_folder(tmp_path)
    running, running_folder = plugin_holding_a_folder(tmp_path)
    killed.send_signal(signal.SIGKILL)
    killed.wait()
    elsewhere = tmp_path / f"{workdir.PREFIX}other_host-1-abc"
    elsewhere.mkdir()
    try:
        # When a plugin starts, only the killed plugin's folder goes
        with workdir.staging_folder(tmp_path) as mine:
            assert mine.name.startswith(f"{workdir.PREFIX}{workdir._host()}-{os.getpid()}-")
            assert not killed_folder.exists()
            assert (running_folder / "1-0.c2-input.json").is_file() and elsewhere.is_dir()
            # And a folder of ours is never taken for a dead plugin's while we run
            assert workdir.remove_left_by_dead(tmp_path) == []
        # Its own folder is removed when it stops
        assert not mine.exists()
    finally:
        running.kill()
        running.wait()
        for proc in (killed, running):
            assert proc.stdout is not None
            proc.stdout.close()


def test_a_folder_left_before_its_lock_was_made_goes_once_it_is_old(
    tmp_path: pathlib.Path
) -> None:
    young = tmp_path / f"{workdir.PREFIX}{workdir._host()}-1-young"
    old = tmp_path / f"{workdir.PREFIX}{workdir._host()}-2-old"
    for folder in (young, old):
        folder.mkdir()
    past = time.time() - workdir.UNLOCKED_AGE_S - 1
    os.utime(old, (past, past))
    assert workdir.remove_left_by_dead(tmp_path) == [old]
    assert young.is_dir()
