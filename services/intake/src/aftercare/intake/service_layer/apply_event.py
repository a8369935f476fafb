"""What happens when triage or remediation announce something about an incident: record it on
the timeline, and move the status when the lifecycle allows (see ``domain/moves.py``).
"""

from __future__ import annotations

from typing import Any

import structlog

from aftercare.events.envelope import Envelope
from aftercare.events.incidents import IncidentStatus as Status
from aftercare.intake import clock
from aftercare.intake.adapters.incident_store import IncidentStore
from aftercare.intake.domain import moves

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
    set_fields: dict[str, Any] | None = None,
    announcement: moves.Announcement | None = None,
) -> bool:
    """Record an event from triage or remediation on its incident, once.

    Returns False if the incident is unknown here, belongs to another tenant, or the event was
    applied before (a redelivery: whatever it left in the outbox is published again).
    """
    incident_id = envelope.incident_id
    if incident_id is None:
        return False
    async with store.turn(incident_id):
        for _ in range(APPLY_ATTEMPTS):
            state = await store.state(incident_id)
            if state is None:
                log.warning("event for an incident intake does not know; ignored", event_type=envelope.type)
                return False
            change = moves.move_by_event(
                state,
                envelope,
                proposed=proposed,
                kind=kind,
                summary=summary,
                set_fields=set_fields,
                announcement=announcement,
                now=clock.now(),
            )
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
