"""Intake moves incidents by consuming what triage and remediation publish.

Against the real intake process: the test plays triage and remediation, publishing their events
with the shared producer on the real topics (aftercare.triage, aftercare.remediation), and reads
the incident back through the JSON API and the incident events off Kafka. Kafka redelivers and
services publish late; neither may double what a customer sees or move an incident backwards.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest

from aftercare.events import topics
from aftercare.events.envelope import Envelope, Event, envelope_for
from aftercare.events.producer import EventProducer
from aftercare.events.remediation import IncidentEscalated, RemediationStarted, RemediationSucceeded
from aftercare.events.tenants import Priority
from aftercare.events.triage import IncidentTriaged

from .conftest import IntakeUnderTest
from .incident_events import distinct
from kafka_helpers import read_all, wait_until

pytestmark = pytest.mark.integration

# Long enough for a consumer group rebalance after another intake instance left the group.
CONSUMED_WITHIN_S = 90.0


@pytest.fixture
async def producer(intake: IntakeUnderTest) -> AsyncIterator[EventProducer]:
    producer = EventProducer(intake.infrastructure.bootstrap_servers, client_id="lifecycle-test")
    await producer.start()
    try:
        yield producer
    finally:
        await producer.stop()


class Incident:
    """One incident of tenant-a, with what the test needs to publish about it and read it back."""

    def __init__(self, client: httpx.AsyncClient, intake: IntakeUnderTest, accepted: dict[str, Any]) -> None:
        self.client, self.intake = client, intake
        self.id: str = accepted["incident_id"]
        self.number: str = accepted["number"]
        self.url: str = accepted["status_url"]

    def envelope(self, data: Event, source: str) -> Envelope[Any]:
        return envelope_for(data, source=source, tenant_id="tenant-a", incident_id=self.id)

    async def read(self) -> dict[str, Any]:
        answer = await self.client.get(self.url, headers=self.intake.auth("tenant-a"))
        assert answer.status_code == 200, answer.text
        return dict(answer.json())

    async def wait_for(self, what: str, check: Any) -> dict[str, Any]:
        async def current() -> dict[str, Any] | None:
            incident = await self.read()
            return incident if check(incident) else None

        return await wait_until(current, timeout=CONSUMED_WITHIN_S, interval=0.3, message=what)

    async def events(self) -> list[dict[str, Any]]:
        records = await read_all(self.intake.infrastructure.bootstrap_servers, topics.INCIDENTS)
        return distinct([json.loads(r.value) for r in records if r.key == self.id.encode()])


async def open_incident(client: httpx.AsyncClient, intake: IntakeUnderTest) -> Incident:
    answer = await client.post(
        "/v1/incidents",
        headers=intake.auth("tenant-a"),
        json={"title": f"Order sync stuck {uuid.uuid4().hex[:8]}", "system": "billing-db"},
    )
    assert answer.status_code == 202, answer.text
    return Incident(client, intake, answer.json())


def triaged(incident: Incident, priority: Priority = Priority.P2) -> Envelope[Any]:
    now = datetime.now(UTC)
    return incident.envelope(
        IncidentTriaged(
            incident_id=incident.id,
            number=incident.number,
            priority=priority,
            category="database",
            response_due_at=now + timedelta(hours=1),
            resolution_due_at=now + timedelta(hours=8),
            rule="billing-db-errors",
        ),
        source="triage",
    )


def timeline_kinds(incident: dict[str, Any]) -> list[str]:
    return [entry["kind"] for entry in incident["timeline"]]


async def test_triage_and_remediation_move_the_incident_to_resolved_and_intake_announces_it_once(
    client: httpx.AsyncClient, intake: IntakeUnderTest, producer: EventProducer
) -> None:
    incident = await open_incident(client, intake)
    run_id = str(uuid.uuid4())

    triage = await producer.publish(triaged(incident))
    now_triaged = await incident.wait_for("status triaged", lambda i: i["status"] == "triaged")
    assert now_triaged["priority"] == "P2" and now_triaged["category"] == "database"
    assert now_triaged["response_due_at"] and now_triaged["resolution_due_at"]

    started = await producer.publish(
        incident.envelope(
            RemediationStarted(
                incident_id=incident.id, run_id=run_id, runbook="restart-order-sync", steps=["restart", "verify"]
            ),
            source="remediation",
        )
    )
    await incident.wait_for("status remediating", lambda i: i["status"] == "remediating")

    succeeded = incident.envelope(
        RemediationSucceeded(
            incident_id=incident.id, run_id=run_id, runbook="restart-order-sync", verification="Queue drained"
        ),
        source="remediation",
    )
    await producer.publish(succeeded)
    await producer.publish(succeeded)  # Kafka redelivers: the same envelope, the same event id
    resolved = await incident.wait_for("status resolved", lambda i: i["status"] == "resolved")
    assert resolved["priority"] == "P2" and resolved["resolved_at"]

    # A late triage after resolution (same key, so after the duplicate on the partition): recorded on
    # the timeline, the status stays. Once it shows, the duplicate before it has been handled too.
    late = await producer.publish(triaged(incident, Priority.P3))
    final = await incident.wait_for(
        "late triage on the timeline", lambda i: late.id in [e["event_id"] for e in i["timeline"]]
    )
    assert final["status"] == "resolved"
    assert timeline_kinds(final) == ["reported", "triaged", "remediating", "resolved", "triaged"]
    assert [e["event_id"] for e in final["timeline"][1:]] == [triage.id, started.id, succeeded.id, late.id]
    assert [e["by"] for e in final["timeline"][1:]] == ["triage", "remediation", "remediation", "triage"]

    events = await incident.events()
    (announced,) = [event for event in events if event["type"] == "incident.resolved"]
    assert announced["data"]["by"] == "remediation"
    assert "restart-order-sync" in announced["data"]["resolution"]
    assert announced["causation_id"] == succeeded.id
    assert announced["correlation_id"] == succeeded.correlation_id
    assert announced["tenant_id"] == "tenant-a" and announced["incident_id"] == incident.id


async def test_escalation_moves_the_incident_to_escalated(
    client: httpx.AsyncClient, intake: IntakeUnderTest, producer: EventProducer
) -> None:
    incident = await open_incident(client, intake)
    await producer.publish(triaged(incident, Priority.P1))
    await incident.wait_for("status triaged", lambda i: i["status"] == "triaged")

    escalation = await producer.publish(
        incident.envelope(
            IncidentEscalated(incident_id=incident.id, reason="Runbook needs a DBA", escalated_to="dba-oncall"),
            source="remediation",
        )
    )

    escalated = await incident.wait_for("status escalated", lambda i: i["status"] == "escalated")
    assert escalated["priority"] == "P1"
    (entry,) = [e for e in escalated["timeline"] if e["event_id"] == escalation.id]
    assert entry["kind"] == "escalated" and "dba-oncall" in entry["summary"]
    # A person can still resolve an escalated incident.
    answer = await client.post(
        f"{incident.url}/resolve",
        headers=intake.auth("tenant-a"),
        json={"by": "DBA on call", "resolution": "Index rebuilt"},
    )
    assert answer.status_code == 200 and answer.json()["status"] == "resolved", answer.text


async def test_a_late_triage_does_not_undo_a_persons_acknowledgement(
    client: httpx.AsyncClient, intake: IntakeUnderTest, producer: EventProducer
) -> None:
    incident = await open_incident(client, intake)
    answer = await client.post(f"{incident.url}/acknowledge", headers=intake.auth("tenant-a"), json={"by": "Sam"})
    assert answer.status_code == 200, answer.text

    late = await producer.publish(triaged(incident, Priority.P3))

    seen = await incident.wait_for(
        "triage on the timeline", lambda i: late.id in [e["event_id"] for e in i["timeline"]]
    )
    assert seen["status"] == "acknowledged" and seen["priority"] == "P3"


async def test_events_for_another_tenants_incident_do_not_move_it(
    client: httpx.AsyncClient, intake: IntakeUnderTest, producer: EventProducer
) -> None:
    incident = await open_incident(client, intake)
    forged = envelope_for(
        IncidentTriaged(incident_id=incident.id, number=incident.number, priority=Priority.P1, category="database"),
        source="triage",
        tenant_id="tenant-b",
        incident_id=incident.id,
    )
    await producer.publish(forged)
    # An event for tenant-a's incident published after the forged one (same key, same partition):
    # when it has been applied, the forged one has been handled.
    marker = await producer.publish(triaged(incident, Priority.P4))

    seen = await incident.wait_for("the genuine triage", lambda i: i["priority"] == "P4")
    assert forged.id not in [e["event_id"] for e in seen["timeline"]]
    assert marker.id in [e["event_id"] for e in seen["timeline"]]
