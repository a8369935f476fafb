"""What a decision about an incident returns: the change to make, as data.

Every rule in ``domain/`` (opening, an occurrence, a comment, a move by a person or by another
service's event) returns an :class:`IncidentChange` or an :class:`Opening`: the fields to set,
the timeline entry, the events that announce it, the dedup-key claim or release. The use cases
in ``service_layer/`` hand it to the incident store (``adapters/incident_store.py``), which
writes it as one single-document update with the events in the outbox. Nothing here reads the
clock or touches the store: ``now`` comes in as an argument.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from aftercare.events.envelope import Envelope, Event, envelope_for
from aftercare.events.incidents import IncidentStatus, Reporter
from aftercare.intake.domain.incident import TimelineEntry

# The ``source`` of every event intake publishes.
SOURCE = "intake"

# Events a channel wants published with an incident's own event, stored in the same outbox write
# so the two cannot drift apart (e.g. the acknowledgement email intake owes an email's sender).
# Called with the incident's id and number, which are only known once the incident is decided.
FollowUps = Callable[[str, str], Sequence[Event]]


@dataclass(frozen=True)
class DedupKeyClaim:
    """Point the tenant's dedup key at this incident (``replace``: even if another holds it)."""

    dedup_key: str
    replace: bool = False


@dataclass(frozen=True)
class IncidentChange:
    """One change of an existing incident, written as one update with its events in the outbox.

    ``expect_status``: write only if the incident still has this status (a concurrent move makes
    the write miss rather than clobber). ``applied_event_id``: the consumed event this change
    applies, recorded so a redelivery is not applied twice. ``expect_occurrence_count``: write
    only over this count (the change announces the next one; another instance may have counted
    one in between).
    """

    incident_id: str
    tenant_id: str
    set_fields: dict[str, Any] = field(default_factory=dict)
    increments: dict[str, int] = field(default_factory=dict)
    raise_to: dict[str, Any] = field(default_factory=dict)
    timeline: TimelineEntry | None = None
    new_attachments: list[dict[str, Any]] = field(default_factory=list)
    email_message_ids: list[str] = field(default_factory=list)
    # Values added to array fields unless there already (e.g. the fields a person set by hand).
    add_to_set: dict[str, list[Any]] = field(default_factory=dict)
    events: list[Envelope[Any]] = field(default_factory=list)
    expect_status: IncidentStatus | None = None
    expect_occurrence_count: int | None = None
    applied_event_id: str | None = None
    release_dedup_key: str | None = None
    claim_dedup_key: DedupKeyClaim | None = None


@dataclass(frozen=True)
class Opening:
    """A new incident: its stored fields and the events announcing it (IncidentReported first)."""

    fields: dict[str, Any]
    events: list[Envelope[Any]]


def as_stored(moment: datetime) -> datetime:
    """A time as the store keeps it (UTC, milliseconds), so what intake holds equals what it reads back."""
    moment = moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)
    return moment.replace(microsecond=moment.microsecond // 1000 * 1000)


def timeline_entry(
    kind: str,
    summary: str,
    *,
    at: datetime,
    by: str | None = None,
    channel: str | None = None,
    event_id: str | None = None,
) -> TimelineEntry:
    return TimelineEntry(at=at, kind=kind, summary=summary, by=by, channel=channel, event_id=event_id)


def who(reporter: Reporter) -> str | None:
    """How a reporter is named on the timeline: the first of name, email, phone, system."""
    return reporter.name or reporter.email or reporter.phone or reporter.system


def announce(
    data: Event,
    *,
    tenant_id: str,
    incident_id: str,
    now: datetime,
    caused_by: Envelope[Any] | None = None,
) -> Envelope[Any]:
    """The envelope of an event intake publishes about one incident."""
    return envelope_for(
        data, source=SOURCE, tenant_id=tenant_id, incident_id=incident_id, caused_by=caused_by, time=now
    )


def follow_ups(also_publish: FollowUps | None, cause: Envelope[Any], number: str) -> list[Envelope[Any]]:
    """The follow-up events of ``cause``, caused by it and stamped with its time."""
    if also_publish is None or cause.incident_id is None:
        return []
    return [
        envelope_for(
            data,
            source=SOURCE,
            tenant_id=cause.tenant_id,
            incident_id=cause.incident_id,
            caused_by=cause,
            time=cause.time,
        )
        for data in also_publish(cause.incident_id, number)
    ]
