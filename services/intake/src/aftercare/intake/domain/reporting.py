"""What a report does to the incidents: open one, count another occurrence, or add information.

Whether a report opens an incident or is an occurrence of an open one is decided by its dedup
key (an alert fingerprint, a caller's number, a PagerDuty dedup_key): the use case looks up the
open incident that holds the key (``service_layer/report_incident.py``) and asks here what
changes.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from aftercare.events.incidents import AttachmentRef, Channel, IncidentReported, IncidentUpdated, Reporter
from aftercare.events.incidents import IncidentStatus as Status
from aftercare.intake.domain.changes import (
    DedupKeyClaim,
    FollowUps,
    IncidentChange,
    Opening,
    announce,
    as_stored,
    follow_ups,
    timeline_entry,
    who,
)
from aftercare.intake.domain.incident import MAX_OCCURRENCES_ON_TIMELINE, Incident, IncidentReport

# Longer comments are cut on the timeline (the event carries the whole text).
TIMELINE_SUMMARY_CHARS = 200


def open_incident(
    tenant_id: str,
    incident_id: str,
    number: str,
    report: IncidentReport,
    *,
    now: datetime,
    email_message_ids: Sequence[str] = (),
    also_publish: FollowUps | None = None,
) -> Opening:
    """A new incident from ``report``: status reported, one occurrence, announced by IncidentReported.

    ``report.occurred_at`` (when the sender says it happened) becomes first and last seen;
    without it, ``now``.
    """
    seen = as_stored(report.occurred_at) if report.occurred_at else now
    event = announce(
        IncidentReported(
            incident_id=incident_id,
            number=number,
            title=report.title,
            description=report.description,
            channel=report.channel,
            severity=report.severity,
            reporter=report.reporter,
            system=report.system,
            source=report.source,
            dedup_key=report.dedup_key,
            labels=report.labels,
            attachments=report.attachments,
            reported_at=seen,
        ),
        tenant_id=tenant_id,
        incident_id=incident_id,
        now=now,
    )
    followers = follow_ups(also_publish, event, number)
    entry = timeline_entry(
        "reported",
        f"Reported by {report.channel.value}: {report.title}",
        at=now,
        by=who(report.reporter),
        channel=report.channel.value,
        event_id=event.id,
    )
    fields: dict[str, Any] = {
        "_id": incident_id,
        "tenant_id": tenant_id,
        "number": number,
        "title": report.title,
        "description": report.description,
        "channel": report.channel.value,
        "severity": report.severity.value,
        "status": Status.REPORTED.value,
        "reporter": report.reporter.model_dump(mode="json"),
        "system": report.system,
        "source": report.source,
        "dedup_key": report.dedup_key,
        "labels": report.labels,
        "attachments": [a.model_dump(mode="json") for a in report.attachments],
        "occurrence_count": 1,
        "last_sighting": report.sighting,
        "first_seen_at": seen,
        "last_seen_at": seen,
        "created_at": now,
        "updated_at": now,
        "details": report.details,
        "email_message_ids": list(email_message_ids),
        "timeline": [entry.model_dump(mode="python")],
        "applied_events": [],
    }
    return Opening(fields, [event, *followers])


def already_counted(incident: Incident, report: IncidentReport) -> bool:
    """The report is the sighting the incident counted last, sent again (an Alertmanager HA pair,
    a repeat notification of the same firing): no new occurrence, nothing changes."""
    return report.sighting is not None and report.sighting == incident.last_sighting


def add_occurrence(
    incident: Incident, report: IncidentReport, *, now: datetime, also_publish: FollowUps | None = None
) -> IncidentChange:
    """The same problem reported again: one more occurrence, last seen moved on.

    The timeline shows the first ``MAX_OCCURRENCES_ON_TIMELINE`` occurrences; after that only the
    counter grows, so an alert firing every minute for a month does not grow the incident
    without bound.
    """
    seen = as_stored(report.occurred_at) if report.occurred_at else now
    count = incident.occurrence_count + 1
    event = announce(
        IncidentUpdated(
            incident_id=incident.incident_id,
            number=incident.number,
            channel=report.channel,
            kind="occurrence",
            message=report.title,
            author=report.reporter,
            occurrence_count=count,
            last_seen_at=seen,
            attachments=report.attachments,
        ),
        tenant_id=incident.tenant_id,
        incident_id=incident.incident_id,
        now=now,
    )
    entry = None
    if count <= MAX_OCCURRENCES_ON_TIMELINE:
        entry = timeline_entry(
            "occurrence",
            f"Seen again ({count}x): {report.title}",
            at=now,
            by=who(report.reporter),
            channel=report.channel.value,
            event_id=event.id,
        )
    return IncidentChange(
        incident.incident_id,
        incident.tenant_id,
        set_fields={"updated_at": now} | ({"last_sighting": report.sighting} if report.sighting else {}),
        increments={"occurrence_count": 1},
        raise_to={"last_seen_at": seen},
        timeline=entry,
        events=[event, *follow_ups(also_publish, event, incident.number)],
        expect_occurrence_count=incident.occurrence_count,
    )


def add_information(
    incident: Incident,
    *,
    channel: Channel,
    kind: str,
    message: str,
    author: Reporter,
    now: datetime,
    attachments: Sequence[AttachmentRef] = (),
    email_message_ids: Sequence[str] = (),
    set_fields: dict[str, Any] | None = None,
    also_publish: FollowUps | None = None,
) -> IncidentChange:
    """A comment or details (an email reply, a caller's voice message) added to an incident.

    ``kind`` is the timeline kind (``comment``, ``details``); ``set_fields`` are other fields the
    information changes (a phone call's title once its transcript arrives).
    """
    event = announce(
        IncidentUpdated(
            incident_id=incident.incident_id,
            number=incident.number,
            channel=channel,
            kind=kind,
            message=message,
            author=author,
            occurrence_count=incident.occurrence_count,
            last_seen_at=incident.last_seen_at,
            attachments=list(attachments),
        ),
        tenant_id=incident.tenant_id,
        incident_id=incident.incident_id,
        now=now,
    )
    summary = message if len(message) <= TIMELINE_SUMMARY_CHARS else message[: TIMELINE_SUMMARY_CHARS - 3] + "..."
    return IncidentChange(
        incident.incident_id,
        incident.tenant_id,
        set_fields=(set_fields or {}) | {"updated_at": now},
        timeline=timeline_entry(kind, summary, at=now, by=who(author), channel=channel.value, event_id=event.id),
        new_attachments=[a.model_dump(mode="json") for a in attachments],
        email_message_ids=list(email_message_ids),
        events=[event, *follow_ups(also_publish, event, incident.number)],
    )


def claims_dedup_key(report: IncidentReport) -> DedupKeyClaim | None:
    """An incident opened with a dedup key holds it while open: later reports with it are occurrences."""
    return DedupKeyClaim(report.dedup_key) if report.dedup_key else None
