from __future__ import annotations

import pytest

from worker.backoff import Backoff, FailureStreak, Outage


def test_delay_doubles_then_stays_at_the_cap() -> None:
    backoff = Backoff(initial_s=0.5, max_s=10.0, factor=2.0, jitter=0.0)
    assert [backoff.delay_s(n) for n in range(7)] == [0.5, 1.0, 2.0, 4.0, 8.0, 10.0, 10.0]
    assert backoff.delay_s(10_000) == 10.0


def test_jitter_spreads_each_delay_around_its_base() -> None:
    backoff = Backoff(initial_s=1.0, max_s=60.0, jitter=0.2)
    assert backoff.delay_s(2, draw=0.0) == pytest.approx(3.2)
    assert backoff.delay_s(2, draw=0.5) == pytest.approx(4.0)
    assert backoff.delay_s(2, draw=0.999999) == pytest.approx(4.8, abs=1e-5)
    assert all(3.2 <= backoff.delay_s(2) <= 4.8 for _ in range(100))


def test_an_outage_is_reported_once_and_its_length_at_the_end() -> None:
    outage = Outage()
    assert outage.recovered(now_s=1.0) is None  # healthy: nothing to say
    assert outage.failed(now_s=10.0) is True  # the first failure is the one to log
    assert outage.attempt == 0
    assert [outage.failed(now_s=t) for t in (11.0, 13.0, 17.0)] == [False, False, False]
    assert outage.attempt == 3
    assert outage.recovered(now_s=25.0) == 15.0
    assert outage.attempt == 0
    assert outage.failed(now_s=30.0) is True  # a new outage is logged again


def test_a_failure_streak_pauses_at_its_limit_doubling_until_a_success() -> None:
    streak = FailureStreak(limit=3, pause=Backoff(initial_s=30, max_s=600, jitter=0.1))
    assert [streak.failed(draw=0.5) for _ in range(2)] == [0.0, 0.0]  # below the limit
    assert [streak.failed(draw=0.5) for _ in range(6)] == [30, 60, 120, 240, 480, 600]
    streak.succeeded()
    assert streak.failed(draw=0.5) == 0.0  # a new streak starts from nothing


def test_a_failure_streak_of_limit_zero_never_pauses() -> None:
    streak = FailureStreak(limit=0)
    assert all(streak.failed() == 0.0 for _ in range(100))
