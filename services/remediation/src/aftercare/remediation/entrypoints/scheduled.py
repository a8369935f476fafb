"""Timed work: runs whose stored due time (``next_at``) has come.

Every instance polls; each due run is claimed by a write guarded by its ``rev``, so only one
instance advances it (see ``service_layer/runs.py``). A run's due time lives in the run itself
because it doubles as the lease of the process working on it. Escalation deadlines are stored
due times of the shared scheduler (``aftercare.events.schedule``, kind ``escalation.deadline``).

The runs this process wrote last are woken from its memory (``RunEngine.due_here``) every poll;
the store is asked less often (``store_poll_seconds``), for the runs nobody here knows of: those
of an instance that stopped (their lease ran out) and those written before this process started.
On the embedded store that query reads every open run whole (a range on ``next_at`` is not
answered from its index): asked every half second in a burst of 500 runs, it was the store's
largest single cost.
"""

from __future__ import annotations

import asyncio
import time
from datetime import datetime

import structlog

from aftercare.remediation.adapters.store import RemediationStore
from aftercare.remediation.components import RemediationComponents, utc_now
from aftercare.remediation.service_layer.runs import RunEngine

log = structlog.stdlib.get_logger("aftercare.remediation.scheduled")

# The store is asked at least this often for due runs nobody here knows of.
MAX_STORE_POLL_S = 5.0


def store_poll_seconds(poll_interval_s: float, lease_margin_s: float) -> float:
    """How often the store is asked for due runs. A stopped instance's run waits for its lease
    (its step's timeout + the lease margin) before anyone may take it over; looking for it a
    third of the margin later than that delays a takeover little, against the lease itself."""
    return max(poll_interval_s, min(MAX_STORE_POLL_S, lease_margin_s / 3))


def wake_due_here(engine: RunEngine, now: datetime) -> int:
    """Drive the runs this process wrote whose due time has come (no store query)."""
    woken = engine.due_here(now)
    for incident_id in woken:
        engine.spawn_drive(incident_id)
    return len(woken)


async def wake_due_in_store(engine: RunEngine, store: RemediationStore, now: datetime) -> int:
    """Drive every due run the store holds, whoever wrote it last."""
    count = 0
    for incident_id in await store.due_runs(now):
        if incident_id not in engine.driving:
            engine.spawn_drive(incident_id)
            count += 1
    return count


async def run_forever(components: RemediationComponents, interval_s: float, store_interval_s: float) -> None:
    engine, store = components.engine, components.store
    store_asked = -store_interval_s  # at start: runs written before this process started
    while True:
        wake_due_here(engine, utc_now())
        if time.monotonic() - store_asked >= store_interval_s:
            try:
                await wake_due_in_store(engine, store, utc_now())
                store_asked = time.monotonic()
            except Exception as error:  # the store may be back soon; keep polling
                log.warning("due-time poll failed; will retry", error=str(error))
        await asyncio.sleep(interval_s)
