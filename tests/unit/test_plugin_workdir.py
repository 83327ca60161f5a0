"""The plugin's staging folder: removed on exit, and what a killed plugin left is removed by the
next one on the same host."""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys

from plugin import workdir


def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_a_killed_plugins_inputs_are_removed_and_live_ones_kept(tmp_path: pathlib.Path) -> None:
    # Given folders of a plugin that was killed, of a running plugin, and of another host
    host = workdir._host()
    killed = tmp_path / f"{workdir.PREFIX}{host}-{dead_pid()}-abc"
    running = tmp_path / f"{workdir.PREFIX}{host}-{os.getpid()}-def"
    elsewhere = tmp_path / f"{workdir.PREFIX}other_host-{dead_pid()}-ghi"
    unrelated = tmp_path / "cluster-c2-plugin.log"
    for folder in (killed, running, elsewhere):
        folder.mkdir()
        (folder / "1-0.c2-input.json").write_bytes(b"{}" * 1000)
    unrelated.write_text("kept")
    # When a plugin starts, only the killed plugin's folder goes
    with workdir.staging_folder(tmp_path) as mine:
        assert mine.is_dir() and mine.name.startswith(f"{workdir.PREFIX}{host}-{os.getpid()}-")
        assert not killed.exists()
        assert running.is_dir() and elsewhere.is_dir() and unrelated.is_file()
    # And its own folder is removed when it stops
    assert not mine.exists()
