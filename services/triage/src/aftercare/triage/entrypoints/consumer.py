"""The events triage reacts to, and which handler does what with each."""

from __future__ import annotations

from typing import TYPE_CHECKING

from aftercare.events import topics
from aftercare.events.consumer import HandlerTable
from aftercare.events.incidents import (
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
        IncidentReported: [triage.triage.reported],
        IncidentUpdated: [triage.triage.updated],
        IncidentReclassified: [triage.triage.reclassified],
        IncidentResolved: [triage.triage.resolved],
        IncidentClosed: [triage.triage.resolved],
    }
