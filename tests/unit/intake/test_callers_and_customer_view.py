"""Caller recognition, call titles, impact -> severity, the customer's timeline, the web form's token."""

from __future__ import annotations

from datetime import UTC, datetime

from aftercare.events.incidents import Channel, IncidentStatus, Reporter, Severity
from aftercare.intake.domain import callers, impact, public_timeline, reporting, web_form
from aftercare.intake.domain.incident import Incident, IncidentReport, TimelineEntry

NOW = datetime(2026, 3, 1, 9, 30, tzinfo=UTC)


def test_a_caller_is_recognised_by_their_number_but_withheld_numbers_recognise_nobody() -> None:
    assert callers.caller_key("+15551234567") == "phone:+15551234567"
    assert callers.caller_key("+266696687") is None  # Twilio's "withheld"
    assert callers.caller_key("client:alice") is None


def test_a_call_is_titled_by_the_callers_first_words() -> None:
    assert callers.call_title("", "+15551234567") == "Voice message from +15551234567"
    assert callers.call_title("The printer is on fire. Please come.", "+1555") == "The printer is on fire."
    long_words = "word " * 100
    assert len(callers.call_title(long_words, "+1555")) <= callers.TITLE_LENGTH


def test_the_transcript_replaces_only_the_placeholder_title() -> None:
    words = "Our VPN is down since nine. Nobody can log in."
    assert callers.title_after_transcript("Voice message from +1555", "+1555", words) == "Our VPN is down since nine."
    assert callers.title_after_transcript("VPN outage (confirmed)", "+1555", words) is None  # a person's title
    assert callers.title_after_transcript("Voice message from +1555", "+1555", "  ") is None


def test_impact_in_the_customers_words_maps_to_severity() -> None:
    assert impact.severity_for("down") == Severity.CRITICAL
    assert impact.severity_for("question") == Severity.INFO
    assert impact.impact_words("minor").startswith("A minor problem")


def test_the_customer_sees_public_entries_only_in_customer_words() -> None:
    entries = [
        TimelineEntry(at=NOW, kind="reported", summary="Reported by api"),
        TimelineEntry(at=NOW, kind="diagnosis", summary="disk 98% full on /var"),
        TimelineEntry(at=NOW, kind="resolved", summary="Resolved by Sam"),
    ]
    shown = public_timeline.public_timeline(entries)
    assert [entry.label for entry in shown] == ["We received the report", "The problem was resolved"]
    assert public_timeline.status_label(IncidentStatus.REMEDIATING) == "Being fixed"


def test_a_form_token_opens_one_incident_per_tenant_and_only_the_same_report_is_a_resend() -> None:
    assert web_form.incident_id_for("acme", "a" * 32) == web_form.incident_id_for("acme", "a" * 32)
    assert web_form.incident_id_for("acme", "a" * 32) != web_form.incident_id_for("globex", "a" * 32)
    report = IncidentReport(title="Printer", channel=Channel.WEB, reporter=Reporter(name="Ada", email="a@x.io"))
    incident = Incident.model_validate(reporting.open_incident("acme", "i", "INC-1", report, now=NOW).fields)
    assert web_form.same_submission(incident, report)
    assert not web_form.same_submission(incident, report.model_copy(update={"title": "Scanner"}))
