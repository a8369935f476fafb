"""Waking runs whose due time has come: this process's own from memory, the store's query only
for runs nobody here knows of (an instance that stopped, a process restarted).

Found by bench/remediation_runs.py (500 runs): the poller's store query (open runs whose
``next_at`` has passed) reads every open run whole on the embedded store, every half second; in a
burst nearly every run is open, and nearly none of them is due.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from datetime import datetime, timedelta
from typing import Any

from aftercare.events.outbox import OutboxRelay
from aftercare.events.schedule import DueTimes
from aftercare.events.tenant_copy import TenantCopy
from aftercare.events.testing import MemoryBus, MemoryDatabase
from aftercare.remediation.adapters.credentials import CredentialVault
from aftercare.remediation.adapters.executor import SystemCaller
from aftercare.remediation.adapters.store import RemediationStore
from aftercare.remediation.domain.runbook import parse_runbook
from aftercare.remediation.entrypoints.scheduled import store_poll_seconds, wake_due_here, wake_due_in_store
from aftercare.remediation.service_layer.escalations import EscalationDesk
from aftercare.remediation.service_layer.runs import RunEngine
from aftercare.remediation.service_layer.turns import Turns

from remediation_doubles import (
    T0,
    HealthySystem,
    SystemRecovering,
    acme_with_a_noop_runbook,
    an_instance,
    drives_done,
    incident,
    run_statuses,
    until_a_slot_is_held,
)


def asked_of(store: RemediationStore) -> Counter[str]:
    """Counts the store's two queries over many runs: due runs, and a system's queued runs."""
    asked: Counter[str] = Counter()
    for name in ("due_runs", "next_queued_run"):
        original = getattr(store, name)

        async def counted(*args: Any, _original: Any = original, _name: str = name, **kwargs: Any) -> Any:
            asked[_name] += 1
            return await _original(*args, **kwargs)

        setattr(store, name, counted)
    return asked


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> datetime:
        return self.now


def an_instance_with(
    database: MemoryDatabase, bus: MemoryBus, clock: Clock, caller: SystemCaller | None = None
) -> tuple[RunEngine, RemediationStore]:
    db: Any = database
    store = RemediationStore(db)
    turns = Turns()
    relay = OutboxRelay(bus, turn=turns)  # type: ignore[arg-type]
    desk = EscalationDesk(store, relay, turns, clock, b"secret", "http://remediation", DueTimes(db))
    engine = RunEngine(
        store, TenantCopy(db), CredentialVault(db, None), caller or HealthySystem(), desk, relay, turns, clock
    )
    return engine, store


async def acme_with_a_waiting_runbook(database: MemoryDatabase) -> None:
    """Acme's tenant (from the no-op runbook's helper) and runbook 'noop' replaced by one that
    waits a minute (a stored due time) before its verification."""
    await acme_with_a_noop_runbook(database)
    db: Any = database
    runbook = parse_runbook(
        {
            "name": "noop",
            "steps": [
                {"name": "note", "action": "add_note", "params": {"text": "looking"}, "timeout_seconds": 5},
                {"name": "let it settle", "action": "wait", "params": {"seconds": 60}, "timeout_seconds": 90},
            ],
            "verification": {"expect_status": [200]},
            "blast_radius": {"max_concurrent_per_system": 10, "max_runs_per_system_per_hour": 1000},
        }
    )
    await RemediationStore(db).save_runbook(runbook, "test", "test", T0 + timedelta(seconds=1))


async def test_a_run_this_process_put_to_sleep_is_woken_from_memory_without_asking_the_store() -> None:
    database, bus, clock = MemoryDatabase(), MemoryBus(), Clock()
    await acme_with_a_waiting_runbook(database)
    engine, store = an_instance_with(database, bus, clock)
    assert await engine.consider("i-0", document=incident(0)) == "run started"
    await drives_done(engine)
    assert await run_statuses(store, 1) == ["active"]  # asleep for a minute

    asked = asked_of(store)
    assert wake_due_here(engine, clock()) == 0  # not due yet
    clock.now = T0 + timedelta(seconds=61)
    assert wake_due_here(engine, clock()) == 1
    await drives_done(engine)

    assert await run_statuses(store, 1) == ["succeeded"]
    assert asked["due_runs"] == 0, asked  # no query over the open runs
    assert wake_due_here(engine, clock() + timedelta(days=1)) == 0  # ended: forgotten
    await engine.stop()


async def test_a_sleeping_run_of_an_instance_that_stopped_is_driven_by_another_from_the_store() -> None:
    database, bus, clock = MemoryDatabase(), MemoryBus(), Clock()
    await acme_with_a_waiting_runbook(database)
    stopped, store = an_instance_with(database, bus, clock)
    assert await stopped.consider("i-0", document=incident(0)) == "run started"
    await drives_done(stopped)
    await stopped.stop()  # killed while its run sleeps

    survivor, _ = an_instance_with(database, bus, clock)
    clock.now = T0 + timedelta(seconds=61)
    assert wake_due_here(survivor, clock()) == 0  # it never wrote that run
    assert await wake_due_in_store(survivor, store, clock()) == 1
    await drives_done(survivor)
    assert await run_statuses(store, 1) == ["succeeded"]


def test_the_store_is_asked_a_third_of_the_lease_margin_apart_at_most_every_five_seconds() -> None:
    assert store_poll_seconds(0.5, 15.0) == 5.0  # the defaults
    assert store_poll_seconds(0.5, 60.0) == 5.0
    assert store_poll_seconds(0.5, 3.0) == 1.0
    assert store_poll_seconds(2.0, 3.0) == 2.0  # never more often than the poll itself


async def test_a_slot_freed_while_runs_of_its_system_start_here_does_not_ask_the_store_for_queued_runs() -> None:
    # A burst: every run is created (and waits for its drive) before the first one ends. The
    # store's queued-runs query (one per second per system; it reads every queued run whole on
    # the embedded store) would only find runs that are starting here anyway.
    database, bus = MemoryDatabase(), MemoryBus()
    await acme_with_a_noop_runbook(database, max_concurrent=2)
    engine, store = await an_instance(database, bus)
    unfinished_when_asked: list[int] = []
    next_queued_run = store.next_queued_run

    async def recording_next_queued_run(*args: Any, **kwargs: Any) -> str | None:
        unfinished_when_asked.append((await run_statuses(store, 6)).count("queued"))
        return await next_queued_run(*args, **kwargs)

    store.next_queued_run = recording_next_queued_run  # type: ignore[method-assign]
    for number in range(6):
        assert await engine.consider(f"i-{number}", document=incident(number)) == "run started"
    await drives_done(engine)

    assert await run_statuses(store, 6) == ["succeeded"] * 6
    # Asked only once no run of the system was left to start here (the last release).
    assert unfinished_when_asked in ([], [0]), unfinished_when_asked
    await engine.stop()


async def test_a_run_waiting_for_a_slot_is_written_only_once_its_stored_due_time_has_passed() -> None:
    database, bus, clock, system = MemoryDatabase(), MemoryBus(), Clock(), SystemRecovering()
    await acme_with_a_noop_runbook(database, max_concurrent=1)
    engine, store = an_instance_with(database, bus, clock, system)
    moved: list[str] = []
    set_next_at = store.set_next_at

    async def recording_set_next_at(incident_id: str, rev: int, next_at: datetime) -> int | None:
        moved.append(incident_id)
        return await set_next_at(incident_id, rev, next_at)

    store.set_next_at = recording_set_next_at  # type: ignore[method-assign]
    assert await engine.consider("i-0", document=incident(0)) == "run started"
    await until_a_slot_is_held(store)  # i-0 verifies, holding the one slot
    assert await engine.consider("i-1", document=incident(1)) == "run started"
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    # i-1 waits. Its stored due time, the lease written at its creation, is still ahead: no write.
    assert await run_statuses(store, 2) == ["queued", "queued"]
    assert moved == []
    lease = (await store.load_run("i-1"))[2]  # type: ignore[index]
    assert lease is not None and lease > clock()

    # Still waiting when that time comes: now it is moved to the queue's re-check (no instance
    # would otherwise leave it alone), woken by this process from memory.
    clock.now = lease + timedelta(seconds=1)
    assert wake_due_here(engine, clock()) == 1
    for _ in range(20):
        await asyncio.sleep(0)
    assert moved == ["i-1"]
    assert (await store.load_run("i-1"))[2] > clock()  # type: ignore[index,operator]

    system.answer.set()
    await drives_done(engine)
    assert await run_statuses(store, 2) == ["succeeded", "succeeded"]
