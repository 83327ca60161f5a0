"""Payloads read in place from the broker's shared folder, and temp files cleaned at start."""

from __future__ import annotations

import hashlib
import pathlib
from collections.abc import AsyncIterator

import pytest

from broker.payloads.fs import MARKER, FsPayloadStore
from protos.gpuproxy.v1 import tasks_pb2
from worker.payloads import TEMP_SUFFIX, PayloadFetcher, shared_path
from worker.remote import Remote

DATA = b'{"c1out":{},"prover_id":[],"sector_id":1,"miner_id":2}'
SHA = hashlib.sha256(DATA).hexdigest()


@pytest.fixture
async def remote() -> AsyncIterator[Remote]:
    r = Remote("127.0.0.1:1")  # never called in these tests
    yield r
    await r.close()


def task() -> tasks_pb2.Task:
    return tasks_pb2.Task(id="t1", task_type="c2", payload_size=len(DATA), payload_sha256=SHA)


def test_shared_layout_matches_the_broker_fs_store(tmp_path: pathlib.Path) -> None:
    assert shared_path(tmp_path, SHA) == tmp_path / SHA[0:2] / SHA[2:4] / SHA
    assert shared_path(tmp_path, "../../etc/passwd") is None


async def test_payload_is_read_in_place_when_intact(tmp_path: pathlib.Path,
                                                    remote: Remote) -> None:
    path = shared_path(tmp_path / "nfs", SHA)
    assert path is not None
    path.parent.mkdir(parents=True)
    path.write_bytes(DATA)
    fetcher = PayloadFetcher(tmp_path / "tmp", remote, tmp_path / "nfs")
    payload = await fetcher._from_shared_folder(task())
    assert payload is not None and payload.path == path and not payload.temporary
    payload.discard()
    assert path.exists()  # the broker's file is never ours to delete


async def test_missing_or_damaged_shared_file_falls_back(tmp_path: pathlib.Path,
                                                         remote: Remote) -> None:
    fetcher = PayloadFetcher(tmp_path / "tmp", remote, tmp_path / "nfs")
    assert await fetcher._from_shared_folder(task()) is None
    path = shared_path(tmp_path / "nfs", SHA)
    assert path is not None
    path.parent.mkdir(parents=True)
    path.write_bytes(DATA[:-1] + b"!")
    assert await fetcher._from_shared_folder(task()) is None


async def test_leftover_temp_payloads_are_removed(tmp_path: pathlib.Path,
                                                  remote: Remote) -> None:
    temp = tmp_path / "tmp"
    temp.mkdir()
    (temp / f"t1.abcd{TEMP_SUFFIX}").write_bytes(b"x")
    (temp / "keep.txt").write_bytes(b"y")
    assert PayloadFetcher(temp, remote).remove_leftovers() == 1
    assert [p.name for p in temp.iterdir()] == ["keep.txt"]


async def test_a_shared_folder_that_is_not_mounted_is_named(tmp_path: pathlib.Path,
                                                           remote: Remote) -> None:
    def problem(root: pathlib.Path | None) -> str:
        return PayloadFetcher(tmp_path / "tmp", remote, root).shared_folder_problem()

    mount = tmp_path / "mnt"
    assert problem(mount) == "missing"
    mount.mkdir()  # the mount point, without the NFS share on it
    assert problem(mount) == f"not the broker's payload folder (no {MARKER} in it)"
    await FsPayloadStore(mount).open()  # a broker serves it (this test plays the share)
    assert problem(mount) == "" and problem(None) == ""
