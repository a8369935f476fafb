"""Remediation's unit-test doubles: one tenant with a no-op runbook, a run engine on the in-memory
store and bus, and a way to count the store operations a run costs.

Shared by the unit tests under tests/unit/remediation (tests/ is on pytest's pythonpath, so this
imports the same way on every machine; tests/ itself is not a package).
"""

from __future__ import annotations

import asyncio
from collections import Counter
from datetime import UTC, datetime
from typing import Any

from aftercare.events.envelope import envelope_for
from aftercare.events.outbox import OutboxRelay
from aftercare.events.schedule import DueTimes
from aftercare.events.tenant_copy import TenantCopy
from aftercare.events.tenants import ContractTier, DiagnosticTarget, SupportedSystem, TenantUpserted
from aftercare.events.testing import MemoryBus, MemoryDatabase
from aftercare.remediation.adapters.credentials import CredentialVault
from aftercare.remediation.adapters.executor import SystemCaller
from aftercare.remediation.adapters.store import RemediationStore
from aftercare.remediation.domain.runbook import parse_runbook
from aftercare.remediation.domain.verification import ProbeAnswer
from aftercare.remediation.service_layer.escalations import EscalationDesk
from aftercare.remediation.service_layer.runs import RunEngine
from aftercare.remediation.service_layer.turns import Turns

T0 = datetime(2026, 11, 30, 3, 0, tzinfo=UTC)
OPERATIONS = ("find_one", "find", "insert_one", "update_one", "find_one_and_update")


class HealthySystem(SystemCaller):
    """The customer's system answering its health probe with 200 (no network in a unit test)."""

    async def probe(self, url: str, timeout_s: float, allowlist: list[str]) -> ProbeAnswer:
        return ProbeAnswer(200, 1.0, '{"status":"healthy"}')


class SystemRecovering(HealthySystem):
    """Its health probe answers once the test lets it (``answer.set()``): the run probing it keeps
    its slot and stays at work until then."""

    def __init__(self) -> None:
        self.answer = asyncio.Event()

    async def probe(self, url: str, timeout_s: float, allowlist: list[str]) -> ProbeAnswer:
        await self.answer.wait()
        return await super().probe(url, timeout_s, allowlist)


def count_operations(collection: Any, counts: Counter[str]) -> None:
    """Count the calls the service makes (the fake's find_one_and_update calls its own find_one)."""
    for operation in OPERATIONS:
        original = getattr(collection, operation)
        if operation == "find":

            def counted_find(*args: Any, _original: Any = original, **kwargs: Any) -> Any:
                counts[f"{collection.name}.find"] += 1
                return _original(*args, **kwargs)

            setattr(collection, operation, counted_find)
            continue

        async def counted(*args: Any, _original: Any = original, _operation: str = operation, **kwargs: Any) -> Any:
            if not counts["(inside)"]:
                counts[f"{collection.name}.{_operation}"] += 1
            counts["(inside)"] += 1
            try:
                return await _original(*args, **kwargs)
            finally:
                counts["(inside)"] -= 1

        setattr(collection, operation, counted)


async def an_instance(
    database: MemoryDatabase, bus: MemoryBus, caller: SystemCaller | None = None
) -> tuple[RunEngine, RemediationStore]:
    db: Any = database
    store = RemediationStore(db)
    turns = Turns()
    relay = OutboxRelay(bus, turn=turns)  # type: ignore[arg-type]
    desk = EscalationDesk(store, relay, turns, lambda: T0, b"secret", "http://remediation", DueTimes(db))
    tenants = TenantCopy(db)
    engine = RunEngine(
        store, tenants, CredentialVault(db, None), caller or HealthySystem(), desk, relay, turns, lambda: T0
    )
    return engine, store


async def acme_with_a_noop_runbook(database: MemoryDatabase, max_concurrent: int = 100) -> None:
    db: Any = database
    await TenantCopy(db).apply(
        envelope_for(
            TenantUpserted(
                tenant_id="acme",
                name="Acme",
                tier=ContractTier(name="gold"),
                systems=[
                    SupportedSystem(
                        name="billing-api",
                        diagnostic_target=DiagnosticTarget(kind="http", address="http://billing/health"),
                        admin_endpoint="http://billing/admin",
                    )
                ],
            ),
            source="test",
            tenant_id="acme",
        )
    )
    runbook = parse_runbook(
        {
            "name": "noop",
            "steps": [
                {"name": f"note {i}", "action": "add_note", "params": {"text": "looking"}, "timeout_seconds": 5}
                for i in range(3)
            ],
            "verification": {"expect_status": [200]},
            "blast_radius": {"max_concurrent_per_system": max_concurrent, "max_runs_per_system_per_hour": 1000},
        }
    )
    await RemediationStore(db).save_runbook(runbook, "test", "test", T0)


def incident(number: int) -> dict[str, Any]:
    return {
        "_id": f"i-{number}",
        "tenant_id": "acme",
        "reported": True,
        "triaged": True,
        "number": f"INC-{number}",
        "system": "billing-api",
        "category": "application",
        "runbook": "noop",
    }


async def drives_done(*engines: RunEngine) -> None:
    for _ in range(100):
        tasks = [task for engine in engines for task in engine._tasks]
        if not tasks:
            return
        await asyncio.gather(*tasks)
    raise AssertionError("drives did not settle")


async def run_statuses(store: RemediationStore, count: int) -> list[str | None]:
    """The stored status of the runs of incidents i-0 .. i-<count-1> (None: no run)."""
    statuses: list[str | None] = []
    for number in range(count):
        loaded = await store.load_run(f"i-{number}")
        statuses.append(loaded[0].status if loaded else None)
    return statuses


async def until_a_slot_is_held(store: RemediationStore) -> None:
    """Let the drives run until a run holds a slot of acme's billing-api."""
    for _ in range(100):
        if (await store.load_slots("acme", "billing-api")).holders:
            return
        await asyncio.sleep(0)
    raise AssertionError("no run took a slot")
