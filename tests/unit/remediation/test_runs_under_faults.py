"""Runs under the faults of the 2,000-incident fault run.

* Kafka down: runs verified during the broker kill stored their end, failed to publish it, and
  stopped there without releasing their blast-radius slot, so the next run of that system would
  have waited for a slot until its queue timeout escalated it to a person. A run now goes on
  when only its publish failed; its events wait in its outbox and go out in order later.
* Store killed: a run's last write landed but the store's reply was lost (the drive saw an
  error), so the run was finished in the store and still held its slot. A run that would wait
  for a slot now first gives back the slots of runs that have ended.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from aftercare.events.envelope import Envelope
from aftercare.events.outbox import OutboxRelay
from aftercare.events.producer import PublishFailed
from aftercare.events.testing import MemoryBus, MemoryDatabase
from aftercare.remediation.adapters.store import RemediationStore
from aftercare.remediation.service_layer.runs import RunEngine

from remediation_doubles import acme_with_a_noop_runbook, an_instance, drives_done, incident


class BrokerThatCanBeDown(MemoryBus):
    def __init__(self) -> None:
        super().__init__()
        self.down = False

    async def publish_serialized(self, records: Sequence[tuple[str, bytes, Envelope[Any]]]) -> None:
        if self.down:
            raise PublishFailed(f"Kafka did not acknowledge {len(records)} event(s) within 5 s")
        await super().publish_serialized(records)


async def test_a_run_verified_while_kafka_is_down_frees_its_slot_and_its_events_follow_in_order() -> None:
    database, bus = MemoryDatabase(), BrokerThatCanBeDown()
    await acme_with_a_noop_runbook(database, max_concurrent=1)  # one run at a time on billing-api
    engine, store = await an_instance(database, bus)

    bus.down = True
    assert await engine.consider("i-1", document=incident(1)) == "run started"
    await drives_done(engine)
    first = await store.load_run("i-1")
    assert first is not None and first[0].status == "succeeded", first
    slots = await store.load_slots("acme", "billing-api")
    assert slots.holders == [], "a finished run must give its system's slot back even when Kafka is down"

    # The next incident on the same system is admitted at once, not held for a slot nobody holds.
    assert await engine.consider("i-2", document=incident(2)) == "run started"
    await drives_done(engine)
    second = await store.load_run("i-2")
    assert second is not None and second[0].status == "succeeded", second
    assert bus.published == []  # nothing reached Kafka yet: it is all in the runs' outboxes

    bus.down = False
    relay = OutboxRelay(bus)  # type: ignore[arg-type]
    swept = await relay.sweep(store.runs, min_age_s=0)
    assert swept == len(bus.published) > 0
    for incident_id in ("i-1", "i-2"):
        types = [event.type for event in bus.published if event.incident_id == incident_id]
        assert types[0] == "remediation.started", types
        assert types[-1] == "remediation.succeeded", types
        assert types.count("remediation.succeeded") == 1, types
    assert all(not document.get("outbox") for document in database["runs"].documents.values())
    await engine.stop()


async def held_by(store: RemediationStore, engine: RunEngine, run_id: str) -> None:
    """Billing-api's one slot held by ``run_id``, as another process (or one since restarted)
    left it; ``engine`` remembers nothing about the slots, as after a restart."""
    slots = await store.load_slots("acme", "billing-api")
    assert slots.holders == []
    held = slots.model_copy(update={"holders": [run_id], "version": slots.version + 1})
    assert await store.save_slots("acme", "billing-api", slots, held)
    engine._slots.clear()


async def test_a_slot_left_held_by_a_run_that_ended_is_given_back_to_the_next_run_of_the_system() -> None:
    database, bus = MemoryDatabase(), MemoryBus()
    await acme_with_a_noop_runbook(database, max_concurrent=1)
    engine, store = await an_instance(database, bus)
    assert await engine.consider("i-1", document=incident(1)) == "run started"
    await drives_done(engine)
    first = await store.load_run("i-1")
    assert first is not None and first[0].status == "succeeded"
    # What the store kill left: the run's end stored, its slot never released.
    await held_by(store, engine, first[0].run_id)

    assert await engine.consider("i-2", document=incident(2)) == "run started"
    await drives_done(engine)
    second = await store.load_run("i-2")
    assert second is not None and second[0].status == "succeeded", second
    assert (await store.load_slots("acme", "billing-api")).holders == []
    await engine.stop()


async def test_a_slot_held_by_a_run_still_working_keeps_the_next_run_waiting() -> None:
    database, bus = MemoryDatabase(), MemoryBus()
    await acme_with_a_noop_runbook(database, max_concurrent=1)
    engine, store = await an_instance(database, bus)
    # Another instance's run is working on the system: it holds the slot and is active.
    assert await engine.consider("i-1", document=incident(1)) == "run started"
    await drives_done(engine)
    working = await store.load_run("i-1")
    assert working is not None
    await store.runs.update_one({"_id": "i-1"}, {"$set": {"status": "active"}})
    await held_by(store, engine, working[0].run_id)

    assert await engine.consider("i-2", document=incident(2)) == "run started"
    await drives_done(engine)
    waiting = await store.load_run("i-2")
    assert waiting is not None and waiting[0].status == "queued", waiting
    assert (await store.load_slots("acme", "billing-api")).holders == [working[0].run_id]
    await engine.stop()
