"""The payload cleaner: drops old finished tasks and the payloads no task needs any more.

A sweep first deletes finished and error tasks past the retention period, and workers not seen
for as long (a re-created container registers under a new id: the old one would stay listed
as offline for ever), then removes temp
leftovers of interrupted uploads and complete blobs that no task references, both only when
older than the orphan age (which protects a submit whose task row is not written yet).
"""

from __future__ import annotations

import asyncio
import dataclasses

import structlog

from broker import models
from broker.outages import Outage
from broker.payloads.base import CleanReport, PayloadStore
from broker.store.base import Store

log = structlog.get_logger(__name__)

#: Workers are forgotten after the retention period, and never sooner than this.
WORKER_MIN_AGE_MS = 24 * 3600 * 1000
#: Tasks deleted per transaction; a sweep repeats until fewer come back.
_DELETE_BATCH = 1000


@dataclasses.dataclass(frozen=True)
class SweepReport:
    tasks_deleted: int
    payloads: CleanReport
    workers_forgotten: int = 0

    @property
    def removed_anything(self) -> bool:
        p = self.payloads
        return bool(self.tasks_deleted or self.workers_forgotten or p.temp_removed
                    or p.orphans_removed)


async def sweep(
    store: Store,
    payloads: PayloadStore,
    *,
    orphan_age_s: float,
    retention_s: float,
    now_ms: int | None = None,
) -> SweepReport:
    """One pass of the cleaner."""
    now = models.now_ms() if now_ms is None else now_ms
    cutoff_ms = now - int(retention_s * 1000)
    tasks_deleted = 0
    while (n := await store.delete_terminal_before(cutoff_ms, limit=_DELETE_BATCH)) > 0:
        tasks_deleted += n
        if n < _DELETE_BATCH:
            break
    # At least a day: a short retention must not forget a worker between two heartbeats.
    forgotten = await store.forget_workers_seen_before(min(cutoff_ms, now - WORKER_MIN_AGE_MS))
    keep = await store.referenced_blobs()
    report = await payloads.clean(keep=keep, older_than_ms=int(orphan_age_s * 1000), now_ms=now)
    return SweepReport(tasks_deleted, report, forgotten)


async def run_forever(
    store: Store,
    payloads: PayloadStore,
    *,
    orphan_age_s: float,
    retention_s: float,
    interval_s: float,
) -> None:
    """Sweep now and every interval_s; a failed sweep is logged (once per outage) and the next
    one runs."""
    outage = Outage("cleaner sweep")
    while True:
        try:
            report = await sweep(
                store, payloads, orphan_age_s=orphan_age_s, retention_s=retention_s
            )
        except Exception as exc:
            outage.failed(exc)
        else:
            outage.succeeded()
            if report.removed_anything:
                log.info(
                    "cleaner swept",
                    tasks_deleted=report.tasks_deleted,
                    workers_forgotten=report.workers_forgotten,
                    temp_removed=report.payloads.temp_removed,
                    orphans_removed=report.payloads.orphans_removed,
                    bytes_freed=report.payloads.bytes_freed,
                )
        await asyncio.sleep(interval_s)


async def release_payload(store: Store, payloads: PayloadStore, sha256: str) -> bool:
    """Delete a payload at once unless a task that is not finished still needs it.

    Called when a task finishes. Returns whether the payload was deleted. A submit racing with
    this is covered by the submit itself, which checks the payload after writing its task.
    """
    if await store.payload_needed(sha256):
        return False
    await payloads.delete(sha256)
    return True
