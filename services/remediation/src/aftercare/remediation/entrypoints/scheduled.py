"""Timed work: runs whose stored due time (``next_at``) has come.

Every instance polls; each due run is claimed by a write guarded by its ``rev``, so only one
instance advances it (see ``service_layer/runs.py``). A run's due time lives in the run itself
because it doubles as the lease of the process working on it. Escalation deadlines are stored
due times of the shared scheduler (``aftercare.events.schedule``, kind ``escalation.deadline``).
"""

from __future__ import annotations

import asyncio

import structlog

from aftercare.remediation.components import RemediationComponents, utc_now

log = structlog.stdlib.get_logger("aftercare.remediation.scheduled")


async def run_due_once(components: RemediationComponents) -> int:
    now = utc_now()
    engine = components.engine
    count = 0
    for incident_id in await components.store.due_runs(now):
        if incident_id not in engine.driving:
            engine.spawn_drive(incident_id)
            count += 1
    return count


async def run_forever(components: RemediationComponents, interval_s: float) -> None:
    while True:
        try:
            await run_due_once(components)
        except Exception as error:  # the store may be back soon; keep polling
            log.warning("due-time poll failed; will retry", error=str(error))
        await asyncio.sleep(interval_s)
