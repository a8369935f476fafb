"""Remediation's events, triage's grouping and a person's reclassification on intake's incidents.

The use cases on the in-memory bus and store (aftercare.events.testing), with the real handler
table and envelope parsing; redeliveries go both through the bus's processed-event log and past
it (a second bus in the same group: the incident's own applied-events guard must stop them).
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from aftercare.events.envelope import Envelope, Event, envelope_for
from aftercare.events.incidents import Channel
from aftercare.events.incidents import IncidentStatus as Status
from aftercare.events.remediation import (
    ApprovalGranted,
    ApprovalRejected,
    ApprovalRequested,
    EscalationAcknowledged,
    IncidentEscalated,
    RemediationNoteAdded,
    RemediationStarted,
    RemediationStepCompleted,
)
from aftercare.events.tenants import Priority
from aftercare.events.testing import MemoryBus, MemoryDatabase
from aftercare.events.triage import IncidentGrouped, IncidentTriaged
from aftercare.intake.adapters.incident_store import IncidentStore
from aftercare.intake.domain import classification
from aftercare.intake.domain.incident import IncidentReport
from aftercare.intake.domain.public_timeline import public_timeline
from aftercare.intake.entrypoints import consumer
from aftercare.intake.service_layer.reclassify_incident import reclassify
from aftercare.intake.service_layer.report_incident import report

RUN = "run-1"


@pytest.fixture
def bus() -> MemoryBus:
    return MemoryBus(group_id="intake")


@pytest.fixture
def store(bus: MemoryBus) -> IncidentStore:
    incidents = IncidentStore(MemoryDatabase(), bus)  # type: ignore[arg-type]
    bus.subscribe(consumer.handlers(incidents))
    return incidents


async def open_incident(store: IncidentStore, title: str = "Billing DB down") -> str:
    outcome = await report(store, "acme", IncidentReport(title=title, channel=Channel.API, system="billing-db"))
    return outcome.incident.incident_id


def about(incident_id: str, data: Event, source: str = "remediation", tenant: str = "acme") -> Envelope[Any]:
    return envelope_for(data, source=source, tenant_id=tenant, incident_id=incident_id)


async def deliver_twice(bus: MemoryBus, store: IncidentStore, envelope: Envelope[Any]) -> None:
    """Once, again (the processed log stops it), and past the processed log (the incident's guard must)."""
    await bus.deliver(envelope)
    await bus.deliver(envelope)
    await MemoryBus(consumer.handlers(store), group_id="intake").deliver(envelope)


async def test_every_remediation_event_goes_on_the_timeline_once_with_what_happened(
    store: IncidentStore, bus: MemoryBus
) -> None:
    incident_id = await open_incident(store)
    expires = datetime(2026, 12, 1, 10, 0, tzinfo=UTC)
    events: list[Event] = [
        RemediationStarted(incident_id=incident_id, run_id=RUN, runbook="restart-billing", steps=["note", "restart"]),
        RemediationNoteAdded(incident_id=incident_id, run_id=RUN, note="Restarting billing-db, expect 30 s downtime"),
        ApprovalRequested(
            incident_id=incident_id,
            run_id=RUN,
            approval_id="ap-1",
            step="restart",
            reason="restart is risky",
            expires_at=expires,
            approvers=["ann@support.example"],
        ),
        ApprovalRejected(incident_id=incident_id, run_id=RUN, approval_id="ap-0", by="bob@support.example", reason="x"),
        ApprovalGranted(incident_id=incident_id, run_id=RUN, approval_id="ap-1", by="ann@support.example", note="go"),
        RemediationStepCompleted(
            incident_id=incident_id,
            run_id=RUN,
            step_index=1,
            step="restart",
            outcome="succeeded",
            output="HTTP 200 {'restarted': true}",
            action="http_admin",
            attempts=2,
        ),
        RemediationStepCompleted(
            incident_id=incident_id,
            run_id=RUN,
            step_index=0,
            step="probe",
            outcome="failed",
            output="x" * 1000,
            phase="verification",
        ),
    ]
    for data in events:
        await deliver_twice(bus, store, about(incident_id, data))

    incident = await store.get("acme", incident_id)
    entries = {entry.kind: entry for entry in incident.timeline}
    assert [entry.kind for entry in incident.timeline] == [
        "reported",
        "remediating",
        "remediation-note",
        "approval-requested",
        "approval-rejected",
        "approval-granted",
        "remediation-step",
        "remediation-step",
    ]
    assert entries["remediation-note"].summary == "Restarting billing-db, expect 30 s downtime"
    assert entries["approval-requested"].summary == (
        "Waiting for approval from ann@support.example to run 'restart' until 2026-12-01T10:00:00+00:00: "
        "restart is risky"
    )
    assert entries["approval-granted"].summary == "Approved by ann@support.example: go"
    assert entries["approval-granted"].by == "ann@support.example"
    assert entries["approval-rejected"].summary == "Rejected by bob@support.example: x"
    step, verification = incident.timeline[-2:]
    assert step.summary == (
        "Runbook step 2 'restart' (http_admin) succeeded after 2 attempts: HTTP 200 {'restarted': true}"
    )
    assert verification.summary.startswith("Runbook verification step 1 'probe' failed: xxx")
    assert len(verification.summary) < 400
    assert incident.status == Status.REMEDIATING
    # The customer sees that we are fixing it, not how.
    assert [entry.label for entry in public_timeline(incident.timeline)] == [
        "We received the report",
        "We started fixing it",
    ]


async def escalate(bus: MemoryBus, incident_id: str) -> None:
    await bus.deliver(
        about(incident_id, IncidentEscalated(incident_id=incident_id, reason="fix did not work", escalation_id="e1"))
    )


def acknowledged_page(incident_id: str, via: str = "link") -> Envelope[Any]:
    return about(
        incident_id,
        EscalationAcknowledged(incident_id=incident_id, escalation_id="e1", level=2, by="Ann Lee", via=via),
    )


async def test_an_acknowledged_page_moves_the_escalated_incident_to_acknowledged_and_announces_it_once(
    store: IncidentStore, bus: MemoryBus
) -> None:
    incident_id = await open_incident(store)
    await escalate(bus, incident_id)
    await deliver_twice(bus, store, acknowledged_page(incident_id))

    incident = await store.get("acme", incident_id)
    assert incident.status == Status.ACKNOWLEDGED
    last = incident.timeline[-1]
    assert (last.kind, last.by) == ("acknowledged", "Ann Lee")
    assert last.summary == "Level 2 page acknowledged by Ann Lee from the page's link"
    acknowledgements = [e for e in bus.published if e.type == "incident.acknowledged"]
    assert len(acknowledgements) == 1 and acknowledgements[0].data.by == "Ann Lee"
    assert public_timeline(incident.timeline)[-1].label == "An engineer took the incident"


async def test_a_page_acknowledged_after_the_incident_was_resolved_is_only_recorded(
    store: IncidentStore, bus: MemoryBus
) -> None:
    from aftercare.intake.service_layer import move_incident

    incident_id = await open_incident(store)
    await escalate(bus, incident_id)
    await move_incident.move(store, "acme", incident_id, Status.RESOLVED, by="Sam")
    await bus.deliver(acknowledged_page(incident_id, via="resolved"))

    incident = await store.get("acme", incident_id)
    assert incident.status == Status.RESOLVED
    assert incident.timeline[-1].kind == "escalation-acknowledged"
    assert [e.type for e in bus.published].count("incident.acknowledged") == 0
    assert "escalation-acknowledged" not in [entry.label for entry in public_timeline(incident.timeline)]
    assert len(public_timeline(incident.timeline)) == len(incident.timeline) - 1


def triaged(incident_id: str, priority: Priority, *, manual: list[str] | None = None) -> Envelope[Any]:
    now = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)
    return about(
        incident_id,
        IncidentTriaged(
            incident_id=incident_id,
            number="INC-1001",
            priority=priority,
            category="database",
            response_due_at=now + timedelta(hours=4 if priority != Priority.P1 else 0.25),
            resolution_due_at=now + timedelta(hours=24),
            manual_fields=manual or [],
        ),
        source="triage",
    )


async def test_a_priority_set_by_hand_is_announced_and_no_triage_result_overwrites_it(
    store: IncidentStore, bus: MemoryBus
) -> None:
    incident_id = await open_incident(store)
    await bus.deliver(triaged(incident_id, Priority.P3))
    first = await store.get("acme", incident_id)

    outcome = await reclassify(
        store, "acme", incident_id, priority=Priority.P1, category=None, by="ann@support.example", reason="CEO"
    )
    assert outcome.incident.priority == Priority.P1 and outcome.incident.manual_fields == ["priority"]
    assert outcome.incident.classified_by == "ann@support.example"
    announced = [e for e in bus.published if e.type == "incident.reclassified"]
    assert len(announced) == 1
    assert (announced[0].data.by, announced[0].data.priority, announced[0].data.category) == (
        "ann@support.example",
        Priority.P1,
        None,
    )
    entry = outcome.incident.timeline[-1]
    assert entry.kind == "reclassified"
    assert entry.summary == "Set by hand to priority P1 (was P3) by ann@support.example: CEO"
    # Asking again changes nothing and announces nothing.
    await reclassify(store, "acme", incident_id, priority=Priority.P1, category=None, by="ann@support.example")
    assert len([e for e in bus.published if e.type == "incident.reclassified"]) == 1

    # A triage result decided before triage heard of it: neither its priority nor its deadlines apply.
    await bus.deliver(triaged(incident_id, Priority.P3))
    after_stale = await store.get("acme", incident_id)
    assert after_stale.priority == Priority.P1 and after_stale.category == "database"
    assert after_stale.response_due_at == first.response_due_at
    # Triage's next result keeps the choice (manual_fields): its deadlines are the P1 ones.
    await bus.deliver(triaged(incident_id, Priority.P1, manual=["priority"]))
    after = await store.get("acme", incident_id)
    assert after.priority == Priority.P1 and after.response_due_at != first.response_due_at
    assert "reclassified" not in [p.label for p in public_timeline(after.timeline)]


async def test_a_category_set_by_hand_is_kept_and_bad_requests_say_what_to_change(
    store: IncidentStore, bus: MemoryBus
) -> None:
    incident_id = await open_incident(store)
    await reclassify(store, "acme", incident_id, priority=None, category="network", by="ann")
    await bus.deliver(triaged(incident_id, Priority.P2))
    incident = await store.get("acme", incident_id)
    assert (incident.category, incident.priority) == ("network", Priority.P2)
    with pytest.raises(ValueError, match="unknown category 'disk'; use one of: database, network"):
        await reclassify(store, "acme", incident_id, priority=None, category="disk", by="ann")
    with pytest.raises(ValueError, match="name a priority, a category or both"):
        await reclassify(store, "acme", incident_id, priority=None, category=None, by="ann")


async def test_reclassifying_a_closed_incident_is_refused_saying_why(store: IncidentStore) -> None:
    from aftercare.intake.service_layer import move_incident

    incident_id = await open_incident(store)
    await move_incident.move(store, "acme", incident_id, Status.RESOLVED, by="Sam")
    await move_incident.move(store, "acme", incident_id, Status.CLOSED, by="Sam")
    with pytest.raises(classification.ReclassifyRefused, match="INC-1001 is closed"):
        await reclassify(store, "acme", incident_id, priority=Priority.P1, category=None, by="ann")


def grouped(duplicate_id: str, first_id: str, tenant: str = "acme") -> Envelope[Any]:
    return about(
        duplicate_id,
        IncidentGrouped(
            incident_id=duplicate_id,
            number="INC-1002",
            duplicate_of=first_id,
            duplicate_of_number="INC-1001",
            reason="same_system",
            detail="billing-db within 30 min",
            channel="email",
        ),
        source="triage",
        tenant=tenant,
    )


async def test_a_grouped_duplicate_links_to_the_first_which_counts_it_once(
    store: IncidentStore, bus: MemoryBus
) -> None:
    first_id = await open_incident(store, "billing-db down (alert)")
    duplicate_id = await open_incident(store, "billing is down (customer)")
    second_duplicate_id = await open_incident(store, "cannot bill")
    await deliver_twice(bus, store, grouped(duplicate_id, first_id))

    duplicate = await store.get("acme", duplicate_id)
    first = await store.get("acme", first_id)
    assert (duplicate.duplicate_of, duplicate.duplicate_of_number) == (first_id, "INC-1001")
    assert first.duplicate_count == 1 and first.duplicate_of is None
    assert first.timeline[-1].kind == "duplicate"
    assert first.timeline[-1].summary == "INC-1002 reported the same problem by email (a report about the same system)"
    assert public_timeline(duplicate.timeline)[-1].label == "We already know this problem and are working on it"
    assert public_timeline(first.timeline)[-1].label == "The problem was reported again"

    await bus.deliver(grouped(second_duplicate_id, first_id))
    assert (await store.get("acme", first_id)).duplicate_count == 2


async def test_a_grouping_that_names_another_tenants_incident_counts_nothing(
    store: IncidentStore, bus: MemoryBus
) -> None:
    first_id = await open_incident(store)
    other = await report(store, "globex", IncidentReport(title="x", channel=Channel.API))
    await bus.deliver(grouped(other.incident.incident_id, first_id, tenant="globex"))
    assert (await store.get("acme", first_id)).duplicate_count == 0


def test_the_api_offers_the_categories_the_domain_accepts() -> None:
    from typing import get_args

    from aftercare.intake.entrypoints.classification_api import Category

    assert get_args(Category) == classification.CATEGORIES
