"""The `fs` payload store: blobs as files in a folder (in production an NFS mount shared by the
broker and the workers).

Layout: ``root/<sha[0:2]>/<sha[2:4]>/<sha256>``. An upload streams into ``<sha256>.<random>.tmp``
in the same shard folder, is hashed as it streams, fsynced, and renamed into place; the shard
folder is fsynced after the rename; shard folders left empty go with the cleaner, once unchanged
for the orphan age. File I/O and hashing run in threads, one chunk at a time, so
the event loop never blocks on a slow mount and memory stays bounded by a chunk.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
import os
import pathlib
import re
import secrets
import threading
from collections.abc import AsyncIterable, AsyncIterator
from typing import BinaryIO

from broker import exceptions
from broker.payloads.base import CHUNK_BYTES, CleanReport, PayloadStore

_SHA256 = re.compile(r"[0-9a-f]{64}")
_SHARD = re.compile(r"[0-9a-f]{2}")
_TEMP_SUFFIX = ".tmp"
_PROBE_PREFIX = ".gpuproxy-probe."
#: Left in the folder by the broker: a worker that does not find it at its --fs-resource-path
#: looks at an NFS mount point without the share on it, or at another folder.
MARKER = ".gpuproxy-payloads"


class FsPayloadStore(PayloadStore):
    def __init__(self, root: pathlib.Path) -> None:
        self.root = root

    async def open(self) -> None:
        await asyncio.to_thread(self._probe)

    async def check(self) -> None:
        """Every blob found missing is checked here first: nothing is called missing while
        the folder is gone (a result, a payload, a proving key)."""
        try:
            present = await asyncio.to_thread((self.root / MARKER).is_file)
        except OSError as exc:
            raise self._unavailable(exc) from exc
        if not present:
            raise exceptions.PayloadStoreUnavailable(
                path=str(self.root), detail=f"its marker file {MARKER} is gone, so it is not the "
                "folder the broker started with (an NFS share that came unmounted?); nothing "
                "is stored there or called missing until it is back")

    async def exists(self, sha256: str) -> bool:
        return await self.size(sha256) is not None

    async def size(self, sha256: str) -> int | None:
        path = self._path(sha256)
        try:
            return (await asyncio.to_thread(path.stat)).st_size
        except FileNotFoundError:
            await self.check()  # a folder gone is not a payload missing
            return None

    async def write(self, sha256: str, size: int, chunks: AsyncIterable[bytes]) -> None:
        final = self._path(sha256)
        await self.check()  # not into the empty folder an unmounted share leaves
        try:
            upload = await asyncio.to_thread(_Upload.create, final)
            try:
                await _fill(upload, sha256, size, chunks)
                await asyncio.to_thread(upload.publish)
            except BaseException:
                # Shielded: a second cancellation must not leave the temp file behind.
                await asyncio.shield(asyncio.to_thread(upload.discard))
                raise
        except OSError as exc:
            raise self._unavailable(exc) from exc

    async def read(self, sha256: str) -> AsyncIterator[bytes]:
        path = self._path(sha256)
        try:
            f = await asyncio.to_thread(path.open, "rb")
        except FileNotFoundError as exc:
            await self.check()
            raise exceptions.PayloadNotFound(sha256=sha256) from exc
        except OSError as exc:
            raise self._unavailable(exc) from exc
        try:
            while data := await asyncio.to_thread(f.read, CHUNK_BYTES):
                yield data
        finally:
            f.close()

    async def touch(self, sha256: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            await asyncio.to_thread(os.utime, self._path(sha256))

    async def delete(self, sha256: str) -> None:
        await asyncio.to_thread(self._path(sha256).unlink, missing_ok=True)

    async def clean(self, keep: set[str], older_than_ms: int, now_ms: int) -> CleanReport:
        await self.check()  # another folder mounted in its place is not ours to clean
        return await asyncio.to_thread(self._clean, keep, now_ms - older_than_ms)

    def local_path(self, sha256: str) -> pathlib.Path | None:
        return self._path(sha256)

    # -- in threads ---------------------------------------------------------------------------

    def _path(self, sha256: str) -> pathlib.Path:
        # The name becomes a path: anything but a sha256 could escape the folder.
        if not _SHA256.fullmatch(sha256):
            raise exceptions.InvalidArgument(
                detail=f"payload id {sha256!r} is not a sha256 (64 lowercase hex digits)"
            )
        return self.root / sha256[0:2] / sha256[2:4] / sha256

    def _probe(self) -> None:
        try:
            if self.root.exists() and not self.root.is_dir():
                raise exceptions.PayloadStoreUnavailable(
                    path=str(self.root), detail="it is a file, not a folder")
            self.root.mkdir(parents=True, exist_ok=True)
            probe = self.root / f"{_PROBE_PREFIX}{secrets.token_hex(8)}{_TEMP_SUFFIX}"
            probe.write_bytes(b"probe")
            if (self.root / MARKER).exists():
                probe.unlink()
            else:
                probe.write_text("The payloads of a gpuproxy broker; workers read them here.\n")
                probe.replace(self.root / MARKER)
        except OSError as exc:
            raise self._unavailable(exc) from exc

    def _unavailable(self, exc: OSError) -> exceptions.PayloadStoreUnavailable:
        detail = f"{exc.strerror or exc} ({type(exc).__name__}"
        detail += f" on {exc.filename})" if exc.filename else ")"
        return exceptions.PayloadStoreUnavailable(path=str(self.root), detail=detail)

    def _clean(self, keep: set[str], cutoff_ms: int) -> CleanReport:
        report = _Tally()
        for entry in _scandir(self.root):
            if entry.name.startswith(_PROBE_PREFIX):
                report.remove(entry, cutoff_ms, temp=True)
            elif entry.is_dir(follow_symlinks=False) and _SHARD.fullmatch(entry.name):
                for sub in _scandir(entry.path):
                    if sub.is_dir(follow_symlinks=False) and _SHARD.fullmatch(sub.name):
                        self._clean_shard(sub.path, keep, cutoff_ms, report)
                        _remove_if_empty(sub.path, cutoff_ms)
                _remove_if_empty(entry.path, cutoff_ms)
        return report.freeze()

    @staticmethod
    def _clean_shard(shard: str, keep: set[str], cutoff_ms: int, report: _Tally) -> None:
        for entry in _scandir(shard):
            if entry.name.endswith(_TEMP_SUFFIX):
                report.remove(entry, cutoff_ms, temp=True)
            elif _SHA256.fullmatch(entry.name) and entry.name not in keep:
                report.remove(entry, cutoff_ms, temp=False)


async def _fill(upload: _Upload, sha256: str, size: int, chunks: AsyncIterable[bytes]) -> None:
    """Stream the chunks into the temp file, checking size as they come and sha256 at the end."""
    received = 0
    async for data in chunks:
        received += len(data)
        if received > size:
            raise exceptions.OversizedUpload(expected=size)
        await asyncio.to_thread(upload.append, data)
    if received < size:
        raise exceptions.TruncatedUpload(received=received, expected=size)
    actual = upload.hasher.hexdigest()
    if actual != sha256:
        raise exceptions.ChecksumMismatch(actual=actual, expected=sha256)


@dataclasses.dataclass
class _Upload:
    """A temp file being written; its lock orders `discard` after a write still in flight."""

    final: pathlib.Path
    temp: pathlib.Path
    file: BinaryIO
    hasher: hashlib._Hash = dataclasses.field(default_factory=hashlib.sha256)
    lock: threading.Lock = dataclasses.field(default_factory=threading.Lock)

    @classmethod
    def create(cls, final: pathlib.Path) -> _Upload:
        temp = final.with_name(f"{final.name}.{secrets.token_hex(8)}{_TEMP_SUFFIX}")
        for _ in range(2):
            final.parent.mkdir(parents=True, exist_ok=True)
            # A cleaner (of this broker or another) may remove the empty shard folder between
            # the two: then it is made again
            with contextlib.suppress(FileNotFoundError):
                return cls(final=final, temp=temp, file=temp.open("xb"))
        final.parent.mkdir(parents=True, exist_ok=True)
        return cls(final=final, temp=temp, file=temp.open("xb"))

    def append(self, data: bytes) -> None:
        with self.lock:
            self.file.write(data)
            self.hasher.update(data)

    def publish(self) -> None:
        with self.lock:
            self.file.flush()
            os.fsync(self.file.fileno())
            self.file.close()
            if _size(self.final) == _size(self.temp):
                # Same content already there: keep the old file, whose readers (possibly on
                # other NFS clients) would get a stale handle if it were replaced, and make it
                # young again so the cleaner's age guard covers the submit now in flight.
                self.temp.unlink()
                os.utime(self.final)
            else:  # new, or a copy damaged in the store (its size is wrong): this one is good
                os.replace(self.temp, self.final)
            _fsync_dir(self.final.parent)

    def discard(self) -> None:
        # Never raises: it runs while another error propagates; the cleaner takes what is left.
        with self.lock, contextlib.suppress(OSError):
            self.file.close()
        with contextlib.suppress(OSError):
            self.temp.unlink(missing_ok=True)


@dataclasses.dataclass
class _Tally:
    temp_removed: int = 0
    orphans_removed: int = 0
    bytes_freed: int = 0

    def remove(self, entry: os.DirEntry[str], cutoff_ms: int, *, temp: bool) -> None:
        try:
            st = entry.stat(follow_symlinks=False)
            if st.st_mtime_ns // 1_000_000 >= cutoff_ms:
                return
            os.unlink(entry.path)
        except FileNotFoundError:
            return  # renamed into place or removed meanwhile
        self.bytes_freed += st.st_size
        if temp:
            self.temp_removed += 1
        else:
            self.orphans_removed += 1

    def freeze(self) -> CleanReport:
        return CleanReport(**dataclasses.asdict(self))


def _remove_if_empty(folder: str, cutoff_ms: int) -> None:
    """Remove a shard folder that is empty and unchanged since the cutoff (the orphan age): up
    to 65,536 of them would stay otherwise. Not one that is written into: it is not empty, or
    just changed; a writer that loses the race makes it again (_Upload.create)."""
    with contextlib.suppress(OSError):  # gone, or not empty (anymore)
        if os.stat(folder).st_mtime_ns // 1_000_000 < cutoff_ms:
            os.rmdir(folder)


def _size(path: pathlib.Path) -> int | None:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return None


def _scandir(path: str | pathlib.Path) -> list[os.DirEntry[str]]:
    try:
        with os.scandir(path) as it:
            return list(it)
    except FileNotFoundError:
        return []


def _fsync_dir(path: pathlib.Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
