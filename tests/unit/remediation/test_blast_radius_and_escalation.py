"""Blast-radius admission and escalation-policy stepping, as pure decisions."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from aftercare.events.remediation import EscalationContact
from aftercare.remediation.domain import blast_radius, escalation
from aftercare.remediation.domain.runbook import BlastRadius

T0 = datetime(2026, 11, 30, 3, 0, tzinfo=UTC)
LIMITS = BlastRadius(max_concurrent_per_system=2, max_runs_per_system_per_hour=3)


def test_runs_beyond_the_concurrency_limit_wait_and_take_a_freed_slot() -> None:
    slots = blast_radius.SystemSlots()
    for run_id in ("a", "b"):
        decision = blast_radius.admission(slots, run_id, LIMITS, "web", T0)
        assert isinstance(decision, blast_radius.Admitted)
        slots = decision.slots
    assert isinstance(blast_radius.admission(slots, "c", LIMITS, "web", T0), blast_radius.Hold)
    assert isinstance(blast_radius.admission(slots, "a", LIMITS, "web", T0), blast_radius.Admitted)  # idempotent
    freed = blast_radius.release(slots, "a")
    assert freed is not None and freed.holders == ["b"]
    assert blast_radius.release(freed, "a") is None
    assert isinstance(blast_radius.admission(freed, "c", LIMITS, "web", T0), blast_radius.Admitted)


def test_the_hourly_limit_refuses_and_forgets_runs_older_than_an_hour() -> None:
    slots = blast_radius.SystemSlots(starts=[(T0 - timedelta(minutes=m)).timestamp() for m in (1, 2, 3)])
    refused = blast_radius.admission(slots, "d", LIMITS, "web", T0)
    assert isinstance(refused, blast_radius.Refuse) and "3 runs already touched system web" in refused.reason
    later = blast_radius.admission(slots, "d", LIMITS, "web", T0 + timedelta(minutes=58, seconds=30))
    assert isinstance(later, blast_radius.Admitted) and len(later.slots.starts) == 2


POLICY = escalation.EscalationPolicy(
    levels=[
        escalation.EscalationLevel(name="primary", contacts=[EscalationContact(name="Ann")], ack_timeout_seconds=60),
        escalation.EscalationLevel(name="secondary", contacts=[EscalationContact(name="Bob")], ack_timeout_seconds=120),
    ]
)


def started() -> escalation.Escalation:
    fresh = escalation.Escalation(
        escalation_id="e-1", key="i-1:run", incident_id="i-1", tenant_id="acme", reason="r", policy=POLICY
    )
    return escalation.page_level(fresh, 1, T0)[0]


def test_an_unacknowledged_level_pages_the_next_then_runs_out() -> None:
    first = started()
    assert first.level == 1 and first.next_at == T0 + timedelta(seconds=60)
    assert escalation.on_deadline(first, T0 + timedelta(seconds=59)) == escalation.NotYet(first.next_at)
    second = escalation.on_deadline(first, T0 + timedelta(seconds=60))
    assert isinstance(second, escalation.NextLevel)
    assert second.page.level == 2 and second.page.contacts[0].name == "Bob"
    done = escalation.on_deadline(second.escalation, T0 + timedelta(seconds=180))
    assert isinstance(done, escalation.Exhausted) and done.escalation.status == "exhausted"


def test_acknowledging_stops_the_escalation_once() -> None:
    acked = escalation.acknowledge(started(), "ann", "link", T0)
    assert acked is not None and acked.next_at is None and acked.acknowledged_via == "link"
    assert escalation.acknowledge(acked, "bob", "api", T0) is None
    assert escalation.on_deadline(acked, T0 + timedelta(hours=1)) == escalation.NotYet(None)
