"""Intake's periodic chores: close incidents that stayed resolved, forget spent rate-limit windows.

Every intake instance runs them; each chore is safe to run twice at once (closing is a
conditional move, deleting old windows is idempotent).
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import structlog

from aftercare.intake.components import IntakeComponents
from aftercare.intake.service_layer import move_incident

log = structlog.stdlib.get_logger("aftercare.intake.housekeeping")


async def run_once(intake: IntakeComponents) -> int:
    cutoff = datetime.now(UTC) - timedelta(hours=intake.settings.auto_close_after_hours)
    closed = await move_incident.close_resolved_before(intake.incidents, cutoff)
    if closed:
        log.info(
            "closed incidents that stayed resolved", closed=closed, after_hours=intake.settings.auto_close_after_hours
        )
    await intake.limiter.forget_old_windows()
    return closed


async def run_forever(intake: IntakeComponents) -> None:
    while True:
        await asyncio.sleep(intake.settings.housekeeping_interval_seconds)
        try:
            await run_once(intake)
        except Exception as error:  # the store may be away for a moment; try again next round
            log.warning("housekeeping failed; will retry", error=str(error))
