"""Lease and schedule decisions as pure code: who takes a lease when, when a job is due next,
how long a failing due item waits (``now`` is always passed in)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from aftercare.events.schedule import Lease, LeaseMove, decide_lease, next_run_after, retry_delay

T0 = datetime(2026, 11, 30, 12, 0, 0, tzinfo=UTC)


def lease(holder: str, expires_in_s: float) -> Lease:
    return Lease(
        name="every:chores",
        holder=holder,
        expires_at=T0 + timedelta(seconds=expires_in_s),
        acquired_at=T0 - timedelta(seconds=60),
        term=3,
    )


def test_a_lease_nobody_ever_took_is_created() -> None:
    assert decide_lease(None, "me", T0) is LeaseMove.CREATE


def test_the_holder_renews_its_own_lease_even_just_after_expiry() -> None:
    assert decide_lease(lease("me", 10), "me", T0) is LeaseMove.RENEW
    # Expired but nobody took it: renewing is as good as taking, and keeps the term.
    assert decide_lease(lease("me", -1), "me", T0) is LeaseMove.RENEW


def test_another_holders_valid_lease_is_waited_for() -> None:
    assert decide_lease(lease("other", 0.001), "me", T0) is LeaseMove.WAIT


def test_another_holders_expired_lease_is_taken_over_from_its_expiry_on() -> None:
    assert decide_lease(lease("other", 0), "me", T0) is LeaseMove.TAKE
    assert decide_lease(lease("other", -30), "me", T0) is LeaseMove.TAKE


def test_a_job_stays_on_its_grid_when_it_starts_late() -> None:
    interval = timedelta(minutes=10)
    started = T0 + timedelta(seconds=3)  # noticed 3 s late
    assert next_run_after(T0, interval, started) == T0 + interval


def test_runs_missed_while_no_instance_was_up_are_not_caught_up_one_by_one() -> None:
    interval = timedelta(minutes=10)
    started = T0 + timedelta(minutes=35)  # 3 runs were missed
    assert next_run_after(T0, interval, started) == T0 + timedelta(minutes=40)


def test_a_start_exactly_on_the_next_grid_point_moves_one_further() -> None:
    interval = timedelta(minutes=10)
    assert next_run_after(T0, interval, T0 + interval) == T0 + 2 * interval


def test_failing_due_items_back_off_exponentially_up_to_a_ceiling() -> None:
    base, ceiling = timedelta(seconds=1), timedelta(minutes=5)
    delays = [retry_delay(attempt, base, ceiling) for attempt in range(1, 12)]
    assert delays[:4] == [timedelta(seconds=s) for s in (1, 2, 4, 8)]
    assert delays[-1] == ceiling
    assert delays == sorted(delays)
    assert retry_delay(10_000, base, ceiling) == ceiling  # no overflow after days of failures
