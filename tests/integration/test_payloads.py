"""The payload store contract, one body for the `fs` folder and the `db` store (SQLite, MariaDB)."""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import os
import pathlib
import shutil
import tracemalloc
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from typing import Any

import pytest

from broker import exceptions, models
from broker.payloads import (
    CHUNK_BYTES,
    DbPayloadStore,
    FsPayloadStore,
    PayloadStore,
    open_payload_store,
)
from broker.payloads.fs import MARKER
from broker.store import open_store

MiB = 1024 * 1024


@dataclasses.dataclass
class Harness:
    payloads: PayloadStore
    leftovers: Callable[[], Awaitable[list[str]]]  #: every file or upload row, temp or complete
    make_leftover: Callable[[], Awaitable[None]]  #: what an upload killed with the broker leaves


@pytest.fixture(params=["fs", "db-sqlite", "db-mariadb"])
def payloads_where(request: pytest.FixtureRequest, tmp_path: pathlib.Path) -> tuple[str, str]:
    if request.param == "fs":
        return "fs", str(tmp_path / "payloads")
    backend = request.param.removeprefix("db-")
    return "db", str(request.getfixturevalue(f"{backend}_dsn"))


@pytest.fixture
async def harness(payloads_where: tuple[str, str]) -> AsyncIterator[Harness]:
    kind, where = payloads_where
    if kind == "fs":
        fs = FsPayloadStore(pathlib.Path(where))
        await fs.open()
        yield Harness(fs, lambda: _files(fs.root), lambda: _fs_leftover(fs.root))
        return
    store = open_store(where)
    await store.open()
    try:
        db = DbPayloadStore(store)
        await db.open()

        async def rows() -> list[str]:
            return [row.upload_id for row in await store.blob_list()]

        async def leftover() -> None:
            await store.blob_begin("interrupted", sha_of(b"x"), 1, models.now_ms())
            await store.blob_put_chunk("interrupted", 0, b"x")

        yield Harness(db, rows, leftover)
    finally:
        await store.close()


async def _files(root: pathlib.Path) -> list[str]:
    """The payload files and leftovers under root (the broker's marker stays for good)."""
    return sorted(str(p.relative_to(root)) for p in root.rglob("*")
                  if p.is_file() and p.name != MARKER)


async def _fs_leftover(root: pathlib.Path) -> None:
    sha = sha_of(b"x")
    shard = root / sha[:2] / sha[2:4]
    shard.mkdir(parents=True, exist_ok=True)
    (shard / f"{sha}.0123456789abcdef.tmp").write_bytes(b"half")


def sha_of(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def blob(n: int) -> bytes:
    return bytes(i * 7 % 251 for i in range(n))


async def stream(
    data: bytes, sizes: Iterable[int] = (1000, 7, 3 * MiB // 2)
) -> AsyncIterator[bytes]:
    """Yield data in chunks of odd sizes, cycling through `sizes`."""
    pos = 0
    sizes = list(sizes)
    i = 0
    while pos < len(data):
        n = sizes[i % len(sizes)]
        yield data[pos : pos + n]
        pos += n
        i += 1


async def read_all(payloads: PayloadStore, sha256: str) -> bytes:
    out = bytearray()
    async for data in payloads.read(sha256):
        assert 0 < len(data) <= CHUNK_BYTES
        out += data
    return bytes(out)


async def assert_nothing_left(h: Harness, sha256: str) -> None:
    assert not await h.payloads.exists(sha256)
    assert await h.payloads.size(sha256) is None
    assert await h.leftovers() == []


@pytest.mark.parametrize(
    "n", [0, 1, CHUNK_BYTES - 1, CHUNK_BYTES, 3 * CHUNK_BYTES + 5], ids=lambda n: f"{n}B"
)
async def test_round_trip(harness: Harness, n: int) -> None:
    data = blob(n)
    sha = sha_of(data)

    await harness.payloads.write(sha, n, stream(data))

    assert await harness.payloads.exists(sha)
    assert await harness.payloads.size(sha) == n
    assert await read_all(harness.payloads, sha) == data


async def test_db_rows_are_whole_chunks(store_dsn: str) -> None:
    store = open_store(store_dsn)
    await store.open()
    try:
        data = blob(2 * CHUNK_BYTES + 5)
        await DbPayloadStore(store).write(sha_of(data), len(data), stream(data, [333_333]))
        (row,) = await store.blob_list()
        sizes = []
        seq = 0
        while (chunk := await store.blob_read_chunk(row.upload_id, seq)) is not None:
            sizes.append(len(chunk))
            seq += 1
        assert sizes == [CHUNK_BYTES, CHUNK_BYTES, 5]
    finally:
        await store.close()


async def test_db_read_of_a_blob_deleted_meanwhile_is_not_passed_off_as_whole(
    store_dsn: str,
) -> None:
    store = open_store(store_dsn)
    await store.open()
    try:
        db = DbPayloadStore(store)
        data = blob(3 * CHUNK_BYTES)
        await db.write(sha_of(data), len(data), stream(data))
        reader = db.read(sha_of(data))
        assert len(await anext(reader)) == CHUNK_BYTES

        await db.delete(sha_of(data))

        with pytest.raises(exceptions.PayloadNotFound):
            async for _ in reader:
                pass
    finally:
        await store.close()


async def test_sha_mismatch_rejects_and_keeps_nothing(harness: Harness) -> None:
    data = blob(CHUNK_BYTES + 10)
    claimed = sha_of(b"something else")

    with pytest.raises(exceptions.ChecksumMismatch) as err:
        await harness.payloads.write(claimed, len(data), stream(data))

    assert claimed in str(err.value) and sha_of(data) in str(err.value)
    await assert_nothing_left(harness, claimed)


async def test_oversized_upload_stops_at_once_and_keeps_nothing(harness: Harness) -> None:
    data = blob(100)
    consumed_past_limit = False

    async def too_long() -> AsyncIterator[bytes]:
        nonlocal consumed_past_limit
        yield data[:60]
        yield data[60:]
        consumed_past_limit = True
        yield b"more"

    with pytest.raises(exceptions.OversizedUpload, match="more than the 99 bytes"):
        await harness.payloads.write(sha_of(data[:99]), 99, too_long())

    assert not consumed_past_limit
    await assert_nothing_left(harness, sha_of(data[:99]))


async def test_truncated_upload_keeps_nothing(harness: Harness) -> None:
    data = blob(CHUNK_BYTES + 1)

    with pytest.raises(exceptions.TruncatedUpload, match=f"after {CHUNK_BYTES} of the"):
        await harness.payloads.write(sha_of(data), len(data), stream(data[:-1]))

    await assert_nothing_left(harness, sha_of(data))


async def test_cancelled_upload_leaves_nothing(harness: Harness) -> None:
    data = blob(3 * CHUNK_BYTES)
    sha = sha_of(data)
    halfway = asyncio.Event()

    async def stalls() -> AsyncIterator[bytes]:
        yield data[: 2 * CHUNK_BYTES]
        yield data[2 * CHUNK_BYTES : 2 * CHUNK_BYTES + 10]
        halfway.set()
        await asyncio.Event().wait()  # the client hangs; the broker gives up on it
        yield b""

    # Given an upload that stopped halfway
    upload = asyncio.create_task(harness.payloads.write(sha, len(data), stalls()))
    await asyncio.wait_for(halfway.wait(), 10)
    # When it is cancelled
    upload.cancel()
    with pytest.raises(asyncio.CancelledError):
        await upload
    # Then nothing is visible, and a sweep finds nothing left either
    assert not await harness.payloads.exists(sha)
    report = await harness.payloads.clean(set(), older_than_ms=0, now_ms=models.now_ms() + 1000)
    assert report.orphans_removed == 0
    await assert_nothing_left(harness, sha)


async def test_writing_twice_is_harmless(harness: Harness) -> None:
    data = blob(CHUNK_BYTES + 3)
    sha = sha_of(data)

    await harness.payloads.write(sha, len(data), stream(data))
    await harness.payloads.write(sha, len(data), stream(data, [4096]))
    await asyncio.gather(*(harness.payloads.write(sha, len(data), stream(data)) for _ in range(3)))

    assert len(await harness.leftovers()) == 1
    assert await read_all(harness.payloads, sha) == data


async def test_read_of_missing_blob_raises(harness: Harness) -> None:
    sha = sha_of(b"never uploaded")

    with pytest.raises(exceptions.PayloadNotFound, match=sha):
        await read_all(harness.payloads, sha)


async def test_delete(harness: Harness) -> None:
    data = blob(10)
    await harness.payloads.write(sha_of(data), len(data), stream(data))

    await harness.payloads.delete(sha_of(data))
    await harness.payloads.delete(sha_of(data))  # absent: no error

    await assert_nothing_left(harness, sha_of(data))


async def test_clean_removes_old_orphans_and_leftovers_only(harness: Harness) -> None:
    # Given a referenced blob, an orphan and the leftover of an interrupted upload
    needed, orphan = blob(10), blob(CHUNK_BYTES + 20)
    for data in (needed, orphan):
        await harness.payloads.write(sha_of(data), len(data), stream(data))
    await harness.make_leftover()
    keep = {sha_of(needed)}
    hour_ms = 3_600_000
    now = models.now_ms()

    # When they are still young, nothing goes
    young = await harness.payloads.clean(keep, older_than_ms=hour_ms, now_ms=now)
    assert (young.temp_removed, young.orphans_removed, young.bytes_freed) == (0, 0, 0)
    assert len(await harness.leftovers()) == 3

    # When they are old, the orphan and the leftover go; the referenced blob stays
    old = await harness.payloads.clean(keep, older_than_ms=hour_ms, now_ms=now + 2 * hour_ms)
    assert (old.temp_removed, old.orphans_removed) == (1, 1)
    assert old.bytes_freed >= len(orphan)
    assert not await harness.payloads.exists(sha_of(orphan))
    assert await read_all(harness.payloads, sha_of(needed)) == needed
    assert len(await harness.leftovers()) == 1


async def test_a_blob_a_submit_reuses_counts_as_new_for_the_cleaner(harness: Harness) -> None:
    # A submit reusing a stored payload makes its task after the cleaner read the references:
    # the blob must be young again by then, or the new task loses its input
    data = blob(100)
    await harness.payloads.write(sha_of(data), len(data), stream(data))
    await asyncio.sleep(0.3)
    await harness.payloads.touch(sha_of(data))
    touched = models.now_ms()
    report = await harness.payloads.clean(set(), older_than_ms=200, now_ms=touched + 100)
    assert report.orphans_removed == 0 and await harness.payloads.exists(sha_of(data))
    # (and, untouched for longer than the orphan age, it goes)
    report = await harness.payloads.clean(set(), older_than_ms=200, now_ms=touched + 300)
    assert report.orphans_removed == 1 and not await harness.payloads.exists(sha_of(data))


# -- fs only ------------------------------------------------------------------------------------


async def test_fs_layout_is_sharded_and_local(tmp_path: pathlib.Path) -> None:
    fs = FsPayloadStore(tmp_path / "new" / "folder")
    await fs.open()  # creates it
    data = blob(10)
    sha = sha_of(data)

    await fs.write(sha, len(data), stream(data))

    path = tmp_path / "new" / "folder" / sha[:2] / sha[2:4] / sha
    assert fs.local_path(sha) == path
    assert path.read_bytes() == data
    assert await _files(fs.root) == [f"{sha[:2]}/{sha[2:4]}/{sha}"]


async def test_fs_shard_folders_left_empty_go_once_unchanged_for_the_orphan_age(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    fs = FsPayloadStore(tmp_path / "payloads")
    await fs.open()
    data = blob(10)
    sha = sha_of(data)
    await fs.write(sha, len(data), stream(data))
    top, shard = fs.root / sha[:2], fs.root / sha[:2] / sha[2:4]
    hour_ms, now = 3_600_000, models.now_ms()
    # While young, the orphan and its folders stay
    await fs.clean(set(), older_than_ms=hour_ms, now_ms=now)
    assert shard.is_dir()
    # Once older than the orphan age, the orphan goes, and the folders it leaves empty
    report = await fs.clean(set(), older_than_ms=hour_ms, now_ms=now + 2 * hour_ms)
    assert report.orphans_removed == 1
    assert not top.exists() and sorted(p.name for p in fs.root.iterdir()) == [MARKER]
    # A write whose shard folder a cleaner removes between its making and the upload's start
    # makes it again
    real_mkdir = pathlib.Path.mkdir
    removed: list[pathlib.Path] = []

    def mkdir_then_cleaned(self: pathlib.Path, *args: Any, **kwargs: Any) -> None:
        real_mkdir(self, *args, **kwargs)
        if self == shard and not removed:
            removed.append(self)
            self.rmdir()

    monkeypatch.setattr(pathlib.Path, "mkdir", mkdir_then_cleaned)
    await fs.write(sha, len(data), stream(data))
    assert removed == [shard] and await read_all(fs, sha) == data


async def test_fs_upload_replaces_a_copy_damaged_in_the_store(tmp_path: pathlib.Path) -> None:
    fs = FsPayloadStore(tmp_path)
    await fs.open()
    data = blob(CHUNK_BYTES + 3)
    sha = sha_of(data)
    await fs.write(sha, len(data), stream(data))
    path = fs.local_path(sha)
    assert path is not None
    # Given the stored copy cut short (a disk or NFS fault)
    with path.open("r+b") as f:
        f.truncate(1000)
    # When the same payload is uploaded again, the good upload takes its place
    await fs.write(sha, len(data), stream(data))
    assert await read_all(fs, sha) == data
    assert await _files(fs.root) == [f"{sha[:2]}/{sha[2:4]}/{sha}"]  # no temp file left


async def test_fs_refuses_a_name_that_is_not_a_sha256(tmp_path: pathlib.Path) -> None:
    fs = FsPayloadStore(tmp_path)

    with pytest.raises(exceptions.InvalidArgument, match="not a sha256"):
        await fs.write("../../etc/passwd", 1, stream(b"x"))


async def test_fs_unwritable_folder_is_reported_with_path(tmp_path: pathlib.Path) -> None:
    (tmp_path / "file").write_bytes(b"")
    root = tmp_path / "file" / "payloads"

    with pytest.raises(exceptions.PayloadStoreUnavailable) as err:
        await FsPayloadStore(root).open()

    assert str(root) in str(err.value)
    assert "writable" in str(err.value)
    assert isinstance(err.value.__cause__, OSError)


async def test_fs_folder_that_is_a_file_is_said_to_be_one(tmp_path: pathlib.Path) -> None:
    (tmp_path / "file").write_bytes(b"")
    with pytest.raises(exceptions.PayloadStoreUnavailable,
                       match=f"Payload folder {tmp_path / 'file'} cannot be used: it is a file, "
                       "not a folder"):
        await FsPayloadStore(tmp_path / "file").open()


async def test_fs_folder_lost_during_upload_is_reported(tmp_path: pathlib.Path) -> None:
    fs = FsPayloadStore(tmp_path / "payloads")
    await fs.open()
    shutil.rmtree(tmp_path / "payloads")
    (tmp_path / "payloads").write_bytes(b"")  # e.g. the mount went away

    with pytest.raises(exceptions.PayloadStoreUnavailable, match="payloads"):
        await fs.write(sha_of(b"x"), 1, stream(b"x"))


def test_factory(tmp_path: pathlib.Path) -> None:
    store = open_store(f"sqlite:///{tmp_path}/x.db")

    assert isinstance(open_payload_store("fs", str(tmp_path), store), FsPayloadStore)
    assert isinstance(open_payload_store("db", None, store), DbPayloadStore)
    with pytest.raises(exceptions.ConfigError, match="fs-resource-path"):
        open_payload_store("fs", None, store)
    with pytest.raises(exceptions.ConfigError, match="resource-type"):
        open_payload_store("s3", None, store)


async def test_fs_memory_stays_flat_for_a_large_blob(tmp_path: pathlib.Path) -> None:
    # Given a 64 MiB blob that is generated chunk by chunk, never held whole
    n_chunks = 64
    block = os.urandom(CHUNK_BYTES)

    async def generate() -> AsyncIterator[bytes]:
        for i in range(n_chunks):
            yield i.to_bytes(8, "big") + block[8:]

    hasher = hashlib.sha256()
    async for data in generate():
        hasher.update(data)
    sha = hasher.hexdigest()
    fs = FsPayloadStore(tmp_path)
    await fs.open()

    # When it is written and read back
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        await fs.write(sha, n_chunks * CHUNK_BYTES, generate())
        back = hashlib.sha256()
        async for data in fs.read(sha):
            back.update(data)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()

    # Then it came back whole and memory grew by a few chunks at most
    assert back.hexdigest() == sha
    assert peak - base < 6 * MiB, f"peak grew by {(peak - base) / MiB:.1f} MiB"


async def test_nothing_is_called_missing_while_the_folder_is_gone(tmp_path: pathlib.Path) -> None:
    # An NFS share come unmounted leaves the empty folder it was mounted on
    store = FsPayloadStore(tmp_path / "payloads")
    await store.open()
    await store.write(sha_of(b"kept"), 4, stream(b"kept"))
    (tmp_path / "payloads").rename(tmp_path / "away")
    (tmp_path / "payloads").mkdir()
    for lookup in (store.size(sha_of(b"kept")), store.exists(sha_of(b"other")),
                   store.write(sha_of(b"new"), 3, stream(b"new")),
                   anext(store.read(sha_of(b"kept"))), store.clean(set(), 0, models.now_ms())):
        with pytest.raises(exceptions.PayloadStoreUnavailable, match="marker file"):
            await lookup
    assert list((tmp_path / "payloads").iterdir()) == []  # nothing written into it
    (tmp_path / "payloads").rmdir()
    (tmp_path / "away").rename(tmp_path / "payloads")
    assert await store.size(sha_of(b"kept")) == 4 and not await store.exists(sha_of(b"other"))


async def test_a_payload_check_that_hangs_reports_the_store_down_and_piles_up_no_threads(
    tmp_path: pathlib.Path,
) -> None:
    from broker import housekeeper

    class HangingMount(FsPayloadStore):
        calls = 0
        release = asyncio.Event()

        async def check(self) -> None:
            self.calls += 1
            await self.release.wait()  # a hard mount whose server is gone
            await super().check()

    store = HangingMount(tmp_path / "payloads")
    await store.open()
    said: list[bool] = []

    async def on_store(works: bool) -> None:
        said.append(works)

    watch = asyncio.create_task(housekeeper.watch_payloads(store, on_store, 0.01, 0.2))
    try:
        await asyncio.sleep(0.5)
        assert said == [False] and store.calls == 1  # down, and one check stuck, not many
        store.release.set()
        await asyncio.sleep(0.2)
        assert said == [False, True]
    finally:
        watch.cancel()
