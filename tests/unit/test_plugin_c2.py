"""Proof sizes by seal proof type, and which broker failures the plugin waits out."""

from __future__ import annotations

import grpc
import pytest

from broker import exceptions as broker_exceptions
from plugin import retry
from worker import c2proof as c2


@pytest.mark.parametrize(("proof_type", "size"), [
    ("StackedDrg2KiBV1", 192), ("StackedDrg2KiBV1_1", 192), ("StackedDrg8MiBV1_1", 192),
    ("StackedDrg512MiBV1_1", 192), ("StackedDrg32GiBV1", 1920), ("StackedDrg32GiBV1_1", 1920),
    ("StackedDrg64GiBV1_1", 1920), ("StackedDrg32GiBV1_1_Feat_SyntheticPoRep", 1920),
    ("StackedDrg2KiBV1_1_Feat_SyntheticPoRep", 192),
])
def test_proof_sizes_follow_the_partitions_of_the_sector_size(proof_type: str, size: int) -> None:
    assert c2.expected_proof_bytes(proof_type) == size
    assert c2.proof_problem(bytes(size), proof_type) is None
    problem = c2.proof_problem(bytes(size - 192 or 384), proof_type)
    assert problem is not None and f"a {proof_type} proof has {size}" in problem


def test_every_interactive_proof_type_of_filecoin_proofs_is_known() -> None:
    assert len(c2.PARTITIONS) == 15


def test_an_empty_proof_is_never_a_proof() -> None:
    for proof_type in ("StackedDrg32GiBV1_1", "StackedDrg32GiBV1_2_Feat_NonInteractivePoRep",
                       "SomethingNew", None):
        assert c2.proof_problem(b"", proof_type) == "it is empty"


def test_a_non_interactive_porep_aggregate_has_any_size() -> None:
    assert c2.expected_proof_bytes("StackedDrg32GiBV1_2_Feat_NonInteractivePoRep") is None
    assert c2.proof_problem(b"x" * 12345, "StackedDrg64GiBV1_2_Feat_NonInteractivePoRep") is None


@pytest.mark.parametrize("proof_type", ["StackedDrg128GiBV2", None])
def test_an_unknown_proof_type_takes_any_multiple_of_a_partition(proof_type: str | None) -> None:
    assert c2.proof_problem(bytes(192 * 3), proof_type) is None
    problem = c2.proof_problem(bytes(200), proof_type)
    assert problem is not None and "not a multiple of the 192" in problem


# -- retry policy ---------------------------------------------------------------------------------


def _error(code: grpc.StatusCode | None) -> broker_exceptions.BrokerError:
    err = broker_exceptions.RemoteError(detail="x")
    if code is not None:
        err.code = code  # type: ignore[attr-defined]
    return err


@pytest.mark.parametrize(("code", "transient"), [
    (grpc.StatusCode.UNAVAILABLE, True), (grpc.StatusCode.DEADLINE_EXCEEDED, True),
    (grpc.StatusCode.INTERNAL, True), (None, True),
    (grpc.StatusCode.INVALID_ARGUMENT, False), (grpc.StatusCode.RESOURCE_EXHAUSTED, False),
    (grpc.StatusCode.NOT_FOUND, False), (grpc.StatusCode.FAILED_PRECONDITION, False),
])
def test_transient_failures_are_retried(code: grpc.StatusCode | None, transient: bool) -> None:
    assert retry.is_transient(_error(code)) is transient


def test_a_call_may_retry_more_codes() -> None:
    not_found = _error(grpc.StatusCode.NOT_FOUND)
    assert retry.is_transient(not_found, frozenset({grpc.StatusCode.NOT_FOUND}))
    assert retry.is_gone(not_found) and not retry.is_gone(_error(None))


def test_only_a_broker_gone_away_means_watching_again() -> None:
    assert retry.watch_outage(_error(grpc.StatusCode.UNAVAILABLE))
    assert not retry.watch_outage(_error(grpc.StatusCode.UNIMPLEMENTED))
    assert not retry.watch_outage(_error(grpc.StatusCode.INTERNAL))


def test_the_trail_says_what_was_tried() -> None:
    trail = retry.Trail()
    assert trail.summary() == "the broker never accepted the task"
    trail.failed("submit the task", ValueError("No broker at b:1"))
    trail.task_id, trail.state, trail.submits, trail.resets = "t1", "queued", 2, 1
    trail.polls = 3
    assert trail.summary() == (
        "task t1 was last seen queued; submitted twice; reset from error once; polled 3 times "
        "(the watch stream could not be held); 1 failed call to the broker, retried with backoff "
        "(the last: submit the task: No broker at b:1)"
    )
