"""A run whose events cannot be published (Kafka down) still finishes and gives its system's slot
back; its events wait in its outbox and go out in order once Kafka is back.

Found by the 2,000-incident fault run: runs verified during the broker kill stored their end, failed
to publish it, and stopped there without releasing their blast-radius slot, so the next run of that
system would have waited for a slot until its queue timeout escalated it to a person.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from aftercare.events.envelope import Envelope
from aftercare.events.producer import PublishFailed
from aftercare.events.testing import MemoryBus, MemoryDatabase
from aftercare.remediation.adapters.run_outbox import RunOutboxRelay
from tests.unit.remediation.test_store_round_trips import acme_with_a_noop_runbook, an_instance, drives_done, incident


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
    relay = RunOutboxRelay(bus)  # type: ignore[arg-type]
    swept = await relay.sweep(store.runs, min_age_s=0)
    assert swept == len(bus.published) > 0
    for incident_id in ("i-1", "i-2"):
        types = [event.type for event in bus.published if event.incident_id == incident_id]
        assert types[0] == "remediation.started", types
        assert types[-1] == "remediation.succeeded", types
        assert types.count("remediation.succeeded") == 1, types
    assert all(not document.get("outbox") for document in database["runs"].documents.values())
    await engine.stop()
