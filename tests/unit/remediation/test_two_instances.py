"""Two remediation instances on one store: an instance holding a stale copy of a run must not act
on it. The integration test (tests/integration/remediation/test_two_processes.py) proves the whole
promise with two OS processes; this pins the one interleaving that is hard to hit there."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from aftercare.events.outbox import OutboxRelay
from aftercare.events.schedule import DueTimes
from aftercare.events.tenant_copy import TenantCopy
from aftercare.events.testing import MemoryBus, MemoryDatabase
from aftercare.remediation.adapters.credentials import CredentialVault
from aftercare.remediation.adapters.executor import SystemCaller
from aftercare.remediation.adapters.store import RemediationStore
from aftercare.remediation.domain import blast_radius
from aftercare.remediation.domain import run as machine
from aftercare.remediation.domain.run import Run
from aftercare.remediation.domain.runbook import IncidentFacts, parse_runbook
from aftercare.remediation.service_layer.escalations import EscalationDesk
from aftercare.remediation.service_layer.runs import RunEngine, _Progress
from aftercare.remediation.service_layer.turns import Turns

T0 = datetime(2026, 11, 30, 3, 0, tzinfo=UTC)


def an_instance(database: MemoryDatabase, bus: MemoryBus) -> tuple[RunEngine, RemediationStore]:
    """One remediation process's engine: its own turns and caches, the shared store and bus."""
    db: Any = database
    store = RemediationStore(db)
    turns = Turns()
    relay = OutboxRelay(bus, turn=turns)  # type: ignore[arg-type]
    desk = EscalationDesk(store, relay, turns, lambda: T0, b"secret", "http://remediation", DueTimes(db))
    engine = RunEngine(
        store, TenantCopy(db), CredentialVault(db, None), SystemCaller(), desk, relay, turns, lambda: T0, 2.0
    )
    return engine, store


def restart_in_flight() -> tuple[Run, machine.Execute]:
    runbook = parse_runbook(
        {
            "name": "restart-service",
            "steps": [
                {
                    "name": "restart",
                    "action": "http_admin",
                    "params": {"path": "/restart-service"},
                    "timeout_seconds": 10,
                    "safe_to_repeat": False,
                }
            ],
            "verification": {"attempts": 1},
        }
    )
    run = Run(
        run_id="run-1",
        incident=IncidentFacts(incident_id="i-1", tenant_id="acme", system="billing-api"),
        runbook=runbook,
        runbook_version=1,
        status="active",
        created_at=T0,
        admitted_at=T0,
    )
    move = machine.decide(run, T0)
    assert isinstance(move, machine.Execute)
    return machine.start_step(run, move, {}, "http://billing/admin/restart-service", T0), move


async def test_an_instance_with_a_stale_run_neither_pages_people_nor_frees_the_slot() -> None:
    database, bus = MemoryDatabase(), MemoryBus()
    first, store = an_instance(database, bus)
    second, _ = an_instance(database, bus)
    # The first instance is calling the restart (recorded as started) and holds the system's slot.
    started, restart = restart_in_flight()
    await store.insert_run(started, T0 + timedelta(seconds=12), [])
    slots = blast_radius.admission(blast_radius.SystemSlots(), "run-1", started.runbook.blast_radius, "billing-api", T0)
    assert isinstance(slots, blast_radius.Admitted)
    assert await store.save_slots("acme", "billing-api", blast_radius.SystemSlots(), slots.slots)

    # The second instance read the run while the restart was in flight (its lease ran out on a
    # slow machine), so to it the restart looks interrupted ...
    loaded = await store.load_run("i-1")
    assert loaded is not None
    stale, stale_rev, _ = loaded
    move = machine.decide(stale, T0 + timedelta(seconds=13))
    assert isinstance(move, machine.Escalate) and "not safe to repeat" in move.reason
    # ... but before it acts, the first instance records the restart's answer.
    finished = machine.finish_step(started, restart, "succeeded", "HTTP 200", T0, T0 + timedelta(seconds=1))
    assert await store.save_run(finished, stale_rev, T0 + timedelta(seconds=3)) is not None

    await second._escalate(_Progress(stale, stale_rev), move)

    assert await store.escalations_of("i-1") == []
    assert [e.type for e in bus.published] == []
    assert (await store.load_slots("acme", "billing-api")).holders == ["run-1"]
    loaded = await store.load_run("i-1")
    assert loaded is not None and loaded[0].status == "active"
    await first.stop()
    await second.stop()
