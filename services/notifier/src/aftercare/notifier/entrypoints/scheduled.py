"""The single-instance delivery job: whoever holds the ``delivery-job`` lease (the platform's
``Leases``, see ``adapters/store.py``) sends what is due and recovers claims that died with their
process. It keeps its own loop rather than ``runtime.every`` because a handler that plans a
delivery wakes it at once (``notifier.wake``): an acknowledgement goes out in well under a
second, not at the next interval, and ``runtime.every`` has no way to be woken. Periodic updates
and digests are the platform's stored due times (``runtime.on_due``, wired in bootstrap)."""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from datetime import UTC, datetime
from typing import Any

import structlog

from aftercare.notifier.components import NotifierComponents

ROUND_LIMIT = 200

log = structlog.stdlib.get_logger("aftercare.notifier.scheduled")


async def tick(notifier: NotifierComponents, handed_over: list[dict[str, Any]] | None = None) -> int:
    """One round of the job (when this instance holds the lease); returns deliveries attempted.
    With ``handed_over``, the round sends just those (planned here a moment ago) and does not
    look in the store."""
    now = datetime.now(UTC)
    if not await notifier.delivery_lease.hold(now):
        return 0
    # Looked at again before each delivery (from memory, mostly): a round that outlives the
    # lease stops sending rather than share the work with the instance that took it over.

    async def still_held() -> bool:
        return await notifier.delivery_lease.hold(datetime.now(UTC))

    if handed_over is not None:
        return await notifier.worker.send_handed_over(handed_over, still_held)
    await notifier.worker.recover_lost_claims_when_due(now)
    return await notifier.worker.run_due(ROUND_LIMIT, still_held)


async def run_forever(notifier: NotifierComponents, poll_seconds: float) -> None:
    looked_in_store = -math.inf  # monotonic time of the last round that asked the store
    while True:
        # Cleared before the round: a wake-up from a handler during the round is not lost.
        notifier.wake.clear()
        handed_over = notifier.worker.take_handed_over()
        # A wake-up with deliveries handed over sends those alone, so a customer's first email
        # does not wait for the due query; the store is still asked at least every poll_seconds
        # (retries, other instances' plans, resends), and on a wake-up without hand-overs. A
        # round that asks the store finds the handed-over ones there too.
        ask_store = not handed_over or time.monotonic() - looked_in_store >= poll_seconds
        try:
            if ask_store:
                looked_in_store = time.monotonic()
                attempted = await tick(notifier)
            else:
                attempted = await tick(notifier, handed_over)
        except Exception as error:  # the store may be away; try again next round
            log.warning("delivery round failed; will retry", error=str(error))
            attempted = 0
        if ask_store and attempted >= ROUND_LIMIT:
            continue  # a full round: more are probably due already
        until_next_look = max(0.0, looked_in_store + poll_seconds - time.monotonic())
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(notifier.wake.wait(), timeout=until_next_look)
