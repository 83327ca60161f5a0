"""Prometheus metrics of the broker, served on --metrics-url when it is set."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import prometheus_client as prom
import structlog

from broker.models import TaskCount, TaskState, now_ms
from broker.store import Store

log = structlog.get_logger(__name__)

REGISTRY = prom.CollectorRegistry()

SUBMITTED = prom.Counter(
    "gpuproxy_tasks_submitted_total", "Tasks created (a resubmitted task counts once)",
    ["task_type"], registry=REGISTRY,
)
PAYLOAD_BYTES = prom.Counter(
    "gpuproxy_payload_bytes_received_total", "Payload bytes uploaded", registry=REGISTRY,
)
ASSIGNED = prom.Counter(
    "gpuproxy_tasks_assigned_total", "Tasks pushed to a worker", ["task_type"], registry=REGISTRY,
)
DISPATCH_SECONDS = prom.Histogram(
    "gpuproxy_dispatch_seconds", "From submit (or requeue) to the push to a worker",
    buckets=(0.005, 0.01, 0.05, 0.1, 0.5, 1, 5, 30, 120, 600, 3600), registry=REGISTRY,
)
FINISHED = prom.Counter(
    "gpuproxy_tasks_finished_total", "Tasks finished with a result", ["task_type"],
    registry=REGISTRY,
)
FAILED_ATTEMPTS = prom.Counter(
    "gpuproxy_attempts_failed_total", "Attempts a worker reported as failed",
    ["task_type", "retryable"], registry=REGISTRY,
)
REQUEUED = prom.Counter(
    "gpuproxy_tasks_taken_back_total",
    "Running tasks taken back by the housekeeper (lease expired or timeout)", ["task_type"],
    registry=REGISTRY,
)
REFUSED = prom.Counter(
    "gpuproxy_calls_refused_total", "Calls refused for their access token: missing, or wrong "
    "(another than the broker's --token-file)", ["token"], registry=REGISTRY,
)
PAYLOADS_DAMAGED = prom.Counter(
    "gpuproxy_payloads_damaged_total", "Reads of a stored payload refused because the stored "
    "copy no longer has the size or sha256 it was submitted with", registry=REGISTRY,
)
WORKERS = prom.Gauge(
    "gpuproxy_workers_connected", "Work streams open on this broker", registry=REGISTRY,
)
ERRORED = prom.Counter(
    "gpuproxy_tasks_errored_total", "Tasks that went to error, by cause: failed (for good, or "
    "its last attempt), taken_back (its last attempt lost its worker), cancelled",
    ["task_type", "cause"], registry=REGISTRY,
)
# Read from the database (every broker sharing it reports the same numbers), so that a queue
# that grows or tasks that pile up in error can be alerted on.
TASKS = prom.Gauge(
    "gpuproxy_tasks", "Tasks in the database by type and state", ["task_type", "state"],
    registry=REGISTRY,
)
OLDEST_WAITING = prom.Gauge(
    "gpuproxy_oldest_waiting_task_seconds",
    "How long the longest-waiting task (init) has been ready to run, by type (since its submit "
    "or, for a retry, its backoff's end); 0 when none waits",
    ["task_type"], registry=REGISTRY,
)
QUEUE_READ_AT = prom.Gauge(
    "gpuproxy_tasks_read_timestamp_seconds",
    "When gpuproxy_tasks was last read from the database (it stays put while it is down)",
    registry=REGISTRY,
)
_seen: set[tuple[str, str]] = set()  #: label sets shown so far: gone ones read 0, not stale
_types_shown: set[str] = set()
#: Shown from the start: the task types every pool runs.
COMMON_TYPES = ("c2", "groth16")


def show_type(task_type: str) -> None:
    """Show a task type's counters at 0 before their first event: Prometheus' increase() counts
    nothing for a series that first appears at 1, so an alert on the first failure, or the
    first refused call, would never fire."""
    if task_type in _types_shown:
        return
    _types_shown.add(task_type)
    for counter in (SUBMITTED, ASSIGNED, FINISHED, REQUEUED):
        counter.labels(task_type)
    for retryable in ("true", "false"):
        FAILED_ATTEMPTS.labels(task_type, retryable)
    for cause in ("failed", "taken_back", "cancelled"):
        ERRORED.labels(task_type, cause)


for _token in ("missing", "wrong"):
    REFUSED.labels(token=_token)
for _task_type in COMMON_TYPES:
    show_type(_task_type)


def record_counts(counts: Sequence[TaskCount], at_ms: int) -> None:
    """Set the queue gauges from one reading of the database."""
    now: dict[tuple[str, str], int] = {}
    oldest: dict[str, int] = {}
    for c in counts:
        now[(c.task_type, c.state.name.lower())] = c.count
        if c.state == TaskState.INIT:
            oldest[c.task_type] = c.oldest_since
    _seen.update(now)
    for task_type, _ in now:  # a type another broker took in: its counters from 0
        show_type(task_type)
    for labels in _seen:
        TASKS.labels(*labels).set(now.get(labels, 0))
    for task_type in {t for t, _ in _seen}:
        since = oldest.get(task_type)
        OLDEST_WAITING.labels(task_type).set(0 if since is None else max(at_ms - since, 0) / 1000)
    QUEUE_READ_AT.set(at_ms / 1000)


async def refresh_forever(store: Store, interval_s: float) -> None:
    """Read the task counts every interval. The database being down is the housekeeper's to
    log; the gauges keep their last values and the timestamp says how old they are."""
    while True:
        try:
            record_counts(await store.task_counts(), now_ms())
        except Exception as exc:
            log.debug("task counts not read", error=str(exc))
        await asyncio.sleep(interval_s)


def serve(listen: str) -> None:
    """Start the HTTP endpoint (a daemon thread) at HOST:PORT."""
    host, _, port = listen.rpartition(":")
    prom.start_http_server(int(port), addr=host or "0.0.0.0", registry=REGISTRY)
