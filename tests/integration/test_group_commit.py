"""Group commit (aftercare.events.group_commit) against the real store and broker: many concurrent
new documents in one write and one Kafka batch, each caller answered only once both are done;
a duplicate fails alone and is never announced; a batch a crash left in the ledger is finished
by the sweep for exactly the documents that were written."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import pytest
import pytest_asyncio
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import AutoReconnect, DuplicateKeyError

from aftercare.events import outbox, topics
from aftercare.events.envelope import Envelope, envelope_for
from aftercare.events.group_commit import GroupCommit
from aftercare.events.incidents import Channel, IncidentReported
from aftercare.events.outbox import OutboxRelay
from aftercare.events.producer import EventProducer, PublishFailed

from kafka_helpers import Infrastructure, create_topics, read_all

pytestmark = pytest.mark.integration


@pytest_asyncio.fixture(loop_scope="session")
async def producer(infrastructure: Infrastructure) -> AsyncIterator[EventProducer]:
    await create_topics(infrastructure.bootstrap_servers, topics.INCIDENTS)
    events = EventProducer(infrastructure.bootstrap_servers, client_id="group-commit-tests", publish_deadline_s=30)
    await events.start()
    try:
        yield events
    finally:
        await events.stop()


def opening(incident_id: str, title: str) -> tuple[dict[str, Any], Envelope[IncidentReported]]:
    event = envelope_for(
        IncidentReported(
            incident_id=incident_id,
            number="INC-1001",
            title=title,
            channel=Channel.API,
            reported_at=datetime.now(UTC),
        ),
        source="test",
        tenant_id="tenant-a",
        incident_id=incident_id,
    )
    return {"_id": incident_id, "tenant_id": "tenant-a", "title": title}, event


async def announced(infrastructure: Infrastructure, incident_ids: set[str]) -> list[dict[str, Any]]:
    records = await read_all(infrastructure.bootstrap_servers, topics.INCIDENTS)
    return [json.loads(r.value) for r in records if r.key is not None and r.key.decode() in incident_ids]


async def test_concurrent_inserts_are_stored_and_announced_before_each_caller_returns(
    infrastructure: Infrastructure, mongo_db: AsyncDatabase[dict[str, Any]], producer: EventProducer
) -> None:
    group = GroupCommit(mongo_db["incidents"], producer)
    openings = [opening(str(uuid.uuid4()), f"Disk full {n}") for n in range(40)]

    await asyncio.gather(*(group.insert(document, [event]) for document, event in openings))

    ids = {document["_id"] for document, _ in openings}
    stored = {document["_id"] async for document in mongo_db["incidents"].find({})}
    assert stored == ids
    events = await announced(infrastructure, ids)
    assert {event["id"] for event in events} == {event.id for _, event in openings}
    await group.settled()  # finished batches' ledger documents are deleted after the callers return
    assert await mongo_db[outbox.LEDGER].count_documents({}) == 0  # every batch finished


async def test_a_duplicate_fails_alone_and_its_event_never_goes_out(
    infrastructure: Infrastructure, mongo_db: AsyncDatabase[dict[str, Any]], producer: EventProducer
) -> None:
    group = GroupCommit(mongo_db["incidents"], producer)
    taken = str(uuid.uuid4())
    await mongo_db["incidents"].insert_one({"_id": taken, "tenant_id": "tenant-a", "title": "first attempt"})
    duplicate, duplicate_event = opening(taken, "second attempt")
    others = [opening(str(uuid.uuid4()), f"Queue stuck {n}") for n in range(5)]

    results = await asyncio.gather(
        group.insert(duplicate, [duplicate_event]),
        *(group.insert(document, [event]) for document, event in others),
        return_exceptions=True,
    )

    assert isinstance(results[0], DuplicateKeyError)
    assert results[1:] == [None] * len(others)
    stored = await mongo_db["incidents"].find_one({"_id": taken})
    assert stored is not None and stored["title"] == "first attempt"
    events = await announced(infrastructure, {taken, *(document["_id"] for document, _ in others)})
    assert duplicate_event.id not in {event["id"] for event in events}
    assert {event["id"] for event in events} == {event.id for _, event in others}


async def test_the_sweep_finishes_a_batch_a_crash_left_for_the_documents_that_were_written(
    infrastructure: Infrastructure, mongo_db: AsyncDatabase[dict[str, Any]], producer: EventProducer
) -> None:
    # As a crash after the ledger write leaves it: one document written, one not.
    written, written_event = opening(str(uuid.uuid4()), "Backup failed")
    never, never_event = opening(str(uuid.uuid4()), "Never stored")
    await mongo_db["incidents"].insert_one(written)
    await mongo_db[outbox.LEDGER].insert_one(
        {
            "_id": str(uuid.uuid4()),
            "collection": "incidents",
            "entries": [
                outbox.stored(written_event) | {"document_id": written["_id"]},
                outbox.stored(never_event) | {"document_id": never["_id"]},
            ],
            "at": time.time() - 60,
        }
    )
    relay = OutboxRelay(producer)

    published = await relay.sweep_ledger(mongo_db["incidents"], abandon_after_s=30)

    assert published == 1
    events = await announced(infrastructure, {written["_id"], never["_id"]})
    assert [event["id"] for event in events] == [written_event.id]
    assert await mongo_db[outbox.LEDGER].count_documents({}) == 0


class LedgerLosingItsConnection:
    """The ledger of an instance whose store connection drops right after its insert failed."""

    def __init__(self, ledger: Any) -> None:
        self._ledger = ledger

    def __getattr__(self, name: str) -> Any:
        return getattr(self._ledger, name)

    async def update_one(self, *args: Any, **kwargs: Any) -> Any:
        raise AutoReconnect("connection closed")


async def test_the_sweep_never_announces_the_losing_batch_of_two_instances_opening_one_incident(
    infrastructure: Infrastructure, mongo_db: AsyncDatabase[dict[str, Any]], producer: EventProducer
) -> None:
    """Two intake instances open the same incident (a dedup key claimed by one, taken over by the
    other): one insert wins. The loser's ledger still lists its IncidentReported when its cleanup
    fails (or before it ran, when the sweep is quicker on a loaded machine). CI saw the second
    IncidentReported on Kafka: the sweep published the events of every document that existed."""
    first = GroupCommit(mongo_db["incidents"], producer)
    second = GroupCommit(mongo_db["incidents"], producer)
    second._ledger = LedgerLosingItsConnection(second._ledger)  # type: ignore[assignment]
    incident_id = str(uuid.uuid4())
    winner, winner_event = opening(incident_id, "Checkout fails")
    loser, loser_event = opening(incident_id, "Checkout fails")

    await first.insert(winner, [winner_event])
    with pytest.raises(DuplicateKeyError):
        await second.insert(loser, [loser_event])
    await first.settled()
    assert await mongo_db[outbox.LEDGER].count_documents({}) == 1  # the loser's, listing its event

    published = await OutboxRelay(producer).sweep_ledger(mongo_db["incidents"], min_age_s=0)

    assert published == 0
    events = await announced(infrastructure, {incident_id})
    assert [event["id"] for event in events] == [winner_event.id]
    assert await mongo_db[outbox.LEDGER].count_documents({}) == 0  # nothing of it will ever go out


def left_pending(incident_id: str, title: str) -> tuple[dict[str, Any], Envelope[IncidentReported]]:
    """A document as a crash between its write and its publish leaves it (settled long ago)."""
    document, event = opening(incident_id, title)
    return document | {outbox.FIELD: [outbox.stored(event) | {"at": 0.0}], outbox.FLAG: True}, event


async def test_frequent_sweeps_read_only_what_failed_here_and_full_sweeps_find_what_a_crash_left(
    infrastructure: Infrastructure, mongo_db: AsyncDatabase[dict[str, Any]], producer: EventProducer
) -> None:
    # On the embedded store, finding flagged documents reads the whole collection: the sweep does
    # that at start-up and every few minutes, and every few seconds only looks at what it knows.
    incidents = mongo_db["incidents"]
    crashed, crashed_event = left_pending(str(uuid.uuid4()), "Left by a crash")
    await incidents.insert_one(crashed)
    relay = OutboxRelay(producer)

    assert await relay.sweep(incidents, full=False) == 0
    assert await announced(infrastructure, {crashed["_id"]}) == []
    assert await relay.sweep(incidents, full=True) == 1
    assert [e["id"] for e in await announced(infrastructure, {crashed["_id"]})] == [crashed_event.id]
    after = await incidents.find_one({"_id": crashed["_id"]})
    assert after is not None and after[outbox.FIELD] == [] and after[outbox.FLAG] is False

    # A flush that fails here (Kafka cannot acknowledge within a microsecond) is remembered, and
    # the next frequent pass publishes it without scanning.
    failed, failed_event = left_pending(str(uuid.uuid4()), "Publish failed")
    await incidents.insert_one(failed)
    impatient = EventProducer(infrastructure.bootstrap_servers, client_id="impatient", publish_deadline_s=1e-6)
    await impatient.start()
    try:
        with pytest.raises(PublishFailed):
            await OutboxRelay(impatient).flush(incidents, failed["_id"])
    finally:
        await impatient.stop()

    assert await relay.sweep(incidents, full=False) == 1
    assert failed_event.id in {e["id"] for e in await announced(infrastructure, {failed["_id"]})}
