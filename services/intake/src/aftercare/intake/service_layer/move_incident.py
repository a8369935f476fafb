"""What happens when a person moves an incident (acknowledge, resolve, reopen, close), by the
incident's id or, for alerting tools (PagerDuty, Alertmanager), by the open incident of a dedup key.
"""

from __future__ import annotations

from datetime import datetime

import structlog

from aftercare.events.incidents import Channel
from aftercare.events.incidents import IncidentStatus as Status
from aftercare.intake import clock
from aftercare.intake.adapters.incident_store import IncidentNotFound, IncidentStore
from aftercare.intake.domain import lifecycle, moves
from aftercare.intake.service_layer.report_incident import Outcome

log = structlog.stdlib.get_logger("aftercare.intake.move_incident")

# A move refused because the incident changed under us is decided again from a fresh read this often.
RESOLVE_OPEN_ATTEMPTS = 3


async def move(
    store: IncidentStore,
    tenant_id: str,
    incident_id: str,
    target: Status,
    *,
    by: str,
    channel: Channel | None = None,
    note: str = "",
) -> Outcome:
    """Move the tenant's incident to ``target`` as ``by`` asked.

    Raises ``IncidentNotFound`` (not the tenant's, or no such incident) and
    ``lifecycle.TransitionRefused`` (the lifecycle does not allow it, or it changed meanwhile).
    """
    async with store.turn(incident_id):
        incident = await store.get(tenant_id, incident_id)
        state = moves.IncidentState(
            incident.incident_id, incident.tenant_id, incident.number, incident.status, incident.dedup_key
        )
        change = moves.move_by_person(state, target, by=by, channel=channel, note=note, now=clock.now())
        if change is None:
            return Outcome(incident, created=False)
        # Only from the status we decided on: a concurrent move makes this write miss, not clobber.
        if not await store.apply(change):
            raise lifecycle.TransitionRefused(
                f"{incident.number} changed while this request ran; read it again and retry"
            )
        return Outcome(await store.get(tenant_id, incident_id), created=False, events=change.events)


async def resolve_open(
    store: IncidentStore,
    tenant_id: str,
    dedup_key: str,
    target: Status,
    *,
    by: str,
    channel: Channel,
    note: str = "",
) -> Outcome | None:
    """Move the open incident of ``dedup_key`` (acknowledge or resolve it); None when none is open.

    An alerting tool names its alert, not our incident: the incident it means is the one open
    for the key now. If it changes while we move it, decide again from what it is then.
    """
    for attempt in range(1, RESOLVE_OPEN_ATTEMPTS + 1):
        incident = await store.find_open(tenant_id, dedup_key)
        if incident is None:
            return None
        try:
            return await move(store, tenant_id, incident.incident_id, target, by=by, channel=channel, note=note)
        except (lifecycle.TransitionRefused, IncidentNotFound):
            if attempt == RESOLVE_OPEN_ATTEMPTS:
                raise
    raise AssertionError("unreachable")


async def close_resolved_before(store: IncidentStore, cutoff: datetime, *, limit: int = 200) -> int:
    """Close incidents resolved before ``cutoff`` (nobody came back about them); returns how many."""
    closed = 0
    for tenant_id, incident_id in await store.resolved_before(cutoff, limit=limit):
        try:
            await move(store, tenant_id, incident_id, Status.CLOSED, by="aftercare", note="resolved with no follow-up")
            closed += 1
        except (lifecycle.TransitionRefused, IncidentNotFound):
            pass  # reopened or changed meanwhile: nothing to close
    return closed
