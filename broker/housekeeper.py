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
    meanwhile loses its task one lease later. Not for the tasks of workers whose broker saw
    their stream end: they are gone, and another broker sharing the database may be about to
    take their tasks back (a broker restarting again and again would keep them otherwise)."""
    gone = {w.worker_id for w in await store.list_workers() if w.disconnected_at}
    lease_ms = int(lease_s * 1000)
    extended = await store.extend_leases(models.now_ms() + lease_ms, lease_ms, gone)
    if extended:
        log.info("leases of running tasks extended for their workers to renew them",
                 tasks=extended, lease_s=lease_s)
    return extended


async def run_forever(
    store: Store, timeouts_s: Mapping[str, float], on_change: Callable[[str], None],
    interval_s: float, lease_s: float,
    on_store: Callable[[bool], Awaitable[None]] | None = None,
) -> None:
    """Sweep every interval; a failed sweep is logged (once per outage) and the next one runs
    as usual. After the database was unreachable, leases get a grace first: their workers could
    not renew them meanwhile. `on_store` hears when the database stops answering (False) and
    answers again (True)."""
    outage = Outage("housekeeper sweep")
    unreachable = False  #: the database did not answer since the last good sweep
    while True:
        try:
            if unreachable:
                await grant_grace(store, lease_s)
            await sweep(store, timeouts_s, on_change)
            if unreachable and on_store is not None:
                await on_store(True)
            unreachable = False
            outage.succeeded()
        except Exception as exc:
            outage.failed(exc)
            if isinstance(exc, exceptions.StoreUnavailable) and not unreachable:
                unreachable = True
                if on_store is not None:
                    await on_store(False)
        await asyncio.sleep(interval_s)


async def watch_payloads(payloads: PayloadStore, on_store: Callable[[bool], Awaitable[None]],
                         interval_s: float, timeout_s: float) -> None:
    """Check the payload store every interval, in a loop of its own: a hard NFS mount whose
    server is gone hangs a check for as long as it likes, and the sweeps must go on meanwhile.
    A check that takes over `timeout_s` counts as a failure, and is waited for before the next
    one starts (one thread stuck at most). `on_store` hears each change (False: down)."""
    outage = Outage("payload store check")
    works = True
    while True:
        check = asyncio.ensure_future(payloads.check())
        done, _ = await asyncio.wait({check}, timeout=timeout_s)
        error = check.exception() if done else exceptions.PayloadStoreUnavailable(
            path=str(getattr(payloads, "root", "")),
            detail=f"no answer in {timeout_s:g} s (a hard NFS mount whose server is gone?)")
        if error is not None and not isinstance(error, exceptions.PayloadStoreUnavailable):
            raise error  # a bug: the loop's end stops the broker, saying so
        if error is None:
            outage.succeeded()
        else:
            outage.failed(error)
        if works != (error is None):
            works = error is None
            await on_store(works)
        if not done:  # one stuck check at a time: its end starts the next round
            await asyncio.wait({check})
            check.exception()  # (its outcome is the next round's to find)
        await asyncio.sleep(interval_s)


#: What each part's failure means, for the refusals of a broker that cannot serve.
SERVING_PARTS = {"database": "its database does not answer",
                 "payloads": "its payload folder cannot be used"}


class Serving:
    """Whether the broker can serve, from what its loops find (the sweeps: the database; the
    payload watch: the folder); `on_change` hears whether it can after each change of a part."""

    def __init__(self, on_change: Callable[[bool], Awaitable[None]]) -> None:
        self.on_change = on_change
        self.down: set[str] = set()

    def why_not(self) -> str:
        """Why the broker cannot serve now; "" while it can."""
        return " and ".join(SERVING_PARTS.get(name, name) for name in sorted(self.down))

    def own_database_down(self) -> bool:
        """Whether this broker's database does not answer, which other brokers sharing it
        may not suffer (their link to it may be whole). Not the payload folder: the brokers
        share it, and while it is gone for all, their housekeepers go on; a worker refused by
        every broker would have its task taken back."""
        return "database" in self.down

    def part(self, name: str) -> Callable[[bool], Awaitable[None]]:
        async def report(works: bool) -> None:
            if works == (name not in self.down):
                return  # no change
            if works:
                self.down.discard(name)
            else:
                self.down.add(name)
            await self.on_change(not self.down)

        return report
