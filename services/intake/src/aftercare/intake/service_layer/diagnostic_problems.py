"""Use case: what triage's regular diagnostics and grouping tell intake.

* ProblemDetected opens an incident (channel diagnostic, source ``diagnostics``) under the id
  triage chose, so a redelivered event opens it once;
* ProblemCleared resolves that incident ("diagnostics" resolved it), once; if it was resolved
  already (by remediation), the clearance is only noted;
* IncidentGrouped links the duplicate to the first incident (``duplicate_of``, and on its
  timeline) and counts it on the first (``domain/grouping.py``), each once.
"""

from __future__ import annotations

from aftercare.events.envelope import Envelope
from aftercare.events.incidents import Channel, IncidentResolved
from aftercare.events.incidents import IncidentStatus as Status
from aftercare.events.triage import IncidentGrouped, ProblemCleared, ProblemDetected
from aftercare.intake import clock
from aftercare.intake.adapters.incident_store import IncidentStore
from aftercare.intake.domain import grouping
from aftercare.intake.domain.incident import IncidentReport
from aftercare.intake.domain.moves import IncidentState
from aftercare.intake.service_layer.apply_event import apply_event, apply_to
from aftercare.intake.service_layer.report_incident import report


async def open_detected_problem(store: IncidentStore, envelope: Envelope[ProblemDetected]) -> None:
    event = envelope.data
    await report(
        store,
        envelope.tenant_id,
        IncidentReport(
            title=event.title,
            description=event.description,
            channel=Channel.DIAGNOSTIC,
            severity=event.severity,
            system=event.system,
            source="diagnostics",
            dedup_key=event.dedup_key,
            occurred_at=event.detected_at,
            details={"diagnostic_target": event.target, "problem_kind": event.kind},
        ),
        incident_id=event.incident_id,
    )


async def resolve_cleared_problem(store: IncidentStore, envelope: Envelope[ProblemCleared]) -> None:
    event = envelope.data

    def resolved(incident: IncidentState) -> IncidentResolved:
        return IncidentResolved(
            incident_id=event.incident_id, number=incident.number, by="diagnostics", resolution=event.detail
        )

    # Usually remediation resolved the incident a moment before the next probe saw the system
    # healthy: then the clearance is an internal note ("diagnostics confirm"), not a second
    # "resolved" on the timeline the customer reads.
    await apply_event(
        store,
        envelope,
        proposed=Status.RESOLVED,
        kind="diagnosis-cleared",
        kind_if_moved="resolved",
        summary=event.detail,
        announcement=resolved,
    )


async def link_duplicate(store: IncidentStore, envelope: Envelope[IncidentGrouped]) -> None:
    event = envelope.data
    await apply_event(
        store,
        envelope,
        proposed=None,
        kind="grouped",
        summary=f"Same problem as {event.duplicate_of_number}: {event.detail}",
        set_fields={"duplicate_of": event.duplicate_of, "duplicate_of_number": event.duplicate_of_number},
    )
    # Counted on the first even when the duplicate's side was applied before: a crash between
    # the two writes leaves the count to the redelivery (the first's own guard stops a double).
    await apply_to(
        store, event.duplicate_of, envelope, lambda first: grouping.duplicate_counted(first, envelope, now=clock.now())
    )
