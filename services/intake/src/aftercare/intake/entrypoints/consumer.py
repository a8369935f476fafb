"""Intake moves incidents through their lifecycle from triage and remediation events.

The handler table: each handler says what its event means (the status it suggests, what goes on
the timeline); ``service_layer/apply_event.py`` does the rest.
"""

from __future__ import annotations

from typing import Any

from aftercare.events import topics
from aftercare.events.consumer import HandlerTable
from aftercare.events.envelope import Envelope
from aftercare.events.incidents import Channel, IncidentAcknowledged, IncidentResolved
from aftercare.events.incidents import IncidentStatus as Status
from aftercare.events.remediation import (
    ApprovalGranted,
    ApprovalRejected,
    ApprovalRequested,
    EscalationAcknowledged,
    IncidentEscalated,
    RemediationFailed,
    RemediationNoteAdded,
    RemediationStarted,
    RemediationStepCompleted,
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
from aftercare.intake.domain import classification, remediation_timeline
from aftercare.intake.domain.moves import Announcement, IncidentState
from aftercare.intake.domain.remediation_timeline import TimelineMeaning
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
            set_fields=classification.triage_fields(event),
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

    async def _record(
        self, envelope: Envelope[Any], meaning: TimelineMeaning, announcement: Announcement | None = None
    ) -> None:
        await apply_event(
            self._store,
            envelope,
            proposed=meaning.proposed,
            kind=meaning.kind,
            summary=meaning.summary,
            by=meaning.by,
            by_person=meaning.by_person,
            kind_if_moved=meaning.kind_if_moved,
            announcement=announcement,
        )

    async def step_completed(self, envelope: Envelope[RemediationStepCompleted]) -> None:
        await self._record(envelope, remediation_timeline.step_completed(envelope.data))

    async def note_added(self, envelope: Envelope[RemediationNoteAdded]) -> None:
        await self._record(envelope, remediation_timeline.note_added(envelope.data))

    async def approval_requested(self, envelope: Envelope[ApprovalRequested]) -> None:
        await self._record(envelope, remediation_timeline.approval_requested(envelope.data))

    async def approval_granted(self, envelope: Envelope[ApprovalGranted]) -> None:
        await self._record(envelope, remediation_timeline.approval_granted(envelope.data))

    async def approval_rejected(self, envelope: Envelope[ApprovalRejected]) -> None:
        await self._record(envelope, remediation_timeline.approval_rejected(envelope.data))

    async def escalation_acknowledged(self, envelope: Envelope[EscalationAcknowledged]) -> None:
        event = envelope.data
        meaning = remediation_timeline.escalation_acknowledged(event)

        def acknowledged(incident: IncidentState) -> IncidentAcknowledged:
            return IncidentAcknowledged(
                incident_id=event.incident_id,
                number=incident.number,
                by=event.by,
                channel=Channel.OPERATOR,
                note=meaning.summary,
            )

        await self._record(envelope, meaning, acknowledged)

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
        RemediationStepCompleted: [lifecycle.step_completed],
        RemediationNoteAdded: [lifecycle.note_added],
        ApprovalRequested: [lifecycle.approval_requested],
        ApprovalGranted: [lifecycle.approval_granted],
        ApprovalRejected: [lifecycle.approval_rejected],
        EscalationAcknowledged: [lifecycle.escalation_acknowledged],
        RemediationSucceeded: [lifecycle.remediation_succeeded],
        RemediationFailed: [lifecycle.remediation_failed],
        IncidentEscalated: [lifecycle.escalated],
    }
