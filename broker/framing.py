"""The framing the streaming handlers share: a first message that opens the stream (header or
register), then chunks of at most CHUNK_BYTES; and blobs sent back as BlobChunk messages."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

from broker import exceptions
from broker.payloads import CHUNK_BYTES
from protos.gpuproxy.v1 import tasks_pb2


async def opening(requests: AsyncIterator[Any], kind: str) -> Any:
    """The `kind` member of the stream's first message (its `msg` oneof); InvalidArgument if the
    stream is empty or opens with something else."""
    first = await anext(aiter(requests), None)
    if first is None or first.WhichOneof("msg") != kind:
        raise exceptions.InvalidArgument(detail=f"the first message must be the {kind}")
    return getattr(first, kind)


async def chunks(requests: AsyncIterator[Any]) -> AsyncIterator[bytes]:
    """The data chunks that follow the opening message."""
    async for req in requests:
        if req.WhichOneof("msg") != "chunk":
            raise exceptions.InvalidArgument(detail="only chunks may follow the header")
        if len(req.chunk) > CHUNK_BYTES:
            raise exceptions.InvalidArgument(detail=f"chunks must be at most {CHUNK_BYTES} bytes")
        yield req.chunk


async def drain(requests: AsyncIterator[Any], size: int, timeout_s: float = 60.0) -> None:
    """Read and drop the rest of an upload the broker refused half-way (its payload folder
    failed, say), up to the size its header announced. A client whose write meets a call
    already ended hears only grpc's "Internal error from Core"; one that finishes writing
    reads the broker's own reason."""
    left = size
    with contextlib.suppress(Exception):
        async with asyncio.timeout(timeout_s):
            async for req in requests:
                left -= len(getattr(req, "chunk", b""))
                if left < 0:
                    return


async def blob_chunks(
    size: int, sha256: str, chunks: AsyncIterator[bytes]
) -> AsyncIterator[tasks_pb2.BlobChunk]:
    """Size and digest ride on the first message; an empty blob still sends one."""
    first = True
    async for data in chunks:
        if first:
            yield tasks_pb2.BlobChunk(size=size, sha256=sha256, data=data)
            first = False
        else:
            yield tasks_pb2.BlobChunk(data=data)
    if first:
        yield tasks_pb2.BlobChunk(size=size, sha256=sha256)
