"""Remediation's steps, notes, approvals and acknowledged pages, triage's grouping, and a person's
reclassification, on the real intake process (shared), real Kafka and store, read back through
the JSON API and the incidents topic. The test plays remediation and triage, publishing their
events on the real topics; each event is published twice (Kafka redelivers, producers retry).
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest

from aftercare.events.envelope import Envelope, Event, envelope_for
from aftercare.events.producer import EventProducer
from aftercare.events.remediation import (
    ApprovalGranted,
    ApprovalRequested,
    EscalationAcknowledged,
    IncidentEscalated,
    RemediationNoteAdded,
    RemediationStarted,
    RemediationStepCompleted,
)
from aftercare.events.tenants import Priority
from aftercare.events.triage import IncidentGrouped, IncidentTriaged

from .conftest import IntakeUnderTest
from .incident_events import incident_events, of_type
from .test_operators import bearer, register
from kafka_helpers import wait_until

pytestmark = pytest.mark.integration

CONSUMED_WITHIN_S = 90.0


@pytest.fixture
async def producer(intake: IntakeUnderTest) -> AsyncIterator[EventProducer]:
    producer = EventProducer(intake.infrastructure.bootstrap_servers, client_id="timeline-test")
    await producer.start()
    try:
        yield producer
    finally:
        await producer.stop()


async def open_incident(client: httpx.AsyncClient, intake: IntakeUnderTest, title: str) -> tuple[str, str]:
    answer = await client.post(
        "/v1/incidents", headers=intake.auth("tenant-a"), json={"title": f"{title} {uuid.uuid4().hex[:8]}"}
    )
    assert answer.status_code == 202, answer.text
    return answer.json()["incident_id"], answer.json()["number"]


async def read(client: httpx.AsyncClient, intake: IntakeUnderTest, incident_id: str) -> dict[str, Any]:
    answer = await client.get(f"/v1/incidents/{incident_id}", headers=intake.auth("tenant-a"))
    assert answer.status_code == 200, answer.text
    return dict(answer.json())


async def wait_for(
    client: httpx.AsyncClient, intake: IntakeUnderTest, incident_id: str, what: str, check: Any
) -> dict[str, Any]:
    async def current() -> dict[str, Any] | None:
        incident = await read(client, intake, incident_id)
        return incident if check(incident) else None

    return await wait_until(current, timeout=CONSUMED_WITHIN_S, interval=0.3, message=what)


async def publish_twice(producer: EventProducer, incident_id: str, data: Event, source: str) -> Envelope[Any]:
    envelope = envelope_for(data, source=source, tenant_id="tenant-a", incident_id=incident_id)
    await producer.publish(envelope)
    await producer.publish(envelope)
    return envelope


async def test_remediation_steps_notes_approvals_and_an_acknowledged_page_are_on_the_timeline_once(
    client: httpx.AsyncClient, intake: IntakeUnderTest, producer: EventProducer
) -> None:
    incident_id, _ = await open_incident(client, intake, "Checkout returns 502")
    run = str(uuid.uuid4())
    events: list[Event] = [
        RemediationStarted(incident_id=incident_id, run_id=run, runbook="restart-shop", steps=["note", "restart"]),
        RemediationNoteAdded(incident_id=incident_id, run_id=run, note="Restarting the shop"),
        ApprovalRequested(
            incident_id=incident_id, run_id=run, approval_id="ap-1", step="restart", reason="restart is risky"
        ),
        ApprovalGranted(incident_id=incident_id, run_id=run, approval_id="ap-1", by="ann@support.example"),
        RemediationStepCompleted(
            incident_id=incident_id,
            run_id=run,
            step_index=1,
            step="restart",
            outcome="failed",
            output="HTTP 500",
            action="http_admin",
        ),
        IncidentEscalated(incident_id=incident_id, reason="restart did not help", escalation_id="esc-1", run_id=run),
        EscalationAcknowledged(incident_id=incident_id, escalation_id="esc-1", level=1, by="Ann Lee", via="link"),
    ]
    for data in events:
        await publish_twice(producer, incident_id, data, "remediation")

    incident = await wait_for(client, intake, incident_id, "page acknowledged", lambda i: i["status"] == "acknowledged")
    assert [entry["kind"] for entry in incident["timeline"]] == [
        "reported",
        "remediating",
        "remediation-note",
        "approval-requested",
        "approval-granted",
        "remediation-step",
        "escalated",
        "acknowledged",
    ]
    summaries = {entry["kind"]: entry["summary"] for entry in incident["timeline"]}
    assert summaries["remediation-step"] == "Runbook step 2 'restart' (http_admin) failed: HTTP 500"
    assert summaries["approval-granted"] == "Approved by ann@support.example"
    assert incident["timeline"][-1]["by"] == "Ann Lee"
    acknowledged = of_type(await incident_events(intake, incident_id), "incident.acknowledged")
    assert [event["data"]["by"] for event in acknowledged] == ["Ann Lee"]


async def test_a_grouped_duplicate_shows_its_first_incident_and_the_first_counts_it_once(
    client: httpx.AsyncClient, intake: IntakeUnderTest, producer: EventProducer
) -> None:
    first_id, first_number = await open_incident(client, intake, "billing-db unreachable")
    duplicate_id, duplicate_number = await open_incident(client, intake, "Billing is down")
    await publish_twice(
        producer,
        duplicate_id,
        IncidentGrouped(
            incident_id=duplicate_id,
            number=duplicate_number,
            duplicate_of=first_id,
            duplicate_of_number=first_number,
            reason="fingerprint",
        ),
        "triage",
    )
    duplicate = await wait_for(client, intake, duplicate_id, "duplicate linked", lambda i: i["duplicate_of"])
    assert (duplicate["duplicate_of"], duplicate["duplicate_of_number"]) == (first_id, first_number)
    first = await wait_for(client, intake, first_id, "duplicate counted", lambda i: i["duplicate_count"] >= 1)
    assert first["duplicate_count"] == 1 and first["duplicate_of"] is None
    assert [entry["kind"] for entry in first["timeline"]].count("duplicate") == 1


async def test_an_operator_sets_the_priority_by_hand_and_a_later_triage_result_does_not_override_it(
    client: httpx.AsyncClient, intake: IntakeUnderTest, producer: EventProducer
) -> None:
    incident_id, number = await open_incident(client, intake, "Invoices printed twice")
    _, viewer_token, _ = await register(client, intake, "viewer")
    operator_id, token, _ = await register(client, intake, "responder")
    _, other_tenants_token, _ = await register(client, intake, "responder", tenants=["tenant-b"])
    url = f"/v1/incidents/{incident_id}/reclassify"

    refused = {
        "no token": await client.post(url, json={"priority": "P1"}),
        "viewer": await client.post(url, json={"priority": "P1"}, headers=bearer(viewer_token)),
        "other tenant": await client.post(url, json={"priority": "P1"}, headers=bearer(other_tenants_token)),
        "nothing": await client.post(url, json={"reason": "x"}, headers=bearer(token)),
        "category": await client.post(url, json={"category": "disk"}, headers=bearer(token)),
    }
    assert {why: answer.status_code for why, answer in refused.items()} == {
        "no token": 401,
        "viewer": 403,
        "other tenant": 404,
        "nothing": 422,
        "category": 422,
    }
    assert "send 'priority', 'category' or both" in refused["nothing"].text
    assert "database" in refused["category"].text  # the allowed categories are listed

    answer = await client.post(url, json={"priority": "P1", "reason": "the CEO cannot invoice"}, headers=bearer(token))
    assert answer.status_code == 200, answer.text
    assert answer.json()["priority"] == "P1" and answer.json()["manual_fields"] == ["priority"]
    (announced,) = of_type(await incident_events(intake, incident_id), "incident.reclassified")
    assert announced["data"]["by"] == f"{operator_id}@support.example"
    assert announced["data"]["priority"] == "P1" and announced["data"]["reason"] == "the CEO cannot invoice"

    # Triage decided P4 before it heard of the person's choice; then it decides again keeping it.
    now = datetime.now(UTC)
    stale = IncidentTriaged(
        incident_id=incident_id,
        number=number,
        priority=Priority.P4,
        category="application",
        response_due_at=now + timedelta(hours=24),
        resolution_due_at=now + timedelta(days=5),
    )
    await publish_twice(producer, incident_id, stale, "triage")
    triaged = await wait_for(client, intake, incident_id, "triage recorded", lambda i: i["status"] == "triaged")
    assert triaged["priority"] == "P1" and triaged["category"] == "application"
    assert triaged["response_due_at"] is None  # deadlines of a P4 do not apply to a P1
