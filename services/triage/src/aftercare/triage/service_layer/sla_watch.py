"""SLA breaches: each triaged incident's deadlines become stored due times of triage's store;
acknowledging or resolving cancels them; one that fires is a breach, counted in
``aftercare_sla_breaches_total`` and logged with the incident.

Due times fire at least once (``aftercare.events.schedule``): a crash between the count and the
removal of the item counts that breach twice. The counter is for dashboards and alerts, where
that rare double is harmless; the incident's own deadlines (the dashboard's SLA countdown) come
from the events, not from this count.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC
from typing import Any

import structlog
from prometheus_client import Counter

from aftercare.events.envelope import Envelope
from aftercare.events.schedule import DueItem, DueTimes
from aftercare.triage.adapters.store import TriageIncidents
from aftercare.triage.domain.sla import Deadline, deadlines_met_by, deadlines_to_watch, watch_key

log = structlog.get_logger(__name__)

SLA_BREACH = "sla.breach"

SLA_BREACHES = Counter(
    "aftercare_sla_breaches_total",
    "Incidents whose response or resolution deadline passed while they still waited, by tenant and priority.",
    ["tenant", "priority", "deadline"],
)


class SlaWatch:
    def __init__(self, incidents: TriageIncidents, due_times: Callable[[], DueTimes]) -> None:
        self.incidents = incidents
        # The runtime's due times exist once the store is connected; asked for when first needed.
        self._due_times = due_times

    async def triaged(self, envelope: Envelope[Any]) -> None:
        """After triage's own handler: watch the deadlines it decided (none for a duplicate)."""
        incident_id = envelope.data.incident_id
        incident = await self.incidents.get(incident_id)
        if incident is None:
            return
        decision = incident.get("decision") or {}
        # Response and resolution deadlines in one write (and one for the poller's hint).
        await self._due_times().schedule_many(
            [
                (
                    watch_key(incident_id, deadline),
                    due_at if due_at.tzinfo else due_at.replace(tzinfo=UTC),
                    SLA_BREACH,
                    {
                        "incident_id": incident_id,
                        "tenant_id": envelope.tenant_id,
                        "number": incident.get("number") or envelope.data.number,
                        "priority": decision.get("priority"),
                        "deadline": deadline.value,
                    },
                )
                for deadline, due_at in deadlines_to_watch(incident)
            ]
        )

    async def met(self, envelope: Envelope[Any]) -> None:
        keys = [watch_key(envelope.data.incident_id, deadline) for deadline in deadlines_met_by(envelope.type)]
        await self._due_times().cancel_many(keys)

    async def breached(self, item: DueItem) -> None:
        payload = item.payload
        incident = await self.incidents.get(payload["incident_id"])
        deadline = Deadline(payload["deadline"])
        # A resolution written before its event reached us (or a late cancel) is not a breach.
        if incident is not None and incident.get("status") == "resolved":
            return
        SLA_BREACHES.labels(
            tenant=payload["tenant_id"], priority=payload.get("priority") or "none", deadline=deadline.value
        ).inc()
        log.warning(
            "SLA deadline breached",
            incident_id=payload["incident_id"],
            tenant=payload["tenant_id"],
            number=payload.get("number"),
            deadline=deadline.value,
            due_at=item.due_at.isoformat(),
        )
