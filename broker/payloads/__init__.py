"""Payload (and result) storage, content-addressed by sha256: a shared folder or the database."""

from __future__ import annotations

from broker.payloads.base import CHUNK_BYTES, CleanReport, PayloadStore

__all__ = ["CHUNK_BYTES", "CleanReport", "PayloadStore"]
