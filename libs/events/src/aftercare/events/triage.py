"""Triage events: what kind of problem an incident is, how urgent, whether it repeats another,
what probes found, and what the regular diagnostics of a customer's systems detected."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from aftercare.events import topics
from aftercare.events.envelope import Event
from aftercare.events.incidents import Severity
from aftercare.events.tenants import Priority

Verdict = Literal["confirmed_down", "degraded", "healthy"]


class RuleFired(BaseModel):
    """One triage rule that matched, and what it set."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    rule: str
    version: int = 1
    matched: list[str] = Field(default_factory=list, description="Which conditions matched, with their values.")
    sets: dict[str, str] = Field(default_factory=dict, description="What the rule set: category, runbook, ...")


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
    # Added with the triage service (additive; older consumers ignore them):
    system: str | None = Field(default=None, description="The tenant's affected system, if one was recognised.")
    runbook: str | None = Field(default=None, description="The runbook a rule names for this incident.")
    impact: str | None = Field(default=None, description="high, medium or low: from the system and the tier.")
    urgency: str | None = Field(default=None, description="high, medium or low: from severity and the text.")
    explanation: str = Field(default="", description="For a person: which rules fired and why this priority.")
    rules_fired: list[RuleFired] = Field(default_factory=list)
    confidence: float | None = Field(default=None, ge=0, le=1, description="How sure the text reading was.")
    flapping: bool = Field(default=False, description="The source opens and resolves repeatedly.")
    hold_paging: bool = Field(default=False, description="Do not page for it again (flapping).")
    manual_fields: list[str] = Field(
        default_factory=list, description="Fields a person set by hand that triage left as they were."
    )
    sla_tier: str | None = Field(default=None, description="The contract tier the deadlines come from.")


class IncidentGrouped(Event):
    """Triage found that an incident reports the same problem as an earlier open one.

    Keyed by the duplicate's id. Intake links the duplicate to the first and counts it there.
    """

    TYPE = "incident.grouped"
    VERSION = 1
    TOPIC = topics.TRIAGE

    incident_id: str = Field(description="The later incident: a duplicate.")
    number: str
    duplicate_of: str = Field(description="The first incident's id; the one people work on.")
    duplicate_of_number: str
    reason: Literal["dedup_key", "fingerprint", "same_system"]
    detail: str = ""
    channel: str | None = Field(default=None, description="The duplicate's channel (email, phone, ...).")


class ProbeResult(BaseModel):
    """One check run against a system (HTTP health URL, TCP connect, ...)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    probe: str
    target: str
    healthy: bool
    detail: str = ""
    latency_ms: float | None = None
    # Added with the triage service:
    status: Literal["up", "down", "degraded", "refused"] | None = Field(
        default=None, description="refused: the target was not probed (not on the tenant's allow-list)."
    )
    at: datetime | None = None


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
    # Added with the triage service:
    verdict: Verdict | None = Field(
        default=None, description="confirmed_down, degraded, or healthy (possibly a false alarm)."
    )
    system: str | None = None


class ProblemDetected(Event):
    """Regular diagnostics found a system down or far slower than usual: intake opens an incident.

    ``incident_id`` is chosen by triage (one per episode), so intake's opening is idempotent.
    """

    TYPE = "problem.detected"
    VERSION = 1
    TOPIC = topics.TRIAGE

    incident_id: str
    system: str
    kind: Literal["down", "performance"]
    title: str
    description: str = ""
    severity: Severity = Severity.CRITICAL
    target: str
    dedup_key: str
    evidence: list[ProbeResult] = Field(default_factory=list)
    detected_at: datetime


class ProblemCleared(Event):
    """The system detected as having a problem answers normally again: intake resolves the incident."""

    TYPE = "problem.cleared"
    VERSION = 1
    TOPIC = topics.TRIAGE

    incident_id: str
    system: str
    kind: Literal["down", "performance"]
    target: str
    detail: str = ""
    cleared_at: datetime


class TargetProbed(Event):
    """One scheduled probe of a registered diagnostic target, healthy or not.

    It is what the operators' dashboard draws each target's latency from (the sparkline);
    published through triage's outbox with the target's new health, so a sample is not lost
    to a crash, and carried by the periodic sweep rather than at once (it is not urgent).
    """

    TYPE = "target.probed"
    VERSION = 1
    TOPIC = topics.TRIAGE

    system: str
    target: str
    probe: str
    status: Literal["up", "down", "degraded", "refused"] | None = None
    latency_ms: float | None = None
    probed_at: datetime
