"""The single-instance delivery job: whoever holds the ``delivery-job`` lease (the platform's
``Leases``, see ``adapters/store.py``) sends what is due and recovers claims that died with their
process. It keeps its own loop rather than ``runtime.every`` because a handler that plans a
delivery wakes it at once (``notifier.wake``): an acknowledgement goes out in well under a
second, not at the next interval, and ``runtime.every`` has no way to be woken. Periodic updates
and digests are the platform's stored due times (``runtime.on_due``, wired in bootstrap)."""

from __future__ import annotations

import asyncio
import contextlib
from datetime import UTC, datetime

import structlog

from aftercare.notifier.components import NotifierComponents

ROUND_LIMIT = 200

log = structlog.stdlib.get_logger("aftercare.notifier.scheduled")


async def tick(notifier: NotifierComponents) -> int:
    """One round of the job (when this instance holds the lease); returns deliveries attempted."""
    now = datetime.now(UTC)
    if not await notifier.delivery_lease.hold(now):
        return 0
    await notifier.worker.recover_lost_claims_when_due(now)
    # Looked at again before each delivery (from memory, mostly): a round that outlives the
    # lease stops sending rather than share the work with the instance that took it over.
    return await notifier.worker.run_due(
        ROUND_LIMIT, still_held=lambda: notifier.delivery_lease.hold(datetime.now(UTC))
    )


async def run_forever(notifier: NotifierComponents, poll_seconds: float) -> None:
    while True:
        # Cleared before the round: a wake-up from a handler during the round is not lost.
        notifier.wake.clear()
        try:
            attempted = await tick(notifier)
        except Exception as error:  # the store may be away; try again next round
            log.warning("delivery round failed; will retry", error=str(error))
            attempted = 0
        if attempted >= ROUND_LIMIT:
            continue  # a full round: more are probably due already
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(notifier.wake.wait(), timeout=poll_seconds)
