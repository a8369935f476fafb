"""The incident record intake keeps: what a customer reads back, with its timeline."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import AliasChoices, BaseModel, ConfigDict, Field

from aftercare.events.incidents import AttachmentRef, Channel, IncidentStatus, Reporter, Severity
from aftercare.events.tenants import Priority

# Beyond this many repeats of the same alert the timeline keeps only the counter, so an alert
# that fires every minute for a month does not grow the document without bound.
MAX_OCCURRENCES_ON_TIMELINE = 20


class TimelineEntry(BaseModel):
    """One change of the incident, with the event that announced or caused it."""

    model_config = ConfigDict(extra="ignore")

    at: datetime
    kind: str = Field(description="e.g. reported, occurrence, comment, acknowledged, triaged, resolved")
    summary: str
    by: str | None = None
    channel: str | None = None
    event_id: str | None = Field(default=None, description="Id of the event recording this change.")


class IncidentReport(BaseModel):
    """What a channel learned about a problem, before it is an incident."""

    title: str
    description: str = ""
    channel: Channel
    severity: Severity = Severity.ERROR
    reporter: Reporter = Field(default_factory=Reporter)
    system: str | None = None
    source: str | None = None
    dedup_key: str | None = None
    labels: dict[str, str] = Field(default_factory=dict)
    attachments: list[AttachmentRef] = Field(default_factory=list)
    occurred_at: datetime | None = None
    # Extra facts a channel keeps with the incident (PagerDuty links, email Message-IDs, ...).
    details: dict[str, Any] = Field(default_factory=dict)
    # Identifies this sighting of the problem when the sender can say so (an Alertmanager alert's
    # fingerprint and start): the same sighting sent again (an HA pair, a repeat notification)
    # is not another occurrence.
    sighting: str | None = None


class Incident(BaseModel):
    """An incident as intake stores and shows it."""

    model_config = ConfigDict(extra="ignore")

    incident_id: str = Field(validation_alias=AliasChoices("_id", "incident_id"))
    tenant_id: str
    number: str
    title: str
    description: str = ""
    channel: Channel
    severity: Severity
    status: IncidentStatus
    priority: Priority | None = None
    category: str | None = None
    reporter: Reporter = Field(default_factory=Reporter)
    system: str | None = None
    source: str | None = None
    dedup_key: str | None = None
    labels: dict[str, str] = Field(default_factory=dict)
    attachments: list[AttachmentRef] = Field(default_factory=list)
    occurrence_count: int = 1
    last_sighting: str | None = Field(default=None, description="The last sighting counted (see IncidentReport).")
    first_seen_at: datetime
    last_seen_at: datetime
    response_due_at: datetime | None = None
    resolution_due_at: datetime | None = None
    created_at: datetime
    updated_at: datetime
    resolved_at: datetime | None = None
    manual_fields: list[str] = Field(
        default_factory=list,
        description="Fields a person set by hand (priority, category): triage never changes them again.",
    )
    classified_by: str | None = Field(default=None, description="Who last set priority or category by hand.")
    duplicate_of: str | None = Field(
        default=None, description="The first incident of the same problem (its id), where the work happens."
    )
    duplicate_of_number: str | None = Field(default=None, description="That first incident's number, e.g. INC-1042.")
    duplicate_count: int = Field(default=0, description="How many later incidents were found to be this same problem.")
    timeline: list[TimelineEntry] = Field(default_factory=list)
    details: dict[str, Any] = Field(default_factory=dict)


def format_number(sequence: int) -> str:
    return f"INC-{sequence}"
