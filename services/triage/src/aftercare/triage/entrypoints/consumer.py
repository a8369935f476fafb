"""The events triage reacts to, and which handler does what with each."""

from __future__ import annotations

from typing import TYPE_CHECKING

from aftercare.events import topics
from aftercare.events.consumer import HandlerTable
from aftercare.events.incidents import (
    IncidentAcknowledged,
    IncidentClosed,
    IncidentReclassified,
    IncidentReported,
    IncidentResolved,
    IncidentUpdated,
)
from aftercare.events.tenants import TenantUpserted

if TYPE_CHECKING:
    from aftercare.triage.components import TriageComponents

CONSUMER_GROUP = "triage"
TOPICS = [topics.INCIDENTS, topics.TENANTS]


def handlers(triage: TriageComponents) -> HandlerTable:
    return {
        TenantUpserted: [triage.tenants.apply, triage.sync_targets, triage.triage.tenant_arrived],
        # The SLA watch runs after the triage it watches (handlers of an event run in order).
        IncidentReported: [triage.triage.reported, triage.sla.triaged],
        IncidentUpdated: [triage.triage.updated],
        IncidentReclassified: [triage.triage.reclassified],
        IncidentAcknowledged: [triage.sla.met],
        IncidentResolved: [triage.triage.resolved, triage.sla.met],
        IncidentClosed: [triage.triage.resolved, triage.sla.met],
    }
