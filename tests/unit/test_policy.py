"""Retry and scheduling decisions, without a database."""

from __future__ import annotations

from typing import Any

import pytest

from broker import policy
from broker.models import Attempt, Task, TaskState


def attempt(number: int, outcome: str, reason: str = "", worker_id: str = "w1") -> Attempt:
    return Attempt(
        task_id="t", number=number, worker_id=worker_id, started_at=number, ended_at=number,
        outcome=outcome, reason=reason,
    )


def task(**overrides: Any) -> Task:
    fields: dict[str, Any] = {
        "id": "t", "task_type": "c2", "miner": "f01", "comment": "", "priority": 0,
        "state": TaskState.RUNNING, "payload_size": 1, "payload_sha256": "p", "worker_id": "w1",
        "attempts": 1, "max_attempts": 3, "error_message": "", "created_at": 0,
        "started_at": 1000, "finished_at": None, "result_size": 0, "result_sha256": "",
        "version": 2, "fence": 1, "lease_expires_at": 5000, "not_before": 0,
        "progress_phase": "", "progress_fraction": 0.0,
    }
    fields.update(overrides)
    return Task(**fields)


def test_exhausted_message_lists_every_spent_attempt_in_order() -> None:
    history = [
        attempt(1, "requeued", "lease expired", "w1"),
        attempt(2, "failed", "CUDA out of memory", "w2"),
        attempt(3, "failed", "bad proof", "w3"),
    ]

    assert policy.exhausted_message(history) == (
        "failed after 3 attempts: #1 on worker w1: lease expired; "
        "#2 on worker w2: CUDA out of memory; #3 on worker w3: bad proof"
    )


def test_exhausted_message_counts_only_since_the_last_reset_and_skips_releases() -> None:
    history = [
        attempt(1, "failed", "old"),
        attempt(2, "reset", "failed after 1 attempt: #1 on worker w1: old", ""),
        attempt(3, "released", "worker shutting down"),
        attempt(4, "failed", "new", "w4"),
    ]

    assert policy.exhausted_message(history) == "failed after 1 attempt: #1 on worker w4: new"


@pytest.mark.parametrize(
    ("retryable", "attempts", "max_attempts", "retry"),
    [(True, 1, 3, True), (True, 2, 3, True), (True, 3, 3, False), (False, 1, 3, False)],
)
def test_should_retry(retryable: bool, attempts: int, max_attempts: int, retry: bool) -> None:
    assert policy.should_retry(retryable, attempts, max_attempts) is retry


LEASE_EXPIRED = "lease expired: worker w1 stopped heartbeating"


def test_expiry_reason_prefers_the_processing_timeout_to_the_lease() -> None:
    t = task(started_at=1000, lease_expires_at=5000)

    assert policy.expiry_reason(t, 4999, {"c2": 10_000}) == ""
    assert policy.expiry_reason(t, 5000, {"c2": 10_000}) == LEASE_EXPIRED
    assert policy.expiry_reason(t, 11_000, {"c2": 10_000}) == (
        "ran longer than the c2 processing timeout of 10 s"
    )
    assert policy.expiry_reason(t, 11_000, {"other": 1}) == LEASE_EXPIRED


def test_claim_order_is_priority_then_age_then_id() -> None:
    tasks = [
        task(id="b", priority=0, created_at=1),
        task(id="a", priority=0, created_at=1),
        task(id="c", priority=5, created_at=9),
        task(id="d", priority=0, created_at=0),
    ]

    assert [t.id for t in sorted(tasks, key=policy.claim_order)] == ["c", "d", "a", "b"]


def test_clipped_keeps_short_text_and_cuts_long_text_to_the_limit() -> None:
    assert policy.clipped("GPU fell off the bus") == "GPU fell off the bus"
    long = "E" * 10_000
    cut = policy.clipped(long, 100)
    assert len(cut) <= 100 and cut.startswith("EEE")
    kept = cut.count("E")
    assert cut == "E" * kept + f" [... {10_000 - kept} more characters cut]"
    assert policy.clipped(long, 10) == "E" * 10  # no room for the note
