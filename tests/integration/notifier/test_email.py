"""Customers hear about their incidents by email, each message once, threaded per incident."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime, timedelta

import pytest

from aftercare.events import topics
from aftercare.events.incidents import Channel, IncidentReported, IncidentResolved, Reporter
from aftercare.events.notifications import NotificationRequested
from aftercare.events.producer import EventProducer
from aftercare.events.remediation import RemediationStarted
from aftercare.events.tenants import NotificationChannel, Priority
from aftercare.events.triage import IncidentTriaged

from .conftest import NotifierUnderTest, SmtpCapture, new_tenant, notifications_of, wait_for
from kafka_helpers import read_all

pytestmark = pytest.mark.integration


def _reported(number: str, title: str) -> IncidentReported:
    return IncidentReported(
        incident_id="",  # replaced below
        number=number,
        title=title,
        channel=Channel.API,
        reported_at=datetime.now(UTC),
    )


async def test_each_step_reaches_the_contact_once_in_one_thread(
    notifier: NotifierUnderTest, smtp_capture: SmtpCapture, publisher: EventProducer
) -> None:
    customer = new_tenant()
    incident_id = str(uuid.uuid4())
    await publisher.publish(customer.tenant_event())
    reported = customer.event(
        IncidentReported(
            incident_id=incident_id,
            number="INC-7001",
            title="Billing database refuses connections",
            channel=Channel.API,
            reported_at=datetime.now(UTC),
        ),
        incident_id,
    )
    await publisher.publish(reported)
    await publisher.publish(
        customer.event(
            IncidentTriaged(
                incident_id=incident_id,
                number="INC-7001",
                priority=Priority.P2,
                category="database",
                response_due_at=datetime.now(UTC) + timedelta(minutes=30),
            ),
            incident_id,
            source="triage",
        )
    )
    await publisher.publish(
        customer.event(
            RemediationStarted(incident_id=incident_id, run_id="run-1", runbook="restart-db"),
            incident_id,
            source="remediation",
        )
    )
    # The report again, as Kafka may redeliver it: same event id, no second "received".
    await publisher.publish(reported)
    await publisher.publish(
        customer.event(
            IncidentResolved(incident_id=incident_id, number="INC-7001", by="remediation", resolution="Restarted."),
            incident_id,
        )
    )

    mails = await wait_for("four emails", lambda: len(smtp_capture.to(customer.contact_email)) >= 4 or None)
    log = await wait_for(
        "every delivery recorded as sent",
        lambda: _all_sent(notifier, incident_id, 4),
    )
    mails = smtp_capture.to(customer.contact_email)
    subjects = [m["Subject"] for m in mails]
    assert len(mails) == 4, subjects
    assert all("[INC-7001]" in s for s in subjects)
    assert any(s.startswith("[INC-7001] We received") for s in subjects), subjects
    assert any("Resolved" in s for s in subjects)
    assert any("Priority P2" in s for s in subjects)

    # One conversation: every later message refers to the first one.
    first = next(m for m in mails if "We received" in m["Subject"])
    root = first["Message-ID"]
    assert first["In-Reply-To"] is None
    for message in mails:
        if message is not first:
            assert message["In-Reply-To"] == root
            assert root in message["References"]
    assert len({m["Message-ID"] for m in mails}) == 4
    # Replies go to intake's inbound address for the tenant, so they join the incident.
    assert all(m["Reply-To"] == customer.inbound_email for m in mails)
    # Links point at the customer's portal status page, not at the authenticated API.
    for message in mails:
        text = message.get_body(("plain",)).get_content()  # type: ignore[attr-defined]
        html = message.get_body(("html",)).get_content()  # type: ignore[attr-defined]
        assert f"https://portal.example.net/portal/{customer.slug}/incidents/{incident_id}" in text
        assert "<a href=" in html and "/v1/incidents" not in text
    # Every attempt is recorded, queryable per incident, each with its Message-ID derivable key.
    assert sorted(entry["kind"] for entry in log) == [
        "incident-received",
        "incident-resolved",
        "incident-triaged",
        "remediation-started",
    ]
    assert all(entry["attempts"][0]["outcome"] == "sent" for entry in log)
    assert {f"<{entry['notification_id']}@notifier.aftercare.example>" for entry in log} == {
        m["Message-ID"] for m in mails
    }

    # NotificationSent announced each one on Kafka. It leaves through the outbox after the
    # delivery is recorded as sent, so on a busy machine it may trail the record: wait for it.
    expected = {entry["notification_id"] for entry in log}

    async def announced() -> set[str] | None:
        records = await read_all(notifier.env["AFTERCARE_KAFKA_BOOTSTRAP_SERVERS"], topics.NOTIFICATIONS)
        sent = {
            json.loads(r.value)["data"]["notification_id"]
            for r in records
            if r.key == incident_id.encode() and json.loads(r.value)["type"] == "notification.sent"
        }
        return sent if expected <= sent else None

    sent = await wait_for("NotificationSent for every delivery", announced)
    assert sent == expected


async def _all_sent(notifier: NotifierUnderTest, incident_id: str, count: int) -> list[dict[str, object]] | None:
    log = await notifications_of(notifier, incident_id)
    if len(log) >= count and all(entry["state"] == "sent" for entry in log):
        return log
    return None


async def test_intake_acknowledgement_and_received_notice_are_one_email(
    notifier: NotifierUnderTest, smtp_capture: SmtpCapture, publisher: EventProducer
) -> None:
    """Intake asks for an acknowledgement to whoever emailed; when that is the tenant's contact,
    the notifier's own "received" to the contact is the same message, sent once."""
    customer = new_tenant()
    incident_id = str(uuid.uuid4())
    await publisher.publish(customer.tenant_event())
    await publisher.publish(
        customer.event(
            NotificationRequested(
                notification_id=str(uuid.uuid4()),
                incident_id=incident_id,
                channel=NotificationChannel.EMAIL,
                recipient=customer.contact_email,
                template="incident-received",
                subject="[INC-7002] Re: printer on fire",
                in_reply_to="<original-123@customer.example.org>",
                context={"number": "INC-7002", "title": "printer on fire", "status_url": "http://intake/v1/x"},
            ),
            incident_id,
        )
    )
    await publisher.publish(
        customer.event(
            IncidentReported(
                incident_id=incident_id,
                number="INC-7002",
                title="printer on fire",
                channel=Channel.EMAIL,
                reported_at=datetime.now(UTC),
                reporter=Reporter(email=customer.contact_email),  # as intake's email channel says
            ),
            incident_id,
        )
    )
    await publisher.publish(
        customer.event(IncidentResolved(incident_id=incident_id, number="INC-7002", by="ops"), incident_id)
    )
    await wait_for("the two deliveries recorded", lambda: _all_sent(notifier, incident_id, 2))
    mails = smtp_capture.to(customer.contact_email)
    assert len(mails) == 2, [m["Subject"] for m in mails]
    acknowledgement = next(m for m in mails if "Re: printer on fire" in m["Subject"])
    assert acknowledgement["In-Reply-To"] == "<original-123@customer.example.org>"
    resolved = next(m for m in mails if "Resolved" in m["Subject"])
    assert resolved["In-Reply-To"] == acknowledgement["Message-ID"]
