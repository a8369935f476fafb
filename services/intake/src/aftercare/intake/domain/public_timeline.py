"""What a customer may see of an incident: its status and timeline in the customer's words.

The customer portal's status page shows this (and the notifier's status pages should show the
same). Internal entries stay for the operators: a kind that is not listed here is not shown.
Internal are diagnoses, remediation's steps and notes (they name hosts, actions and outputs),
approvals asked for, granted or rejected, failed remediation attempts, a page acknowledged on an
incident that was not escalated any more, and a priority or category set by hand (the support
company's own call). The customer sees what these lead to: the status moves (being fixed, handed
to a specialist, an engineer took it, resolved), and that a report was found to be a known
problem (on the duplicate) or that the problem was reported again (on the first incident).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from aftercare.events.incidents import IncidentStatus
from aftercare.intake.domain.incident import TimelineEntry

STATUS_LABELS = {
    IncidentStatus.REPORTED: "Received, waiting for an engineer",
    IncidentStatus.ACKNOWLEDGED: "An engineer is looking at it",
    IncidentStatus.TRIAGED: "Assessed, we know what it is",
    IncidentStatus.REMEDIATING: "Being fixed",
    IncidentStatus.ESCALATED: "Handed to a specialist",
    IncidentStatus.REOPENED: "Reopened, we are on it again",
    IncidentStatus.RESOLVED: "Resolved",
    IncidentStatus.CLOSED: "Closed",
}

# The timeline entries a customer sees, by kind, in customer words.
PUBLIC_TIMELINE = {
    "reported": "We received the report",
    "occurrence": "The problem was reported again",
    "comment": "More information was added",
    "details": "More information was added",
    "acknowledged": "An engineer took the incident",
    "triaged": "We assessed the problem",
    "remediating": "We started fixing it",
    "escalated": "We handed it to a specialist",
    "resolved": "The problem was resolved",
    "reopened": "The incident was reopened",
    "closed": "The incident was closed",
    "grouped": "We already know this problem and are working on it",
    "duplicate": "The problem was reported again",
}


@dataclass(frozen=True)
class PublicEntry:
    at: datetime
    label: str


def status_label(status: IncidentStatus) -> str:
    """The status as a customer reads it."""
    return STATUS_LABELS.get(status, status.value)


def public_timeline(entries: Sequence[TimelineEntry]) -> list[PublicEntry]:
    """The entries a customer may see, in order, each with its customer-facing label only."""
    return [PublicEntry(entry.at, PUBLIC_TIMELINE[entry.kind]) for entry in entries if entry.kind in PUBLIC_TIMELINE]
