"""Timed work: runs and escalations whose stored due time has come.

Every instance polls; each due run or escalation is claimed by a write guarded by its ``rev``,
so only one instance acts on it (see ``service_layer/runs.py``).
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
    for key in await components.store.due_escalations(now):
        await components.escalations.on_deadline(key)
        count += 1
    return count


async def run_forever(components: RemediationComponents, interval_s: float) -> None:
    while True:
        try:
            await run_due_once(components)
        except Exception as error:  # the store may be back soon; keep polling
            log.warning("due-time poll failed; will retry", error=str(error))
        await asyncio.sleep(interval_s)
