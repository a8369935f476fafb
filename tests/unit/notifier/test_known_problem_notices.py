"""A report of a problem already being worked on: the customer is told which incident it is."""

from __future__ import annotations

from datetime import UTC, datetime

from aftercare.events.envelope import envelope_for
from aftercare.events.notifications import NotificationRequested
from aftercare.events.tenants import NotificationChannel
from aftercare.events.triage import IncidentGrouped
from aftercare.notifier.adapters.templates import MessageTemplates
from aftercare.notifier.domain.notices import NoticeKind, notice_for

NOW = datetime(2026, 11, 30, 20, 0, tzinfo=UTC)


def grouped(channel: str) -> IncidentGrouped:
    return IncidentGrouped(
        incident_id="call-1",
        number="INC-1002",
        duplicate_of="alert-1",
        duplicate_of_number="INC-1001",
        reason="same_system",
        detail="billing-db is down",
        channel=channel,
    )


def test_a_grouped_phone_call_tells_the_contacts_the_number_being_worked_on() -> None:
    envelope = envelope_for(grouped("phone"), source="triage", tenant_id="acme", incident_id="call-1")
    notice = notice_for(envelope, {"number": "INC-1002", "title": "Billing is down", "system": "billing-db"})
    assert notice is not None and notice.kind is NoticeKind.KNOWN
    assert notice.recipient is None  # the tenant's contacts, as for the call's "received"
    assert notice.incident_id == "call-1"  # in the call's own thread
    message = MessageTemplates().render(notice.kind.value, "en", notice.context | {"contact_name": "Dana"})
    assert message.subject == "[INC-1002] Already known: we are working on it as INC-1001"
    assert "incident INC-1001" in message.text and "billing-db" in message.text


def test_a_grouped_alert_or_email_is_not_told_again_by_the_notifier() -> None:
    # Machines are not told; a person who wrote is answered by triage's own request.
    for channel in ("pagerduty", "email"):
        envelope = envelope_for(grouped(channel), source="triage", tenant_id="acme", incident_id="call-1")
        assert notice_for(envelope, {}) is None


def test_triages_request_to_the_writer_is_the_same_message_as_ours_for_that_report() -> None:
    request = NotificationRequested(
        notification_id="n-1",
        incident_id="alert-1",
        channel=NotificationChannel.EMAIL,
        recipient="dana@acme.example",
        template="incident-known",
        subject="INC-1001: we already know about this problem and are working on it",
        context={"number": "INC-1001", "your_number": "INC-1002", "your_incident_id": "call-1", "title": "Down"},
    )
    notice = notice_for(envelope_for(request, source="triage", tenant_id="acme", incident_id="alert-1"), {})
    ours = notice_for(envelope_for(grouped("phone"), source="triage", tenant_id="acme", incident_id="call-1"), {})
    assert notice is not None and ours is not None
    assert notice.kind is NoticeKind.KNOWN and notice.notice_id == ours.notice_id
    assert notice.context["known_number"] == "INC-1001" and notice.context["number"] == "INC-1002"
    text = MessageTemplates().render(notice.kind.value, "en", notice.context | {"contact_name": "Dana"}).text
    assert "incident INC-1001" in text and "reporting INC-1002" in text
