"""Status moves: asked for by a person (acknowledge, resolve, reopen, close) or suggested by
another service's event (triage, remediation). ``lifecycle.py`` says which moves exist; this
module says what each one changes.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from aftercare.events.envelope import Envelope, Event
from aftercare.events.incidents import (
    Channel,
    IncidentAcknowledged,
    IncidentClosed,
    IncidentReopened,
    IncidentResolved,
)
from aftercare.events.incidents import IncidentStatus as Status
from aftercare.intake.domain import lifecycle
from aftercare.intake.domain.changes import DedupKeyClaim, IncidentChange, announce, timeline_entry


@dataclass(frozen=True)
class IncidentState:
    """What a move needs to know of an incident (read without its timeline)."""

    incident_id: str
    tenant_id: str
    number: str
    status: Status
    dedup_key: str | None = None
    # Fields a person set by hand (priority, category): automation records, never overwrites them.
    manual_fields: frozenset[str] = frozenset()


# Moves a person may ask for, and whether asking again when it is done already is a no-op.
PERSON_MOVES = (Status.ACKNOWLEDGED, Status.RESOLVED, Status.REOPENED, Status.CLOSED)


def move_by_person(
    incident: IncidentState,
    target: Status,
    *,
    by: str,
    now: datetime,
    channel: Channel | None = None,
    note: str = "",
) -> IncidentChange | None:
    """What a person's move does, or None when the incident is there already (asking twice is fine).

    ``note`` is the acknowledgement's note, the resolution, or the reason to reopen or close.
    Raises ``lifecycle.TransitionRefused`` (saying what is possible) for a move the lifecycle
    does not allow. Resolving releases the incident's dedup key (the next alert opens a new
    incident); reopening claims it back.
    """
    if target not in PERSON_MOVES:
        raise ValueError(f"{target.value} is not a move a person asks for")
    done_already = {
        Status.ACKNOWLEDGED: {Status.ACKNOWLEDGED},
        Status.RESOLVED: {Status.RESOLVED, Status.CLOSED},
        Status.CLOSED: {Status.CLOSED},
        Status.REOPENED: set(),
    }[target]
    if incident.status in done_already:
        return None
    lifecycle.require_move(incident.status, target)
    suffix = f": {note}" if note else ""
    data: Event
    if target == Status.ACKNOWLEDGED:
        data = IncidentAcknowledged(
            incident_id=incident.incident_id, number=incident.number, by=by, channel=channel, note=note
        )
        summary = f"Acknowledged by {by}"
    elif target == Status.RESOLVED:
        data = IncidentResolved(
            incident_id=incident.incident_id, number=incident.number, by=by, channel=channel, resolution=note
        )
        summary = f"Resolved by {by}{suffix}"
    elif target == Status.REOPENED:
        data = IncidentReopened(incident_id=incident.incident_id, number=incident.number, by=by, reason=note)
        summary, channel = f"Reopened by {by}{suffix}", None
    else:
        data = IncidentClosed(incident_id=incident.incident_id, number=incident.number, by=by, reason=note)
        summary, channel = f"Closed by {by}{suffix}", None
    event = announce(data, tenant_id=incident.tenant_id, incident_id=incident.incident_id, now=now)
    fields: dict[str, Any] = {"status": target.value, "updated_at": now}
    if target == Status.RESOLVED:
        fields["resolved_at"] = now
    return IncidentChange(
        incident.incident_id,
        incident.tenant_id,
        set_fields=fields,
        timeline=timeline_entry(
            target.value, summary, at=now, by=by, channel=channel.value if channel else None, event_id=event.id
        ),
        events=[event],
        expect_status=incident.status,
        release_dedup_key=incident.dedup_key if target == Status.RESOLVED else None,
        claim_dedup_key=(
            DedupKeyClaim(incident.dedup_key, replace=True)
            if target == Status.REOPENED and incident.dedup_key
            else None
        ),
    )


# An event intake announces because another service's event moved the incident (e.g.
# IncidentResolved after a successful remediation), made from the incident as it is.
Announcement = Callable[[IncidentState], Event]
# The fields an event sets: fixed, or decided from the incident as it is (e.g. triage's deadlines,
# which do not apply when a person chose the priority and triage did not know yet).
FieldsToSet = dict[str, Any] | Callable[[IncidentState], dict[str, Any]]


def move_by_event(
    incident: IncidentState,
    cause: Envelope[Any],
    *,
    proposed: Status | None,
    kind: str,
    summary: str,
    now: datetime,
    set_fields: FieldsToSet | None = None,
    announcement: Announcement | None = None,
    by: str | None = None,
    by_person: bool = False,
    kind_if_moved: str | None = None,
) -> IncidentChange | None:
    """What an event from triage or remediation does to its incident; None to ignore it.

    The event always goes on the timeline (with ``set_fields``, e.g. triage's priority, except
    the fields a person set by hand). The status it ``proposed`` is applied only when the
    lifecycle allows it now (automation never moves an incident backwards, see
    ``lifecycle.automated_move``; an event that records what a person did elsewhere,
    ``by_person``, moves it as that person could here); then ``announcement`` is published
    too, and the entry is of ``kind_if_moved`` if given. ``by`` names who the entry is by (the
    event's source if not given). An event naming another tenant than its incident is ignored,
    whatever a bug elsewhere sends.
    """
    if cause.tenant_id != incident.tenant_id:
        return None
    target: Status | None = None
    if proposed is not None:
        if by_person:
            target = proposed if lifecycle.can_move(incident.status, proposed) else None
        else:
            target = lifecycle.automated_move(incident.status, proposed)
    wanted = set_fields(incident) if callable(set_fields) else dict(set_fields or {})
    kept = {key: value for key, value in wanted.items() if key not in incident.manual_fields}
    fields = kept | {"updated_at": now}
    events: list[Envelope[Any]] = []
    if target is not None:
        fields["status"] = target.value
        if target == Status.RESOLVED:
            fields["resolved_at"] = now
        if announcement is not None:
            events.append(
                announce(
                    announcement(incident),
                    tenant_id=incident.tenant_id,
                    incident_id=incident.incident_id,
                    now=now,
                    caused_by=cause,
                )
            )
    return IncidentChange(
        incident.incident_id,
        incident.tenant_id,
        set_fields=fields,
        timeline=timeline_entry(
            kind_if_moved if target is not None and kind_if_moved else kind,
            summary,
            at=now,
            by=by or cause.source,
            event_id=cause.id,
        ),
        events=events,
        expect_status=incident.status,
        applied_event_id=cause.id,
        release_dedup_key=incident.dedup_key if target == Status.RESOLVED else None,
    )
