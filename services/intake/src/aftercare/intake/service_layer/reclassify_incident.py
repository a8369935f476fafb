"""What happens when an operator sets an incident's priority or category by hand.

Recorded on the incident (its fields, ``manual_fields``, a timeline entry) and announced as
IncidentReclassified in the same write; triage keeps the choice in every later decision, and
intake never lets a triage result overwrite it (``domain/classification.py``).
"""

from __future__ import annotations

import structlog

from aftercare.events.tenants import Priority
from aftercare.intake import clock
from aftercare.intake.adapters.incident_store import IncidentStore
from aftercare.intake.domain import classification
from aftercare.intake.service_layer.report_incident import Outcome

log = structlog.stdlib.get_logger("aftercare.intake.reclassify")


async def reclassify(
    store: IncidentStore,
    tenant_id: str,
    incident_id: str,
    *,
    priority: Priority | None,
    category: str | None,
    by: str,
    reason: str = "",
) -> Outcome:
    """Set the tenant's incident's priority and/or category as ``by`` chose; asking twice is a no-op.

    Raises ``IncidentNotFound``, ``classification.ReclassifyRefused`` (closed) and ``ValueError``
    (an unknown category, or neither named).
    """
    async with store.turn(incident_id):
        incident = await store.get(tenant_id, incident_id)
        change = classification.reclassify(
            incident, priority=priority, category=category, by=by, reason=reason, now=clock.now()
        )
        if change is None:
            return Outcome(incident, created=False)
        await store.apply(change)
        log.info(
            "incident reclassified by hand",
            incident_id=incident_id,
            by=by,
            priority=priority.value if priority else None,
            category=category,
        )
        return Outcome(await store.get(tenant_id, incident_id), created=False, events=change.events)
