"""Triage's timed work: the regular-diagnostics loop and the purge of old probe claims.

The loop runs in every instance; the per-period claims (see ``service_layer.diagnose``) make
each target's probe happen once per period across all of them, so no leader is needed.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from datetime import UTC, datetime

import structlog

from aftercare.triage.service_layer.diagnose import RegularDiagnostics

log = structlog.stdlib.get_logger("aftercare.triage.scheduled")

TICK_SECONDS = 0.5
PURGE_EVERY_TICKS = 7200  # about an hour


async def run_regular_diagnostics(diagnostics: RegularDiagnostics, tick_s: float = TICK_SECONDS) -> None:
    ticks = 0
    try:
        while True:
            try:
                await diagnostics.tick()
                ticks += 1
                if ticks % PURGE_EVERY_TICKS == 0:
                    await diagnostics.purge_old_claims(datetime.now(UTC))
            except Exception as error:  # the store may be away for a moment; keep the schedule
                log.warning("diagnostics tick failed; next tick retries", error=str(error))
            # A random pause around tick_s, not tick_s itself: with a fixed pause, idle instances
            # keep the same phase, and the one whose tick comes first after each due time claimed
            # every period (CI saw one of two instances probe everything). Varied, the periods
            # spread over the instances, and a slow instance's claims do not all wait on it.
            await asyncio.sleep(tick_s * random.uniform(0.5, 1.5))
    finally:
        with contextlib.suppress(Exception):
            await diagnostics.drain()
