"""Payload (and result) storage, content-addressed by sha256: a shared folder or the database."""

from __future__ import annotations

import pathlib

from broker import exceptions
from broker.payloads.base import CHUNK_BYTES, CleanReport, PayloadStore
from broker.payloads.db import DbPayloadStore
from broker.payloads.fs import FsPayloadStore
from broker.store.base import Store


def open_payload_store(resource_type: str, fs_path: str | None, store: Store) -> PayloadStore:
    """The payload store for --resource-type: "fs" (a folder, fs_path) or "db" (the store).

    The caller awaits `payloads.open()` (checks the folder is writable) before use.
    """
    if resource_type == "fs":
        if not fs_path:
            raise exceptions.ConfigError(
                field="fs-resource-path",
                detail="resource-type fs needs the payload folder shared with the workers; "
                "set --fs-resource-path, or use resource-type db",
            )
        return FsPayloadStore(pathlib.Path(fs_path))
    if resource_type == "db":
        return DbPayloadStore(store)
    raise exceptions.ConfigError(
        field="resource-type", detail=f"{resource_type!r} is neither fs nor db"
    )


__all__ = [
    "CHUNK_BYTES",
    "CleanReport",
    "DbPayloadStore",
    "FsPayloadStore",
    "PayloadStore",
    "open_payload_store",
]
