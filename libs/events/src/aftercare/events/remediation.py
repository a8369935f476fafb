"""Remediation events: a runbook run against a known problem, and escalation to people."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from aftercare.events import topics
from aftercare.events.envelope import Event

StepPhase = Literal["fix", "verification", "rollback"]


class StepReport(BaseModel):
    """What one runbook step did: carried by an escalation so people see what was tried."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    phase: StepPhase = "fix"
    index: int = Field(ge=0)
    step: str
    action: str
    outcome: str = Field(description="'succeeded', 'failed', 'skipped' or 'not_run' (may have run; never repeated).")
    output: str = ""
    attempts: int = Field(default=1, ge=0)
    duration_ms: float | None = None


class EscalationContact(BaseModel):
    """A person paged at one escalation level."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    email: str | None = None
    phone: str | None = None


class RemediationStarted(Event):
    TYPE = "remediation.started"
    VERSION = 1
    TOPIC = topics.REMEDIATION

    incident_id: str
    run_id: str
    runbook: str
    steps: list[str] = Field(default_factory=list)
    # Added with the remediation service (additive; older consumers ignore them):
    runbook_version: int | None = None
    system: str | None = None


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
    # Added with the remediation service:
    phase: StepPhase = "fix"
    action: str | None = Field(default=None, description="http_admin, wait, rerun_diagnosis, add_note, page_oncall")
    attempts: int = Field(default=1, ge=0)


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
    # Added with the remediation service:
    runbook: str | None = None
    approvers: list[str] = Field(default_factory=list, description="Operators who may decide; empty = any responder.")


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
    # Added with the remediation service (additive; older consumers ignore them):
    escalation_id: str | None = None
    run_id: str | None = None
    runbook: str | None = None
    tried: list[StepReport] = Field(default_factory=list, description="Each step run, with what it returned.")
    rollback_outcome: str | None = Field(
        default=None, description="'succeeded', 'failed', 'not_needed' or 'none_defined' when a fix was rolled back."
    )
    contacts: list[EscalationContact] = Field(default_factory=list, description="Whom to page at this level.")
    acknowledge_url: str | None = Field(default=None, description="A link that acknowledges (secret token).")
    acknowledge_by: datetime | None = Field(default=None, description="When the next level is paged if nobody acks.")


class EscalationAcknowledged(Event):
    """A person took the escalated incident: no further levels are paged."""

    TYPE = "escalation.acknowledged"
    VERSION = 1
    TOPIC = topics.REMEDIATION

    incident_id: str
    escalation_id: str
    level: int = Field(ge=1)
    by: str
    via: str = Field(description="'api', 'link' or 'incident' (acknowledged on the incident in intake).")


class RemediationNoteAdded(Event):
    """A runbook step wrote a note on the incident's timeline."""

    TYPE = "remediation.note_added"
    VERSION = 1
    TOPIC = topics.REMEDIATION

    incident_id: str
    run_id: str
    note: str
