"""The payload store interface shared by the `fs` and `db` implementations.

Blobs are immutable and named by their sha256. A write is verified while it streams (size and
sha256) and becomes visible only when complete: an interrupted or failed write leaves nothing a
reader can see. Memory stays bounded by one chunk whatever the blob's size.
"""

from __future__ import annotations

import abc
import asyncio
import dataclasses
import hashlib
import pathlib
from collections.abc import AsyncIterable, AsyncIterator

#: Chunk size on the wire and in the database; gRPC messages stay far below 4 MiB.
CHUNK_BYTES = 1024 * 1024
#: Below this, hashing on the event loop is cheaper than a hop to a thread.
THREAD_HASH_BYTES = 64 * 1024


async def hash_chunk(hasher: hashlib._Hash, data: bytes) -> None:
    """hasher.update(data), in a thread for a large chunk: the event loop keeps serving."""
    if len(data) < THREAD_HASH_BYTES:
        hasher.update(data)
    else:
        await asyncio.to_thread(hasher.update, data)


@dataclasses.dataclass(frozen=True)
class CleanReport:
    temp_removed: int = 0  #: leftovers of interrupted uploads
    orphans_removed: int = 0  #: complete blobs no task needs any more
    bytes_freed: int = 0


class PayloadStore(abc.ABC):
    @abc.abstractmethod
    async def open(self) -> None:
        """Check the store is usable (folder exists and is writable, ...).

        Raises PayloadStoreUnavailable with the reason and the fix.
        """

    @abc.abstractmethod
    async def check(self) -> None:
        """Raise PayloadStoreUnavailable when the store can no longer serve what it holds (a
        folder that lost its marker: an NFS share that came unmounted). Cheap: called every
        second, and before a missing payload is called missing."""

    @abc.abstractmethod
    async def exists(self, sha256: str) -> bool: ...

    @abc.abstractmethod
    async def size(self, sha256: str) -> int | None:
        """Size of a stored blob, None when absent."""

    @abc.abstractmethod
    async def write(self, sha256: str, size: int, chunks: AsyncIterable[bytes]) -> None:
        """Store a blob from a stream of chunks, checking size and sha256 as it streams.

        Raises OversizedUpload as soon as more than `size` bytes arrive, TruncatedUpload when the
        stream ends short, ChecksumMismatch when the digest differs; in every error case (and on
        cancellation) nothing remains. Writing a blob that already exists is allowed and
        harmless.
        """

    @abc.abstractmethod
    def read(self, sha256: str) -> AsyncIterator[bytes]:
        """Stream a blob in chunks of at most CHUNK_BYTES. Raises PayloadNotFound."""

    @abc.abstractmethod
    async def touch(self, sha256: str) -> None:
        """A stored blob counts as new (if it is there): a submit that reuses it, instead of
        uploading it, must not lose it to a cleaner that read the references before its task
        existed (the cleaner leaves blobs younger than its orphan age alone)."""

    @abc.abstractmethod
    async def delete(self, sha256: str) -> None:
        """Remove a blob if present."""

    @abc.abstractmethod
    async def clean(self, keep: set[str], older_than_ms: int, now_ms: int) -> CleanReport:
        """Remove temp leftovers older than older_than_ms, and complete blobs not in `keep`
        that are older than older_than_ms (the age guard protects a submit in flight)."""

    def local_path(self, sha256: str) -> pathlib.Path | None:
        """Where a worker sharing the folder can read the blob directly (fs only)."""
        return None
