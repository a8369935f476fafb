"""What remediation's events mean on an incident's timeline: which entry, which status move.

Every event remediation publishes about an incident goes on its timeline for the operators:
each runbook step with its outcome, the runbook's notes, approvals asked for and decided (who,
when), and an acknowledged escalation (who took it). The customer sees none of the steps, notes
or approvals (``public_timeline.py`` lists only the kinds a customer may read): they name
internal hosts and actions, and an approval waiting or refused is the support company's
business. What the customer does see is the status these events lead to: "being fixed",
"handed to a specialist", and, when a person acknowledges the page of an escalated incident,
"an engineer took the incident".
"""

from __future__ import annotations

from dataclasses import dataclass

from aftercare.events.incidents import IncidentStatus as Status
from aftercare.events.remediation import (
    ApprovalGranted,
    ApprovalRejected,
    ApprovalRequested,
    EscalationAcknowledged,
    RemediationNoteAdded,
    RemediationStepCompleted,
)

# A step's output is kept on the timeline up to this length (the run's audit in remediation has it all).
OUTPUT_ON_TIMELINE = 300


@dataclass(frozen=True)
class TimelineMeaning:
    """The entry an event makes, the status it asks for (None: none), and who it is by."""

    kind: str
    summary: str
    proposed: Status | None = None
    by: str | None = None
    # The event records what a person did (acknowledged a page): the move is a person's move.
    by_person: bool = False
    # The entry's kind when the status did move (a customer may see that one).
    kind_if_moved: str | None = None


def step_completed(event: RemediationStepCompleted) -> TimelineMeaning:
    """One runbook step finished: which one, in which phase, how it ended and what it returned."""
    action = f" ({event.action})" if event.action else ""
    attempts = f" after {event.attempts} attempts" if event.attempts > 1 else ""
    phase = "" if event.phase == "fix" else f" {event.phase}"
    output = " ".join(event.output.split())
    if len(output) > OUTPUT_ON_TIMELINE:
        output = output[: OUTPUT_ON_TIMELINE - 3] + "..."
    returned = f": {output}" if output else ""
    return TimelineMeaning(
        "remediation-step",
        f"Runbook{phase} step {event.step_index + 1} '{event.step}'{action} {event.outcome}{attempts}{returned}",
    )


def note_added(event: RemediationNoteAdded) -> TimelineMeaning:
    return TimelineMeaning("remediation-note", event.note)


def approval_requested(event: ApprovalRequested) -> TimelineMeaning:
    who = f" from {', '.join(event.approvers)}" if event.approvers else ""
    until = f" until {event.expires_at.isoformat()}" if event.expires_at else ""
    return TimelineMeaning(
        "approval-requested", f"Waiting for approval{who} to run '{event.step}'{until}: {event.reason}"
    )


def approval_granted(event: ApprovalGranted) -> TimelineMeaning:
    note = f": {event.note}" if event.note else ""
    return TimelineMeaning("approval-granted", f"Approved by {event.by}{note}", by=event.by)


def approval_rejected(event: ApprovalRejected) -> TimelineMeaning:
    reason = f": {event.reason}" if event.reason else ""
    return TimelineMeaning("approval-rejected", f"Rejected by {event.by}{reason}", by=event.by)


_VIA = {"api": "through the API", "link": "from the page's link", "incident": "on the incident", "resolved": ""}


def escalation_acknowledged(event: EscalationAcknowledged) -> TimelineMeaning:
    """A person took the escalated incident: it becomes acknowledged if it is still escalated.

    The lifecycle decides as for a person acknowledging here (``moves.move_by_event`` with
    ``by_person``): an incident that was acknowledged here already (``via`` "incident": the
    page stopped because of that), or was resolved meanwhile, only gets the entry.
    """
    via = _VIA.get(event.via, f"via {event.via}")
    return TimelineMeaning(
        "escalation-acknowledged",
        f"Level {event.level} page acknowledged by {event.by}{' ' + via if via else ''}",
        proposed=Status.ACKNOWLEDGED,
        by=event.by,
        by_person=True,
        kind_if_moved="acknowledged",
    )
