"""What happens when triage or remediation announce something about an incident: record it on
the timeline, and move the status when the lifecycle allows (see ``domain/moves.py``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import structlog

from aftercare.events.envelope import Envelope
from aftercare.events.incidents import IncidentStatus as Status
from aftercare.intake import clock
from aftercare.intake.adapters.incident_store import IncidentStore
from aftercare.intake.domain import moves
from aftercare.intake.domain.changes import IncidentChange

log = structlog.stdlib.get_logger("aftercare.intake.apply_event")

# A write that missed because the status moved meanwhile is decided again this often.
APPLY_ATTEMPTS = 5


async def apply_event(
    store: IncidentStore,
    envelope: Envelope[Any],
    *,
    proposed: Status | None,
    kind: str,
    summary: str,
    set_fields: moves.FieldsToSet | None = None,
    announcement: moves.Announcement | None = None,
    by: str | None = None,
    by_person: bool = False,
    kind_if_moved: str | None = None,
) -> bool:
    """Record an event from triage or remediation on its incident, once.

    Returns False if the incident is unknown here, belongs to another tenant, or the event was
    applied before (a redelivery: whatever it left in the outbox is published again).
    """
    incident_id = envelope.incident_id
    if incident_id is None:
        return False

    def decide(state: moves.IncidentState) -> IncidentChange | None:
        return moves.move_by_event(
            state,
            envelope,
            proposed=proposed,
            kind=kind,
            summary=summary,
            set_fields=set_fields,
            announcement=announcement,
            by=by,
            by_person=by_person,
            kind_if_moved=kind_if_moved,
            now=clock.now(),
        )

    return await apply_to(store, incident_id, envelope, decide)


async def apply_to(
    store: IncidentStore,
    incident_id: str,
    envelope: Envelope[Any],
    decide: Callable[[moves.IncidentState], IncidentChange | None],
) -> bool:
    """Apply what ``decide`` makes of ``envelope`` for incident ``incident_id``, once.

    ``decide`` gets the incident as it is and returns the change (with ``applied_event_id``), or
    None when the event must be ignored (another tenant's). The same event may be applied to
    several incidents (a grouping links the duplicate and counts it on the first): each
    incident keeps its own applied-events guard.
    """
    async with store.turn(incident_id):
        for _ in range(APPLY_ATTEMPTS):
            state = await store.state(incident_id)
            if state is None:
                log.warning("event for an incident intake does not know; ignored", event_type=envelope.type)
                return False
            change = decide(state)
            if change is None:
                log.warning(
                    "event names another tenant than its incident; ignored",
                    event_type=envelope.type,
                    event_tenant=envelope.tenant_id,
                    incident_tenant=state.tenant_id,
                )
                return False
            if await store.apply(change):
                return True
            # Either applied already (redelivery) or the status moved meanwhile: decide again fresh.
            if await store.was_applied(incident_id, envelope.id):
                await store.flush(incident_id)
                return False
    raise RuntimeError(f"incident {incident_id} kept changing while {envelope.type} was applied")
