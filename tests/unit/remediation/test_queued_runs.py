"""A burst of incidents on one system, more than its blast radius lets run at once: every slot a
finished run gives back goes to a waiting run at once, not at the waiting runs' 30 s re-check.

Found by bench/remediation_runs.py (500 runs, 100 slots): a woken run stays "queued" in the store
until its next write, so the next release looked up the same oldest queued run again, found it
already being driven, and woke nobody; the freed slot sat empty until the re-check (created ->
admitted p50 66-90 s).
"""

from __future__ import annotations

import asyncio
from typing import Any

from aftercare.events.testing import MemoryBus, MemoryDatabase

from remediation_doubles import (
    SystemRecovering,
    acme_with_a_noop_runbook,
    an_instance,
    drives_done,
    incident,
    run_statuses,
    until_a_slot_is_held,
)

BURST = 8
SLOTS = 2
ROUND_TRIP_S = 0.002


def with_round_trips(collection: Any) -> None:
    """Reads and writes that take a store's round trip, as the real store's do: a run woken for a
    slot is still "queued" in the store while the next release looks for whom to wake."""
    for operation in ("find_one", "insert_one", "update_one", "find_one_and_update"):
        original = getattr(collection, operation)

        async def slow(*args: Any, _original: Any = original, **kwargs: Any) -> Any:
            await asyncio.sleep(ROUND_TRIP_S)
            return await _original(*args, **kwargs)

        setattr(collection, operation, slow)


async def test_every_freed_slot_goes_to_a_waiting_run_without_waiting_for_the_recheck() -> None:
    database, bus = MemoryDatabase(), MemoryBus()
    await acme_with_a_noop_runbook(database, max_concurrent=SLOTS)
    # No poller here and the clock stands still: a run only moves on when a release wakes it.
    engine, store = await an_instance(database, bus)
    with_round_trips(store.runs)
    with_round_trips(store.slots)
    holders_written: list[int] = []
    save_slots = store.save_slots

    async def recording_save_slots(tenant_id: str, system: str, read: Any, new: Any) -> bool:
        saved = await save_slots(tenant_id, system, read, new)
        if saved:
            holders_written.append(len(new.holders))
        return saved

    store.save_slots = recording_save_slots  # type: ignore[method-assign]
    # The burst arrives together (its runs are inserted in one batch): the first SLOTS runs are
    # admitted, the rest wait.
    started = await asyncio.gather(*(engine.consider(f"i-{n}", document=incident(n)) for n in range(BURST)))
    assert started == ["run started"] * BURST
    await drives_done(engine)

    assert await run_statuses(store, BURST) == ["succeeded"] * BURST
    assert (await store.load_slots("acme", "billing-api")).holders == []
    # The system is filled up to its limit again and again while runs wait: each release wakes a
    # run that takes the freed slot (a lost wake-up leaves a slot empty for the rest of the burst,
    # and admissions then write one holder, not two: 1,2,1,0,1,0,...). How the moves fall into
    # writes (1,2,1,0 per wave of two, or 1,2,1,2,... when a release and the next admission
    # share a pass) depends on the order the round trips end in.
    assert max(holders_written) == SLOTS, holders_written
    assert holders_written.count(SLOTS) >= BURST // SLOTS, holders_written


async def test_a_slot_freed_by_one_instance_goes_to_a_run_another_instance_saw_wait() -> None:
    database, bus = MemoryDatabase(), MemoryBus()
    await acme_with_a_noop_runbook(database, max_concurrent=1)
    system = SystemRecovering()
    first, store = await an_instance(database, bus, system)
    second, _ = await an_instance(database, bus)
    # The first instance's run holds the one slot while it verifies; the second's waits for it.
    assert await first.consider("i-0", document=incident(0)) == "run started"
    await until_a_slot_is_held(store)
    assert await second.consider("i-1", document=incident(1)) == "run started"
    await drives_done(second)
    assert (await run_statuses(store, 2))[1] == "queued"  # the second waits (the first holds the slot)

    system.answer.set()
    await drives_done(first, second)
    # The first instance knew of no waiting run itself: it found the second's in the store.
    assert await run_statuses(store, 2) == ["succeeded", "succeeded"]
