"""The events remediation reacts to, and which handler does what with each."""

from __future__ import annotations

from typing import Any

from aftercare.events import topics
from aftercare.events.consumer import HandlerTable
from aftercare.events.envelope import Envelope
from aftercare.events.incidents import IncidentAcknowledged, IncidentReported, IncidentResolved
from aftercare.events.tenants import TenantUpserted
from aftercare.events.triage import IncidentTriaged
from aftercare.remediation.adapters.store import RemediationStore
from aftercare.remediation.components import RemediationComponents
from aftercare.remediation.service_layer.escalations import EscalationDesk
from aftercare.remediation.service_layer.runs import RunEngine

CONSUMER_GROUP = "remediation"
TOPICS = [topics.TRIAGE, topics.TENANTS, topics.INCIDENTS]


class IncidentsForRemediation:
    """An incident's run needs both its report (labels, source) and its triage (runbook, category);
    they come on two topics in either order, and whichever arrives second starts the run."""

    def __init__(self, store: RemediationStore, engine: RunEngine, escalations: EscalationDesk) -> None:
        self._store = store
        self._engine = engine
        self._escalations = escalations

    async def reported(self, envelope: Envelope[IncidentReported]) -> None:
        event = envelope.data
        fields: dict[str, Any] = {
            "tenant_id": envelope.tenant_id,
            "reported": True,
            "number": event.number,
            "severity": event.severity.value,
            "source": event.source,
            "labels": event.labels,
        }
        if event.system:
            fields["reported_system"] = event.system  # triage's recognised system wins when it has one
        merged = await self._store.merge_incident(event.incident_id, fields)
        await self._engine.consider(event.incident_id, caused_by=envelope, document=merged)

    async def triaged(self, envelope: Envelope[IncidentTriaged]) -> None:
        event = envelope.data
        if event.duplicate_of:
            return  # the first incident's run works on the problem
        fields: dict[str, Any] = {
            "tenant_id": envelope.tenant_id,
            "triaged": True,
            "number": event.number,
            "category": event.category,
            "priority": event.priority.value,
            "runbook": event.runbook,
        }
        if event.system:
            fields["system"] = event.system
        merged = await self._store.merge_incident(event.incident_id, fields)
        await self._engine.consider(event.incident_id, caused_by=envelope, document=merged)

    async def acknowledged(self, envelope: Envelope[IncidentAcknowledged]) -> None:
        await self._escalations.acknowledge_incident(
            envelope.data.incident_id, envelope.data.by, "incident", caused_by=envelope
        )

    async def resolved(self, envelope: Envelope[IncidentResolved]) -> None:
        if envelope.data.by != "remediation":
            await self._escalations.acknowledge_incident(
                envelope.data.incident_id, envelope.data.by, "resolved", caused_by=envelope
            )


def handlers(components: RemediationComponents) -> HandlerTable:
    incidents = IncidentsForRemediation(components.store, components.engine, components.escalations)
    return {
        TenantUpserted: [components.tenants.apply],
        IncidentReported: [incidents.reported],
        IncidentTriaged: [incidents.triaged],
        IncidentAcknowledged: [incidents.acknowledged],
        IncidentResolved: [incidents.resolved],
    }
