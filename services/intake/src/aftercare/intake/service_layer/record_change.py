"""What happens when a PagerDuty change event arrives (a deploy, a configuration change).

A change is context, not a problem: it opens no incident. It goes on the timeline (kind
``change``, not shown to customers) of each of the tenant's open incidents about the same
``source`` (at most ``MAX_INCIDENTS``), and into the tenant's change log either way, so a
change that came before an incident, or one without a source, is still on record.
"""

from __future__ import annotations

from dataclasses import dataclass

import structlog

from aftercare.events.incidents import Channel, Reporter
from aftercare.intake import clock
from aftercare.intake.adapters.change_log import ChangeLog
from aftercare.intake.adapters.incident_store import IncidentNotFound, IncidentStore
from aftercare.intake.domain import pagerduty
from aftercare.intake.service_layer.report_incident import add_information

log = structlog.stdlib.get_logger("aftercare.intake.record_change")

# A change to a source with more open incidents than this is noted on the newest ones found only.
MAX_INCIDENTS = 20


@dataclass(frozen=True)
class RecordedChange:
    change_id: str
    incident_ids: list[str]


async def record_change(
    store: IncidentStore, changes: ChangeLog, tenant_id: str, event: pagerduty.ChangeEvent, *, routing_key_id: str
) -> RecordedChange:
    """Note the change on the open incidents of its source, then keep it in the change log."""
    source = event.payload.source
    candidates = await store.open_with_source(tenant_id, source, limit=MAX_INCIDENTS) if source else []
    noted: list[str] = []
    for incident_id in candidates:
        try:
            await add_information(
                store,
                tenant_id,
                incident_id,
                channel=Channel.PAGERDUTY,
                kind="change",
                message=pagerduty.change_note(event),
                author=Reporter(system=pagerduty.ACTOR),
            )
        except IncidentNotFound:
            continue
        noted.append(incident_id)
    change_id = await changes.record(
        tenant_id,
        pagerduty.change_record(event, routing_key_id=routing_key_id),
        received_at=clock.now(),
        incident_ids=noted,
    )
    log.info("pagerduty change recorded", tenant_id=tenant_id, change_id=change_id, incidents=len(noted))
    return RecordedChange(change_id, noted)
