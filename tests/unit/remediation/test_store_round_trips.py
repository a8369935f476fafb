"""What one run costs in store round trips, and that the shortcuts keep the blast-radius limits exact
with a second instance on the same store.

The embedded store answers one write at a time, so a burst of runs goes as fast as the store
operations per run allow (bench/remediation_runs.py). These pin the operations of a no-op run
(notes and a verification probe): the run inserted once and written once at its end (its events
pulled from the outbox without reading it back), the slot taken and freed by one write each, no
read of the run or of the runbook's head for every run.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from typing import Any

from aftercare.events.outbox import OutboxRelay
from aftercare.events.schedule import DueTimes
from aftercare.events.tenant_copy import TenantCopy
from aftercare.events.testing import MemoryBus, MemoryDatabase
from aftercare.remediation.adapters.credentials import CredentialVault
from aftercare.remediation.adapters.executor import CallResult, SystemCaller
from aftercare.remediation.adapters.store import RemediationStore
from aftercare.remediation.domain.runbook import parse_runbook
from aftercare.remediation.domain.verification import ProbeAnswer
from aftercare.remediation.service_layer.escalations import EscalationDesk
from aftercare.remediation.service_layer.runs import RunEngine
from aftercare.remediation.service_layer.turns import Turns

from remediation_doubles import (
    T0,
    acme_with_a_noop_runbook,
    an_instance,
    count_operations,
    drives_done,
    incident,
    until_a_slot_is_held,
)


async def test_a_noop_run_costs_one_insert_one_write_one_outbox_pull_and_one_write_per_slot_move() -> None:
    database, bus = MemoryDatabase(), MemoryBus()
    await acme_with_a_noop_runbook(database)
    engine, store = await an_instance(database, bus)
    assert await engine.consider("i-0", document=incident(0)) == "run started"
    await drives_done(engine)  # the first run reads what a process reads once (slots, runbook version)

    counts: Counter[str] = Counter()
    for collection in (store.runs, store.slots, store.runbooks, store.runbook_versions):
        count_operations(collection, counts)
    for number in range(1, 6):
        assert await engine.consider(f"i-{number}", document=incident(number)) == "run started"
        await drives_done(engine)

    counted = +counts  # the operations of the five runs (without the zero "(inside)")
    for number in range(6):
        loaded = await store.load_run(f"i-{number}")
        assert loaded is not None and loaded[0].status == "succeeded", loaded
    started = [e for e in bus.published if e.type == "remediation.started"]
    assert len(started) == 6
    # Every run's events were published and pulled out of its outbox.
    assert all(not document.get("outbox") for document in database["runs"].documents.values())
    runs = 5
    assert counted == Counter(
        {
            "runs.insert_one": runs,
            "runs.update_one": runs,  # the run's end (succeeded, its steps and events)
            "runs.find_one_and_update": runs,  # the outbox pull, without reading the run first
            "system_slots.update_one": 2 * runs,  # admitted, released
            # No query for queued runs: none waited here, and the store's queue (another
            # instance's runs) was asked at the first run's release, less than a second ago.
        }
    ), counted
    await engine.stop()


async def test_a_copy_of_the_slots_made_stale_by_another_instance_never_admits_past_the_limit() -> None:
    database, bus = MemoryDatabase(), MemoryBus()
    await acme_with_a_noop_runbook(database, max_concurrent=1)
    first, first_store = await an_instance(database, bus)
    second, _ = await an_instance(database, bus)
    # The first instance runs one incident to its end: it keeps the system's slots as it wrote them
    # (free). Then the second instance admits a run and keeps it going (its drive is held).
    assert await first.consider("i-0", document=incident(0)) == "run started"
    await drives_done(first)
    holding = asyncio.Event()
    original_probe = second._caller.probe

    async def slow_probe(url: str, timeout_s: float, allowlist: list[str]) -> ProbeAnswer:
        await holding.wait()
        return await original_probe(url, timeout_s, allowlist)

    second._caller.probe = slow_probe  # type: ignore[method-assign]
    assert await second.consider("i-1", document=incident(1)) == "run started"
    await until_a_slot_is_held(first_store)

    # The first instance's copy says "free"; the stored slots say "taken": it must wait.
    assert await first.consider("i-2", document=incident(2)) == "run started"
    await drives_done(first)
    queued = await first_store.load_run("i-2")
    assert queued is not None and queued[0].status == "queued", queued
    assert len((await first_store.load_slots("acme", "billing-api")).holders) == 1

    holding.set()
    await drives_done(first, second)
    await first.stop()
    await second.stop()


async def test_a_run_waiting_on_a_slow_system_does_not_hold_up_starting_another() -> None:
    database, bus = MemoryDatabase(), MemoryBus()
    await acme_with_a_noop_runbook(database)
    db: Any = database
    store = RemediationStore(db)
    turns = Turns()
    relay = OutboxRelay(bus, turn=turns)  # type: ignore[arg-type]
    desk = EscalationDesk(store, relay, turns, lambda: T0, b"secret", "http://remediation", DueTimes(db))
    answering = asyncio.Event()
    probed: list[str] = []

    class SlowSystem(SystemCaller):
        async def probe(self, url: str, timeout_s: float, allowlist: list[str]) -> ProbeAnswer:
            probed.append(url)
            await answering.wait()
            return ProbeAnswer(200, 1.0, '{"status":"healthy"}')

    # One drive at a time in this process (the permits bound the store work).
    engine = RunEngine(
        store, TenantCopy(db), CredentialVault(db, None), SlowSystem(), desk, relay, turns, lambda: T0, 15.0, 1
    )
    assert await engine.consider("i-0", document=incident(0)) == "run started"
    for _ in range(100):
        if probed:
            break
        await asyncio.sleep(0)
    assert probed, "the first run never reached its verification probe"

    # The first run waits on the system's answer; the second is admitted and probes meanwhile.
    assert await engine.consider("i-1", document=incident(1)) == "run started"
    for _ in range(100):
        if len(probed) == 2:
            break
        await asyncio.sleep(0)
    assert len(probed) == 2, "the second run waited for the first one's slow system"
    assert len((await store.load_slots("acme", "billing-api")).holders) == 2

    answering.set()
    await drives_done(engine)
    for number in range(2):
        loaded = await store.load_run(f"i-{number}")
        assert loaded is not None and loaded[0].status == "succeeded", loaded
    started = sorted(e.incident_id or "" for e in bus.published if e.type == "remediation.started")
    assert started == ["i-0", "i-1"], started
    await engine.stop()


# A call to a customer's admin endpoint is recorded as started only when it is really on its way: the
# engine takes one of a bounded number of call slots first, so a crash leaves at most that many
# not-safe-to-repeat steps that "may have run" (each escalates to a person).
RUNS = 6
CALLS_IN_FLIGHT = 2


async def test_at_most_the_bounded_number_of_admin_calls_are_recorded_as_started_at_once() -> None:
    database, bus = MemoryDatabase(), MemoryBus()
    db: Any = database
    await acme_with_a_noop_runbook(database)
    restart = parse_runbook(
        {
            "name": "noop",  # the incidents name this runbook
            "steps": [
                {
                    "name": "restart the service",
                    "action": "http_admin",
                    "params": {"path": "/restart-service"},
                    "timeout_seconds": 30,
                    "safe_to_repeat": False,
                }
            ],
            "verification": {"expect_status": [200]},
            "blast_radius": {"max_concurrent_per_system": 100, "max_runs_per_system_per_hour": 1000},
        }
    )
    store = RemediationStore(db)
    await store.save_runbook(restart, "test", "test", T0)
    answering = asyncio.Event()
    calls: list[str] = []

    class SlowAdminEndpoint(SystemCaller):
        async def call_admin(self, url: str, *_: Any) -> CallResult:
            calls.append(url)
            await answering.wait()
            return CallResult("succeeded", "HTTP 200")

        async def probe(self, url: str, timeout_s: float, allowlist: list[str]) -> ProbeAnswer:
            return ProbeAnswer(200, 1.0, '{"status":"healthy"}')

    turns = Turns()
    relay = OutboxRelay(bus, turn=turns)  # type: ignore[arg-type]
    desk = EscalationDesk(store, relay, turns, lambda: T0, b"secret", "http://remediation", DueTimes(db))
    engine = RunEngine(
        store,
        TenantCopy(db),
        CredentialVault(db, None),
        SlowAdminEndpoint(),
        desk,
        relay,
        turns,
        lambda: T0,
        max_admin_calls_in_flight=CALLS_IN_FLIGHT,
    )
    for number in range(RUNS):
        assert await engine.consider(f"i-{number}", document=incident(number)) == "run started"
    for _ in range(500):  # let every run get as far as it can while the endpoint does not answer
        await asyncio.sleep(0)

    async def recorded_as_started() -> int:
        runs = [await store.load_run(f"i-{number}") for number in range(RUNS)]
        return sum(1 for loaded in runs if loaded and any(r.status == "started" for r in loaded[0].records))

    assert len(calls) == CALLS_IN_FLIGHT
    assert await recorded_as_started() == CALLS_IN_FLIGHT  # the others wait unrecorded: safe to start later

    answering.set()
    await drives_done(engine)
    assert len(calls) == RUNS  # every run made its one call
    for number in range(RUNS):
        loaded = await store.load_run(f"i-{number}")
        assert loaded is not None and loaded[0].status == "succeeded", loaded
    await engine.stop()


async def test_runs_created_side_by_side_are_inserted_in_one_write_and_each_incident_still_gets_one() -> None:
    database, bus = MemoryDatabase(), MemoryBus()
    await acme_with_a_noop_runbook(database)
    engine, store = await an_instance(database, bus)
    assert await engine.consider("i-0", document=incident(0)) == "run started"
    await drives_done(engine)

    batches: list[int] = []
    insert_many = store.runs.insert_many

    async def recording_insert_many(documents: Any, ordered: bool = True) -> Any:
        documents = list(documents)
        batches.append(len(documents))
        return await insert_many(documents, ordered=ordered)

    store.runs.insert_many = recording_insert_many  # type: ignore[method-assign]
    # A consumer poll's incidents handled side by side: i-0 again (a redelivered triage), and i-3
    # twice (its report and its triage arriving at the same moment).
    numbers = [0, 1, 2, 3, 3, 4, 5]
    answers = await asyncio.gather(*(engine.consider(f"i-{n}", document=incident(n)) for n in numbers))
    await drives_done(engine)

    assert batches == [len(numbers)]  # one store write for all of them
    started, exists = "run started", "run exists"
    assert answers == [exists, started, started, started, exists, started, started]
    for number in range(6):
        loaded = await store.load_run(f"i-{number}")
        assert loaded is not None and loaded[0].status == "succeeded", loaded
    assert len([e for e in bus.published if e.type == "remediation.started"]) == 6  # one per incident
    await engine.stop()


async def test_slot_moves_waiting_for_the_systems_turn_go_in_one_write_and_the_limit_holds() -> None:
    database, bus = MemoryDatabase(), MemoryBus()
    await acme_with_a_noop_runbook(database, max_concurrent=3)
    engine, store = await an_instance(database, bus)
    holders_written: list[int] = []
    save_slots = store.save_slots

    async def save_slots_in_a_round_trip(tenant_id: str, system: str, read: Any, new: Any) -> bool:
        await asyncio.sleep(0.002)  # as a store's: the moves of other runs queue up meanwhile
        saved = await save_slots(tenant_id, system, read, new)
        if saved:
            holders_written.append(len(new.holders))
        return saved

    store.save_slots = save_slots_in_a_round_trip  # type: ignore[method-assign]
    runs = 9
    started = await asyncio.gather(*(engine.consider(f"i-{n}", document=incident(n)) for n in range(runs)))
    await drives_done(engine)

    assert started == ["run started"] * runs
    for number in range(runs):
        loaded = await store.load_run(f"i-{number}")
        assert loaded is not None and loaded[0].status == "succeeded", loaded
    assert (await store.load_slots("acme", "billing-api")).holders == []
    assert max(holders_written) <= 3, holders_written  # the limit
    # One admission and one release per run, in fewer writes than moves (one write per move
    # made the system's turn the limit of a burst).
    assert len(holders_written) < 2 * runs, holders_written
    await engine.stop()
