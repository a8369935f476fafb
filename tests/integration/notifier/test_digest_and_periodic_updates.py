"""Timed customer messages as stored due times, on the shared notifier whose intervals are short
(conftest: P1 update every 3 s, digest grid of 6 s): an open P1 gets periodic updates until it is
resolved, and low-priority updates go out together as one digest."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

import pytest
from pymongo import AsyncMongoClient

from aftercare.events.incidents import Channel, IncidentReported, IncidentResolved
from aftercare.events.producer import EventProducer
from aftercare.events.tenants import Priority
from aftercare.events.triage import IncidentTriaged

from .conftest import NotifierUnderTest, SmtpCapture, new_tenant, notifications_of, wait_for
from kafka_helpers import Infrastructure

pytestmark = pytest.mark.integration


def report(incident_id: str, number: str, title: str) -> IncidentReported:
    return IncidentReported(
        incident_id=incident_id, number=number, title=title, channel=Channel.API, reported_at=datetime.now(UTC)
    )


async def test_an_open_p1_gets_periodic_updates_until_it_is_resolved(
    notifier: NotifierUnderTest, smtp_capture: SmtpCapture, publisher: EventProducer, infrastructure: Infrastructure
) -> None:
    customer = new_tenant()
    await publisher.publish(customer.tenant_event())
    incident_id, number = str(uuid.uuid4()), "INC-9101"
    await publisher.publish(customer.event(report(incident_id, number, "Orders are not processed"), incident_id))
    await publisher.publish(
        customer.event(
            IncidentTriaged(incident_id=incident_id, number=number, priority=Priority.P1, category="application"),
            incident_id,
            source="triage",
        )
    )

    def updates() -> list[Any]:
        return [m for m in smtp_capture.to(customer.contact_email) if m["Subject"].startswith(f"[{number}] Update:")]

    await wait_for("two periodic updates", lambda: len(updates()) >= 2)
    assert "still open" in updates()[0].get_body(preferencelist=("plain",)).get_content()
    # Each update is its own message in the incident's thread.
    assert len({m["Message-ID"] for m in updates()}) == len(updates())
    assert all(m["In-Reply-To"] for m in updates())

    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(infrastructure.mongo_url)
    try:
        timers = client[notifier.database]["due_times"]  # runtime.due_times
        timer = await timers.find_one({"_id": f"periodic-update|{incident_id}"})
        assert timer is not None and timer["kind"] == "periodic-update"  # the next one is a stored due time

        await publisher.publish(
            customer.event(IncidentResolved(incident_id=incident_id, number=number, by="ops"), incident_id)
        )
        await wait_for(
            "the resolved email",
            lambda: any("resolved" in m["Subject"].lower() for m in smtp_capture.to(customer.contact_email)),
        )

        async def timer_gone() -> bool:
            return await timers.find_one({"_id": f"periodic-update|{incident_id}"}) is None

        await wait_for("the periodic update's due time cancelled", timer_gone)
    finally:
        await client.close()


async def test_low_priority_updates_go_out_together_in_one_digest(
    notifier: NotifierUnderTest, smtp_capture: SmtpCapture, publisher: EventProducer
) -> None:
    customer = new_tenant()
    await publisher.publish(customer.tenant_event())
    incidents = {str(uuid.uuid4()): "INC-9201", str(uuid.uuid4()): "INC-9202"}
    for incident_id, number in incidents.items():
        await publisher.publish(customer.event(report(incident_id, number, f"Printer queue {number}"), incident_id))
    for incident_id, number in incidents.items():
        await publisher.publish(
            customer.event(
                IncidentTriaged(incident_id=incident_id, number=number, priority=Priority.P4, category="printing"),
                incident_id,
                source="triage",
            )
        )

    async def triaged_deliveries() -> list[dict[str, Any]] | None:
        found = []
        for incident_id in incidents:
            found += [
                entry
                for entry in await notifications_of(notifier, incident_id)
                if entry["kind"] == "incident-triaged" and entry["state"] == "digested"
            ]
        return found if len(found) == 2 else None

    deliveries = await wait_for("both P4 updates digested", triaged_deliveries)
    assert all(entry["held_reason"] == "digest" for entry in deliveries)
    digests = [m for m in smtp_capture.to(customer.contact_email) if m["Subject"].startswith("Your incident digest")]
    # Both were planned for the next slot of the digest grid; one digest per slot they fell in.
    assert len(digests) == len({entry["due_at"] for entry in deliveries})
    text = "".join(m.get_body(preferencelist=("plain",)).get_content() for m in digests)
    assert text.count("[INC-9201] Priority P4") == 1 and text.count("[INC-9202] Priority P4") == 1
    # Never sent one by one as well.
    singles = [m for m in smtp_capture.to(customer.contact_email) if "Priority P4" in m["Subject"]]
    assert singles == []
