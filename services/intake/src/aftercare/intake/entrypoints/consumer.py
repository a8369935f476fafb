"""Intake moves incidents through their lifecycle from triage and remediation events.

The handler table: each handler says what its event means (the status it suggests, what goes on
the timeline); ``service_layer/apply_event.py`` does the rest.
"""

from __future__ import annotations

from aftercare.events import topics
from aftercare.events.consumer import HandlerTable
from aftercare.events.envelope import Envelope
from aftercare.events.incidents import IncidentResolved
from aftercare.events.incidents import IncidentStatus as Status
from aftercare.events.remediation import (
    ApprovalRequested,
    IncidentEscalated,
    RemediationFailed,
    RemediationStarted,
    RemediationSucceeded,
)
from aftercare.events.triage import (
    DiagnosisCompleted,
    IncidentGrouped,
    IncidentTriaged,
    ProblemCleared,
    ProblemDetected,
)
from aftercare.intake.adapters.incident_store import IncidentStore
from aftercare.intake.domain.moves import IncidentState
from aftercare.intake.service_layer import diagnostic_problems
from aftercare.intake.service_layer.apply_event import apply_event

CONSUMER_GROUP = "intake"
TOPICS = [topics.TRIAGE, topics.REMEDIATION]


class LifecycleFromEvents:
    """Each handler names the status the event suggests and what goes on the timeline."""

    def __init__(self, store: IncidentStore) -> None:
        self._store = store

    async def triaged(self, envelope: Envelope[IncidentTriaged]) -> None:
        event = envelope.data
        await apply_event(
            self._store,
            envelope,
            proposed=Status.TRIAGED,
            kind="triaged",
            summary=f"Triaged as {event.priority.value} {event.category}",
            set_fields={
                "priority": event.priority.value,
                "category": event.category,
                "response_due_at": event.response_due_at,
                "resolution_due_at": event.resolution_due_at,
            },
        )

    async def diagnosed(self, envelope: Envelope[DiagnosisCompleted]) -> None:
        event = envelope.data
        await apply_event(
            self._store, envelope, proposed=None, kind="diagnosis", summary=event.conclusion or "Diagnosis completed"
        )

    async def remediation_started(self, envelope: Envelope[RemediationStarted]) -> None:
        await apply_event(
            self._store,
            envelope,
            proposed=Status.REMEDIATING,
            kind="remediating",
            summary=f"Runbook {envelope.data.runbook} started",
        )

    async def approval_requested(self, envelope: Envelope[ApprovalRequested]) -> None:
        await apply_event(
            self._store,
            envelope,
            proposed=None,
            kind="approval-requested",
            summary=f"Waiting for approval: {envelope.data.reason}",
        )

    async def remediation_succeeded(self, envelope: Envelope[RemediationSucceeded]) -> None:
        event = envelope.data

        def resolved(incident: IncidentState) -> IncidentResolved:
            return IncidentResolved(
                incident_id=event.incident_id,
                number=incident.number,
                by="remediation",
                resolution=f"Fixed by runbook {event.runbook}. {event.verification}".strip(),
            )

        await apply_event(
            self._store,
            envelope,
            proposed=Status.RESOLVED,
            kind="resolved",
            summary=f"Runbook {event.runbook} fixed it",
            announcement=resolved,
        )

    async def remediation_failed(self, envelope: Envelope[RemediationFailed]) -> None:
        event = envelope.data
        await apply_event(
            self._store,
            envelope,
            proposed=None,
            kind="remediation-failed",
            summary=f"Runbook {event.runbook} failed: {event.error}",
        )

    async def escalated(self, envelope: Envelope[IncidentEscalated]) -> None:
        event = envelope.data
        await apply_event(
            self._store,
            envelope,
            proposed=Status.ESCALATED,
            kind="escalated",
            summary=f"Escalated to {event.escalated_to or 'on-call'}: {event.reason}",
        )


def handlers(store: IncidentStore) -> HandlerTable:
    lifecycle = LifecycleFromEvents(store)

    async def problem_detected(envelope: Envelope[ProblemDetected]) -> None:
        await diagnostic_problems.open_detected_problem(store, envelope)

    async def problem_cleared(envelope: Envelope[ProblemCleared]) -> None:
        await diagnostic_problems.resolve_cleared_problem(store, envelope)

    async def grouped(envelope: Envelope[IncidentGrouped]) -> None:
        await diagnostic_problems.link_duplicate(store, envelope)

    return {
        ProblemDetected: [problem_detected],
        ProblemCleared: [problem_cleared],
        IncidentGrouped: [grouped],
        IncidentTriaged: [lifecycle.triaged],
        DiagnosisCompleted: [lifecycle.diagnosed],
        RemediationStarted: [lifecycle.remediation_started],
        ApprovalRequested: [lifecycle.approval_requested],
        RemediationSucceeded: [lifecycle.remediation_succeeded],
        RemediationFailed: [lifecycle.remediation_failed],
        IncidentEscalated: [lifecycle.escalated],
    }
