"""Triage events: what kind of problem an incident is, how urgent, and what probes found."""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, ConfigDict, Field

from aftercare.events import topics
from aftercare.events.envelope import Event
from aftercare.events.tenants import Priority


class IncidentTriaged(Event):
    """Triage classified the incident and set its priority and SLA deadlines."""

    TYPE = "incident.triaged"
    VERSION = 1
    TOPIC = topics.TRIAGE

    incident_id: str
    number: str
    priority: Priority
    category: str = Field(description="e.g. 'database', 'network', 'disk', 'application'.")
    response_due_at: datetime | None = None
    resolution_due_at: datetime | None = None
    duplicate_of: str | None = Field(default=None, description="Incident id this one repeats, if grouped.")
    rule: str | None = Field(default=None, description="The classification rule that matched.")


class ProbeResult(BaseModel):
    """One check run against a system (HTTP health URL, TCP connect, ...)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    probe: str
    target: str
    healthy: bool
    detail: str = ""
    latency_ms: float | None = None


class DiagnosisCompleted(Event):
    """Probes ran against the affected system; their findings and the suspected cause."""

    TYPE = "diagnosis.completed"
    VERSION = 1
    TOPIC = topics.TRIAGE

    incident_id: str
    diagnosis_id: str
    results: list[ProbeResult] = Field(default_factory=list)
    conclusion: str = ""
    suspected_cause: str | None = None
    recommended_runbook: str | None = None
