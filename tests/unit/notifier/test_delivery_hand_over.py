"""A customer's first email goes from planning to the relay without the due query.

The e2e profile (docs/status/notifier.md, session 6) put the due query on the way to every
"we received it" email: planned, stored, then found again by the delivery job's query. The
planner now hands a delivery due at once to this process's delivery job; the round that
follows sends it from memory. The stored copy stays the truth: a round that asks the store
finds it too, and the claim (a conditional write) lets only one attempt send it.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from typing import Any

from test_delivery_round_trips import T0, a_worker
from test_planner_round_trips import a_planner, count, incident_event

from aftercare.events.incidents import Channel, IncidentReported
from aftercare.events.tenants import Priority
from aftercare.events.testing import MemoryBus, MemoryDatabase
from aftercare.events.triage import IncidentTriaged


async def test_a_report_is_planned_handed_over_and_sent_without_asking_the_store_for_due_deliveries() -> None:
    database, bus = MemoryDatabase(), MemoryBus()
    planner, store = await a_planner(database)
    worker, _, relay = a_worker(database, bus)
    planner._hand_over = worker.hand_over  # wired so in components.py
    counts: Counter[str] = Counter()
    count(store.deliveries, "find", counts)

    await planner.on_event(
        incident_event(
            IncidentReported(
                incident_id="i-1", number="INC-1", title="billing is down", channel=Channel.API, reported_at=T0
            )
        )
    )
    handed = worker.take_handed_over()
    assert [document["kind"] for document in handed] == ["incident-received"]
    assert await worker.send_handed_over(handed) == 1

    assert relay.sent == [handed[0]["_id"]]
    assert database["deliveries"].documents[handed[0]["_id"]]["state"] == "sent"
    assert counts["deliveries.find"] == 0, "the due query was not needed"
    assert worker.take_handed_over() == []


async def test_a_handed_over_delivery_that_a_store_round_also_found_goes_out_once() -> None:
    database, bus = MemoryDatabase(), MemoryBus()
    planner, _ = await a_planner(database)
    worker, _, relay = a_worker(database, bus)
    planner._hand_over = worker.hand_over
    await planner.on_event(
        incident_event(
            IncidentReported(
                incident_id="i-1", number="INC-1", title="billing is down", channel=Channel.API, reported_at=T0
            )
        )
    )
    handed = worker.take_handed_over()

    # e.g. the poll interval ran out while the hand-over waited: both rounds try it at once
    sent_by_both = await asyncio.gather(worker.send_handed_over(handed), worker.run_due())

    assert sent_by_both == [1, 1], "both rounds tried it"
    assert relay.sent == [handed[0]["_id"]], "the claim let one of them send"


async def test_a_delivery_collected_for_the_digest_is_not_handed_over() -> None:
    database = MemoryDatabase()
    planner, store = await a_planner(database)
    handed: list[dict[str, Any]] = []
    planner._hand_over = handed.append
    await planner.on_event(
        incident_event(
            IncidentReported(
                incident_id="i-1", number="INC-1", title="printer is slow", channel=Channel.API, reported_at=T0
            )
        )
    )
    handed.clear()

    # A P4 goes into the contact's digest (the default digest priorities): due later, not now.
    await planner.on_event(
        incident_event(IncidentTriaged(incident_id="i-1", number="INC-1", priority=Priority.P4, category="other"))
    )

    digest = [document async for document in store.deliveries.find({"digest": True})]
    assert len(digest) == 1 and digest[0]["due_at"] > T0
    assert handed == []


async def test_a_reports_received_is_planned_while_the_read_model_is_written() -> None:
    database = MemoryDatabase()
    planner, store = await a_planner(database)
    delivery_stored = asyncio.Event()
    planner._hand_over = lambda delivery: delivery_stored.set()
    original_insert = store.incidents.insert_one

    async def read_model_write_that_waits_for_the_delivery(document: dict[str, Any]) -> Any:
        # Planned only after this write, the delivery would never come: the wait would time out.
        await asyncio.wait_for(delivery_stored.wait(), timeout=5)
        return await original_insert(document)

    store.incidents.insert_one = read_model_write_that_waits_for_the_delivery  # type: ignore[method-assign]

    await planner.on_event(
        incident_event(
            IncidentReported(
                incident_id="i-1", number="INC-1", title="billing is down", channel=Channel.API, reported_at=T0
            )
        )
    )

    assert database["incidents"].documents["i-1"]["number"] == "INC-1"
    assert [d["kind"] async for d in store.deliveries.find({})] == ["incident-received"]
