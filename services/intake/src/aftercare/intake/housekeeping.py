"""Intake's periodic chores: close incidents that stayed resolved, forget spent rate-limit windows.

They run once per interval per deployment (``runtime.every("housekeeping", ...)`` in
bootstrap.py: one instance holds the lease). Each chore is still safe to run twice at once
(closing is a conditional move, deleting old windows is idempotent), because a lease taken over
from a stalled holder can briefly overlap.
"""

from __future__ import annotations

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
