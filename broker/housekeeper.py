"""Requeues tasks whose worker is gone: an expired lease, or a type's processing timeout.

It runs inside every broker; the store's requeue is safe when several brokers run it at once,
so a task is requeued exactly once whichever broker sees it first.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping

import structlog

from broker import exceptions, metrics, models
from broker.outages import Outage
from broker.payloads import PayloadStore
from broker.store import Store

log = structlog.get_logger(__name__)


async def sweep(
    store: Store, timeouts_s: Mapping[str, float], on_change: Callable[[str], None]
) -> int:
    timeouts_ms = {t: int(s * 1000) for t, s in timeouts_s.items()}
    requeued = await store.requeue_expired(models.now_ms(), timeouts_ms)
    for task in requeued:
        metrics.REQUEUED.labels(task.task_type).inc()
        if task.state == models.TaskState.ERROR:
            metrics.ERRORED.labels(task.task_type, "taken_back").inc()
        log.warning("task taken back from its worker", task_id=task.id,
                    state=task.state.name.lower(), attempts=task.attempts,
                    max_attempts=task.max_attempts, error=task.error_message or None)
        on_change(task.id)
    return len(requeued)


async def grant_grace(store: Store, lease_s: float) -> int:
    """One more lease for every running task: its worker could not renew it while the broker
    or its database was away, and may be heartbeating all along. A worker that really died
    meanwhile loses its task one lease later."""
    extended = await store.extend_leases(models.now_ms() + int(lease_s * 1000))
    if extended:
        log.info("leases of running tasks extended for their workers to renew them",
                 tasks=extended, lease_s=lease_s)
    return extended


async def run_forever(
    store: Store, timeouts_s: Mapping[str, float], on_change: Callable[[str], None],
    interval_s: float, lease_s: float,
    on_store: Callable[[bool], Awaitable[None]] | None = None,
    payloads: PayloadStore | None = None,
) -> None:
    """Sweep every interval; a failed sweep is logged (once per outage) and the next one runs
    as usual. After the database was unreachable, leases get a grace first: their workers could
    not renew them meanwhile. `payloads` is checked every round too. `on_store` hears when the
    database or the payload store stops serving (False) and when both serve again (True)."""
    outage = Outage("housekeeper sweep")
    folder = Outage("payload store check")
    unreachable = False  #: the database did not answer since the last good sweep
    payloads_down = False
    serving = True
    while True:
        try:
            if unreachable:
                await grant_grace(store, lease_s)
            await sweep(store, timeouts_s, on_change)
            unreachable = False
            outage.succeeded()
        except Exception as exc:
            outage.failed(exc)
            unreachable = unreachable or isinstance(exc, exceptions.StoreUnavailable)
        if payloads is not None:
            try:
                await payloads.check()
                payloads_down = False
                folder.succeeded()
            except exceptions.PayloadStoreUnavailable as exc:
                folder.failed(exc)
                payloads_down = True
        if serving == (unreachable or payloads_down) and on_store is not None:
            serving = not serving
            await on_store(serving)
        await asyncio.sleep(interval_s)
