"""Opening an incident, counting an occurrence, adding information (domain/reporting.py): pure."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from aftercare.events.incidents import AttachmentRef, Channel, IncidentReported, IncidentUpdated, Reporter, Severity
from aftercare.events.incidents import IncidentStatus as Status
from aftercare.events.notifications import NotificationRequested
from aftercare.events.tenants import NotificationChannel
from aftercare.intake.domain import reporting
from aftercare.intake.domain.incident import MAX_OCCURRENCES_ON_TIMELINE, Incident, IncidentReport

NOW = datetime(2026, 3, 1, 9, 30, tzinfo=UTC)


def disk_full(**overrides: object) -> IncidentReport:
    fields: dict[str, object] = {
        "title": "Disk full on db-1",
        "channel": Channel.API,
        "severity": Severity.CRITICAL,
        "reporter": Reporter(name="Ada"),
        "dedup_key": "disk-db-1",
    }
    return IncidentReport.model_validate(fields | overrides)


def opened(report: IncidentReport | None = None) -> Incident:
    opening = reporting.open_incident("acme", "inc-1", "INC-1001", report or disk_full(), now=NOW)
    return Incident.model_validate(opening.fields)


def test_opening_makes_a_reported_incident_announced_by_incident_reported() -> None:
    opening = reporting.open_incident("acme", "inc-1", "INC-1001", disk_full(), now=NOW)
    incident = Incident.model_validate(opening.fields)
    assert (incident.status, incident.number, incident.occurrence_count) == (Status.REPORTED, "INC-1001", 1)
    assert incident.created_at == incident.first_seen_at == incident.last_seen_at == NOW
    [event] = opening.events
    assert isinstance(event.data, IncidentReported)
    assert (event.tenant_id, event.incident_id, event.time, event.source) == ("acme", "inc-1", NOW, "intake")
    [entry] = incident.timeline
    assert (entry.kind, entry.by, entry.event_id) == ("reported", "Ada", event.id)
    assert entry.summary == "Reported by api: Disk full on db-1"


def test_when_it_happened_comes_from_the_sender_in_milliseconds() -> None:
    happened = datetime(2026, 3, 1, 9, 0, 0, 123456, tzinfo=UTC)
    incident = opened(disk_full(occurred_at=happened))
    assert incident.first_seen_at == happened.replace(microsecond=123000)
    assert incident.created_at == NOW


def test_follow_ups_ride_with_the_opening_event_and_name_it_as_their_cause() -> None:
    def acknowledgement(incident_id: str, number: str) -> list[NotificationRequested]:
        return [
            NotificationRequested(
                notification_id="n-1",
                incident_id=incident_id,
                channel=NotificationChannel.EMAIL,
                recipient="ada@example.com",
                template="incident-received",
                subject=f"[{number}] Re: disk",
            )
        ]

    opening = reporting.open_incident("acme", "inc-1", "INC-1001", disk_full(), now=NOW, also_publish=acknowledgement)
    reported, follow_up = opening.events
    assert follow_up.data.subject == "[INC-1001] Re: disk"
    assert follow_up.causation_id == reported.id and follow_up.correlation_id == reported.correlation_id


def test_an_occurrence_counts_moves_last_seen_and_is_announced() -> None:
    incident = opened()
    later = NOW + timedelta(minutes=5)
    change = reporting.add_occurrence(incident, disk_full(reporter=Reporter(system="prometheus")), now=later)
    assert change.increments == {"occurrence_count": 1}
    assert change.raise_to == {"last_seen_at": later}
    assert change.set_fields == {"updated_at": later}
    assert change.timeline is not None and change.timeline.summary == "Seen again (2x): Disk full on db-1"
    [event] = change.events
    assert isinstance(event.data, IncidentUpdated)
    assert (event.data.kind, event.data.occurrence_count) == ("occurrence", 2)


def test_occurrences_beyond_the_cap_only_count() -> None:
    incident = opened().model_copy(update={"occurrence_count": MAX_OCCURRENCES_ON_TIMELINE})
    change = reporting.add_occurrence(incident, disk_full(), now=NOW)
    assert change.timeline is None
    assert change.increments == {"occurrence_count": 1} and len(change.events) == 1


def test_information_goes_on_the_timeline_cut_and_whole_in_the_event() -> None:
    long_text = "x" * 500
    attachment = AttachmentRef(attachment_id="a1", filename="log.txt", content_type="text/plain", size_bytes=3)
    change = reporting.add_information(
        opened(),
        channel=Channel.EMAIL,
        kind="comment",
        message=long_text,
        author=Reporter(email="ada@example.com"),
        now=NOW,
        attachments=[attachment],
        email_message_ids=["<m1@example.com>"],
    )
    assert change.timeline is not None and len(change.timeline.summary) == 200
    assert change.timeline.summary.endswith("...") and change.timeline.by == "ada@example.com"
    assert change.events[0].data.message == long_text
    assert change.new_attachments[0]["filename"] == "log.txt"
    assert change.email_message_ids == ["<m1@example.com>"]
    assert change.set_fields == {"updated_at": NOW}


def test_a_report_with_a_dedup_key_claims_it_and_one_without_does_not() -> None:
    claim = reporting.claims_dedup_key(disk_full())
    assert claim is not None and claim.dedup_key == "disk-db-1" and not claim.replace
    assert reporting.claims_dedup_key(disk_full(dedup_key=None)) is None
