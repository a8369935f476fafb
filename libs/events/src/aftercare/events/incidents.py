"""Incident events, published by intake: the lifecycle record a customer sees."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum

from pydantic import BaseModel, ConfigDict, Field

from aftercare.events import topics
from aftercare.events.envelope import Event
from aftercare.events.tenants import Priority


class Channel(StrEnum):
    """The door an incident came through."""

    API = "api"
    PAGERDUTY = "pagerduty"
    ALERTMANAGER = "alertmanager"
    EMAIL = "email"
    PHONE = "phone"
    WEB = "web"
    DIAGNOSTIC = "diagnostic"
    OPERATOR = "operator"


class Severity(StrEnum):
    """Severity as the reporter stated it (PagerDuty's four levels); triage sets the priority."""

    CRITICAL = "critical"
    ERROR = "error"
    WARNING = "warning"
    INFO = "info"


class IncidentStatus(StrEnum):
    REPORTED = "reported"
    ACKNOWLEDGED = "acknowledged"
    TRIAGED = "triaged"
    REMEDIATING = "remediating"
    REOPENED = "reopened"
    ESCALATED = "escalated"
    RESOLVED = "resolved"
    CLOSED = "closed"


class _Part(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Reporter(_Part):
    """Who or what reported the problem."""

    name: str | None = None
    email: str | None = None
    phone: str | None = None
    system: str | None = Field(default=None, description="Monitoring system or integration name.")


class AttachmentRef(_Part):
    """A file kept by intake (e.g. a faxed PDF); the bytes stay in intake's store."""

    attachment_id: str
    filename: str
    content_type: str
    size_bytes: int = Field(ge=0)


class IncidentReported(Event):
    """A new incident was opened."""

    TYPE = "incident.reported"
    VERSION = 1
    TOPIC = topics.INCIDENTS

    incident_id: str
    number: str = Field(description="Human number per tenant, e.g. 'INC-1042'.")
    title: str
    description: str = ""
    channel: Channel
    severity: Severity = Severity.ERROR
    reporter: Reporter = Field(default_factory=Reporter)
    system: str | None = Field(default=None, description="Name of the affected tenant system, if known.")
    source: str | None = Field(default=None, description="Host or component that has the problem.")
    dedup_key: str | None = None
    labels: dict[str, str] = Field(default_factory=dict)
    attachments: list[AttachmentRef] = Field(default_factory=list)
    reported_at: datetime


class IncidentUpdated(Event):
    """More information arrived for an open incident: a repeat alert, a reply, a comment."""

    TYPE = "incident.updated"
    VERSION = 1
    TOPIC = topics.INCIDENTS

    incident_id: str
    number: str
    channel: Channel
    kind: str = Field(description="'occurrence' (the same problem again), 'comment' or 'details'.")
    message: str = ""
    author: Reporter = Field(default_factory=Reporter)
    occurrence_count: int = Field(default=1, ge=1)
    last_seen_at: datetime
    attachments: list[AttachmentRef] = Field(default_factory=list)


class IncidentAcknowledged(Event):
    """Someone took ownership of the incident."""

    TYPE = "incident.acknowledged"
    VERSION = 1
    TOPIC = topics.INCIDENTS

    incident_id: str
    number: str
    by: str
    channel: Channel
    note: str = ""


class IncidentResolved(Event):
    """The problem is gone."""

    TYPE = "incident.resolved"
    VERSION = 1
    TOPIC = topics.INCIDENTS

    incident_id: str
    number: str
    by: str = Field(description="Who resolved it: a person, 'remediation', or the monitoring source.")
    channel: Channel | None = None
    resolution: str = ""


class IncidentReopened(Event):
    """A resolved incident came back."""

    TYPE = "incident.reopened"
    VERSION = 1
    TOPIC = topics.INCIDENTS

    incident_id: str
    number: str
    by: str
    reason: str = ""


class IncidentClosed(Event):
    """A resolved incident is finished: the customer confirmed, or it stayed resolved long enough."""

    TYPE = "incident.closed"
    VERSION = 1
    TOPIC = topics.INCIDENTS

    incident_id: str
    number: str
    by: str
    reason: str = ""


class IncidentReclassified(Event):
    """A person set an incident's priority or category by hand; triage never overrides it."""

    TYPE = "incident.reclassified"
    VERSION = 1
    TOPIC = topics.INCIDENTS

    incident_id: str
    number: str
    by: str = Field(description="The person who made the choice.")
    priority: Priority | None = Field(default=None, description="The priority chosen, if it was changed.")
    category: str | None = Field(default=None, description="The category chosen, if it was changed.")
    reason: str = ""
