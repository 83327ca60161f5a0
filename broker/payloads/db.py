"""The `db` payload store: blobs kept in the database as rows of CHUNK_BYTES.

Each chunk is its own short transaction, so a 200 MB payload never meets max_allowed_packet or
a huge transaction. An upload is a row that becomes ready only when every chunk is in and the
size and sha256 are verified; a failed or cancelled upload is deleted at once, and one that could
not be deleted (database gone) is left not ready for the cleaner.
"""

from __future__ import annotations

import asyncio
import hashlib
import uuid
from collections.abc import AsyncIterable, AsyncIterator

import structlog

from broker import exceptions, models
from broker.payloads.base import CHUNK_BYTES, CleanReport, PayloadStore, hash_chunk
from broker.store.base import Store

log = structlog.get_logger(__name__)


class DbPayloadStore(PayloadStore):
    def __init__(self, store: Store) -> None:
        self.store = store

    async def open(self) -> None:
        """Nothing to check beyond the store, which the caller has opened."""

    async def check(self) -> None:
        """The chunks live in the database: its outages are the store's to tell."""

    async def exists(self, sha256: str) -> bool:
        return await self.store.blob_find(sha256) is not None

    async def size(self, sha256: str) -> int | None:
        row = await self.store.blob_find(sha256)
        return None if row is None else row.size

    async def write(self, sha256: str, size: int, chunks: AsyncIterable[bytes]) -> None:
        upload_id = uuid.uuid4().hex
        try:
            await self.store.blob_begin(upload_id, sha256, size, models.now_ms())
            await self._fill(upload_id, sha256, size, chunks)
            await self.store.blob_commit(upload_id)
        except BaseException:
            await self._discard(upload_id)
            raise
        if not await self.exists(sha256):
            # The cleaner took the upload while it ran (it was older than the orphan age).
            raise exceptions.PayloadNotFound(sha256=sha256)

    async def read(self, sha256: str) -> AsyncIterator[bytes]:
        row = await self.store.blob_find(sha256)
        if row is None:
            raise exceptions.PayloadNotFound(sha256=sha256)
        sent = 0
        seq = 0
        while (data := await self.store.blob_read_chunk(row.upload_id, seq)) is not None:
            sent += len(data)
            seq += 1
            yield data
        if sent != row.size:
            # Deleted while it was read: never pass a short stream off as the whole blob.
            raise exceptions.PayloadNotFound(sha256=sha256)

    async def touch(self, sha256: str) -> None:
        await self.store.blob_touch(sha256, models.now_ms())

    async def delete(self, sha256: str) -> None:
        row = await self.store.blob_find(sha256)
        if row is not None:
            await self.store.blob_delete(row.upload_id)

    async def clean(self, keep: set[str], older_than_ms: int, now_ms: int) -> CleanReport:
        """Uploads not ready are counted as temp leftovers; their size is not counted in
        bytes_freed because only the announced size is known."""
        cutoff_ms = now_ms - older_than_ms
        temp_removed = orphans_removed = bytes_freed = 0
        for row in await self.store.blob_list():
            if row.created_at >= cutoff_ms or (row.ready and row.sha256 in keep):
                continue
            await self.store.blob_delete(row.upload_id)
            if row.ready:
                orphans_removed += 1
                bytes_freed += row.size
            else:
                temp_removed += 1
        return CleanReport(temp_removed, orphans_removed, bytes_freed)

    async def _fill(
        self, upload_id: str, sha256: str, size: int, chunks: AsyncIterable[bytes]
    ) -> None:
        """Store the stream as rows of exactly CHUNK_BYTES (the last one shorter)."""
        hasher = hashlib.sha256()
        pending = bytearray()
        received = 0
        seq = 0
        async for data in chunks:
            received += len(data)
            if received > size:
                raise exceptions.OversizedUpload(expected=size)
            await hash_chunk(hasher, data)
            pending += data
            while len(pending) >= CHUNK_BYTES:
                await self.store.blob_put_chunk(upload_id, seq, bytes(pending[:CHUNK_BYTES]),
                                                now_ms=models.now_ms())
                del pending[:CHUNK_BYTES]
                seq += 1
        if received < size:
            raise exceptions.TruncatedUpload(received=received, expected=size)
        if (actual := hasher.hexdigest()) != sha256:
            raise exceptions.ChecksumMismatch(actual=actual, expected=sha256)
        if pending:
            await self.store.blob_put_chunk(upload_id, seq, bytes(pending),
                                            now_ms=models.now_ms())

    async def _discard(self, upload_id: str) -> None:
        """Delete a failed upload; shielded so that a second cancellation cannot skip it."""
        try:
            await asyncio.shield(self.store.blob_delete(upload_id))
        except Exception:
            log.warning("payload upload left for the cleaner", upload_id=upload_id, exc_info=True)

