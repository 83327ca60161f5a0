"""Prometheus metrics of the broker, served on --metrics-url when it is set."""

from __future__ import annotations

import prometheus_client as prom

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
WORKERS = prom.Gauge(
    "gpuproxy_workers_connected", "Work streams open on this broker", registry=REGISTRY,
)


def serve(listen: str) -> None:
    """Start the HTTP endpoint (a daemon thread) at HOST:PORT."""
    host, _, port = listen.rpartition(":")
    prom.start_http_server(int(port), addr=host or "0.0.0.0", registry=REGISTRY)
