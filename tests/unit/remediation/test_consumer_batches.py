"""The incidents of one consumer poll, handled side by side, share their store writes: the halves
(report, triage) merged by one update command and one read, the runs inserted by one write; each
incident still gets exactly one run."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import Any

from aftercare.events.envelope import envelope_for
from aftercare.events.incidents import Channel, IncidentReported, Severity
from aftercare.events.tenants import Priority
from aftercare.events.testing import MemoryBus, MemoryDatabase
from aftercare.events.triage import IncidentTriaged
from aftercare.remediation.entrypoints.consumer import IncidentsForRemediation

from remediation_doubles import acme_with_a_noop_runbook, an_instance, drives_done, run_statuses


class IncidentsWithBulkWrites:
    """The in-memory incidents collection with the store's bulk_write (one command, many updates),
    counting the commands that merge incidents."""

    def __init__(self, collection: Any) -> None:
        self._collection = collection
        self.merge_commands: list[int] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self._collection, name)

    async def bulk_write(self, requests: list[Any], ordered: bool = True) -> None:
        self.merge_commands.append(len(requests))
        for request in requests:
            await self._collection.update_one(request._filter, request._doc, upsert=request._upsert)

    async def find_one_and_update(self, *args: Any, **kwargs: Any) -> Any:
        self.merge_commands.append(1)
        return await self._collection.find_one_and_update(*args, **kwargs)


def reported(number: int) -> Any:
    return envelope_for(
        IncidentReported(
            incident_id=f"i-{number}",
            number=f"INC-{number}",
            title="billing is down",
            channel=Channel.API,
            severity=Severity.ERROR,
            system="billing-api",
            reported_at=datetime(2026, 11, 30, 3, 0, tzinfo=UTC),
        ),
        source="intake",
        tenant_id="acme",
        incident_id=f"i-{number}",
    )


def triaged(number: int) -> Any:
    return envelope_for(
        IncidentTriaged(
            incident_id=f"i-{number}",
            number=f"INC-{number}",
            priority=Priority.P3,
            category="application",
            system="billing-api",
            runbook="noop",
        ),
        source="triage",
        tenant_id="acme",
        incident_id=f"i-{number}",
    )


async def test_the_halves_of_incidents_handled_side_by_side_are_merged_by_one_command_each_wave() -> None:
    database, bus = MemoryDatabase(), MemoryBus()
    await acme_with_a_noop_runbook(database)
    engine, store = await an_instance(database, bus)
    incidents = IncidentsWithBulkWrites(store.incidents)
    store.incidents = incidents  # type: ignore[assignment]
    handlers = IncidentsForRemediation(store, engine, engine._escalations)
    count = 5

    await asyncio.gather(*(handlers.reported(reported(n)) for n in range(count)))
    # The triage of i-0 twice (a redelivery) among the others.
    await asyncio.gather(*(handlers.triaged(triaged(n)) for n in [0, *range(count), 0]))
    await drives_done(engine)

    assert incidents.merge_commands == [count, count + 2], incidents.merge_commands
    assert await run_statuses(store, count) == ["succeeded"] * count
    assert len([e for e in bus.published if e.type == "remediation.started"]) == count  # one run each
    merged = await store.incident("i-3")
    assert merged is not None and merged["reported"] and merged["triaged"] and merged["runbook"] == "noop"
    await engine.stop()
