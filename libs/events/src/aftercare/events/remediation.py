"""Remediation events: a runbook run against a known problem, and escalation to people."""

from __future__ import annotations

from datetime import datetime

from pydantic import Field

from aftercare.events import topics
from aftercare.events.envelope import Event


class RemediationStarted(Event):
    TYPE = "remediation.started"
    VERSION = 1
    TOPIC = topics.REMEDIATION

    incident_id: str
    run_id: str
    runbook: str
    steps: list[str] = Field(default_factory=list)


class RemediationStepCompleted(Event):
    TYPE = "remediation.step_completed"
    VERSION = 1
    TOPIC = topics.REMEDIATION

    incident_id: str
    run_id: str
    step_index: int = Field(ge=0)
    step: str
    outcome: str = Field(description="'succeeded', 'failed' or 'skipped'.")
    output: str = ""
    duration_ms: float | None = None


class ApprovalRequested(Event):
    """A risky step waits for a person's yes before it runs."""

    TYPE = "remediation.approval_requested"
    VERSION = 1
    TOPIC = topics.REMEDIATION

    incident_id: str
    run_id: str
    approval_id: str
    step: str
    reason: str
    expires_at: datetime | None = None


class ApprovalGranted(Event):
    TYPE = "remediation.approval_granted"
    VERSION = 1
    TOPIC = topics.REMEDIATION

    incident_id: str
    run_id: str
    approval_id: str
    by: str
    note: str = ""


class ApprovalRejected(Event):
    TYPE = "remediation.approval_rejected"
    VERSION = 1
    TOPIC = topics.REMEDIATION

    incident_id: str
    run_id: str
    approval_id: str
    by: str
    reason: str = ""


class RemediationSucceeded(Event):
    """The runbook finished and the verification showed the problem gone."""

    TYPE = "remediation.succeeded"
    VERSION = 1
    TOPIC = topics.REMEDIATION

    incident_id: str
    run_id: str
    runbook: str
    verification: str = ""


class RemediationFailed(Event):
    TYPE = "remediation.failed"
    VERSION = 1
    TOPIC = topics.REMEDIATION

    incident_id: str
    run_id: str
    runbook: str
    failed_step: str | None = None
    error: str


class IncidentEscalated(Event):
    """The incident needs people: automation could not fix it or must not try."""

    TYPE = "incident.escalated"
    VERSION = 1
    TOPIC = topics.REMEDIATION

    incident_id: str
    reason: str
    level: int = Field(default=1, ge=1, description="Escalation level, 1 = first line of on-call.")
    escalated_to: str | None = Field(default=None, description="Team, rota or person now responsible.")
