"""Intake's promise of delivery, tested against crashes of the intake process itself.

The store has no transactions, so an incident and the event announcing it are written together
into the incident's document (its outbox), then published, then removed from the outbox. Two
faults are tested with real intake processes killed with SIGKILL (no shutdown code runs):

* a crash between the write and the publish leaves a pending event in the document; the next
  start publishes it. Hitting that moment of a live process by timing is luck, so the test
  writes the document exactly as such a crash leaves it (the same fields and outbox entries
  intake writes) into the database of a killed intake, then starts intake again on it;
* a 202 means the event is durable in Kafka: every request answered with 202 before the kill
  has its event on Kafka, and whatever the killed process wrote but had not published (the
  requests in flight) is published by the restarted one.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from pymongo import AsyncMongoClient
from pymongo.asynchronous.database import AsyncDatabase

from aftercare.events import outbox, topics
from aftercare.events.envelope import envelope_for
from aftercare.events.incidents import Channel, IncidentReported, IncidentUpdated, Reporter

from .conftest import IntakeUnderTest, start_intake, stop_intake
from kafka_helpers import Infrastructure, read_all, wait_until

pytestmark = pytest.mark.integration


def distinct(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The first copy of each event. Kafka may carry an event twice (the outbox sweep can publish
    an event its request is publishing too); consumers deduplicate by event id, and so do these
    tests: a second *different* event is what must never appear."""
    seen: set[str] = set()
    return [event for event in events if not (event["id"] in seen or seen.add(event["id"]))]


@pytest.fixture
async def store(infrastructure: Infrastructure) -> AsyncIterator[AsyncMongoClient[dict[str, Any]]]:
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(infrastructure.mongo_url, tz_aware=True)
    try:
        yield client
    finally:
        await client.close()


async def incident_events(infrastructure: Infrastructure, incident_ids: set[str]) -> list[dict[str, Any]]:
    records = await read_all(infrastructure.bootstrap_servers, topics.INCIDENTS)
    return distinct([json.loads(r.value) for r in records if r.key is not None and r.key.decode() in incident_ids])


def document_left_by_a_crash(tenant_id: str, incident_id: str, number: str, title: str) -> dict[str, Any]:
    """An incident as IncidentDesk writes it when opened, then updated by a repeat report, with
    both events still in its outbox: the process died before it could publish either."""
    opened_at = datetime.now(UTC)
    reported = envelope_for(
        IncidentReported(
            incident_id=incident_id,
            number=number,
            title=title,
            channel=Channel.API,
            reporter=Reporter(name="Nagios"),
            reported_at=opened_at,
        ),
        source="intake",
        tenant_id=tenant_id,
        incident_id=incident_id,
        time=opened_at,
    )
    repeated = envelope_for(
        IncidentUpdated(
            incident_id=incident_id,
            number=number,
            channel=Channel.API,
            kind="occurrence",
            message=title,
            author=Reporter(name="Nagios"),
            occurrence_count=2,
            last_seen_at=opened_at,
        ),
        source="intake",
        tenant_id=tenant_id,
        incident_id=incident_id,
        time=opened_at,
    )
    timeline = [
        {
            "at": opened_at,
            "kind": "reported",
            "summary": f"Reported by api: {title}",
            "by": "Nagios",
            "channel": "api",
            "event_id": reported.id,
        },
        {
            "at": opened_at,
            "kind": "occurrence",
            "summary": f"Seen again (2x): {title}",
            "by": "Nagios",
            "channel": "api",
            "event_id": repeated.id,
        },
    ]
    return {
        "_id": incident_id,
        "tenant_id": tenant_id,
        "number": number,
        "title": title,
        "description": "",
        "channel": "api",
        "severity": "error",
        "status": "reported",
        "reporter": {"name": "Nagios", "email": None, "phone": None, "system": None},
        "system": None,
        "source": None,
        "dedup_key": None,
        "labels": {},
        "attachments": [],
        "occurrence_count": 2,
        "first_seen_at": opened_at,
        "last_seen_at": opened_at,
        "created_at": opened_at,
        "updated_at": opened_at,
        "details": {},
        "email_message_ids": [],
        "timeline": timeline,
        "applied_events": [],
        outbox.FIELD: [outbox.stored(reported), outbox.stored(repeated)],
        outbox.FLAG: True,
    }


async def test_events_a_crash_left_in_the_outbox_are_published_when_intake_starts_again(
    infrastructure: Infrastructure, tmp_path: Path, store: AsyncMongoClient[dict[str, Any]]
) -> None:
    crashed = start_intake(infrastructure, tmp_path / "before")
    stop_intake(crashed, kill=True)
    incidents = store[crashed.database]["incidents"]
    incident_id, title = str(uuid.uuid4()), f"Backup job hung {uuid.uuid4().hex[:8]}"
    left = document_left_by_a_crash("tenant-a", incident_id, "INC-4242", title)
    await incidents.insert_one(left)
    assert await incident_events(infrastructure, {incident_id}) == []  # nothing went out before the crash

    restarted = start_intake(infrastructure, tmp_path / "after", database=crashed.database)
    try:
        events = await wait_until(
            lambda: _at_least(infrastructure, incident_id, 2), timeout=60, message="the pending events on Kafka"
        )
        assert [event["id"] for event in events] == [entry["id"] for entry in left[outbox.FIELD]]
        assert [event["type"] for event in events] == ["incident.reported", "incident.updated"]
        assert events[0]["data"]["title"] == title and events[0]["tenant_id"] == "tenant-a"

        async def outbox_emptied() -> bool:
            document = await incidents.find_one({"_id": incident_id})
            return document is not None and document[outbox.FIELD] == [] and document[outbox.FLAG] is False

        await wait_until(outbox_emptied, timeout=30, message="the outbox emptied")

        async with httpx.AsyncClient(base_url=restarted.base_url, timeout=30.0) as http:
            read = await http.get(f"/v1/incidents/{incident_id}", headers=restarted.auth("tenant-a"))
        assert read.status_code == 200, read.text
        assert read.json()["number"] == "INC-4242" and read.json()["occurrence_count"] == 2
    finally:
        stop_intake(restarted)


async def _at_least(infrastructure: Infrastructure, incident_id: str, count: int) -> list[dict[str, Any]] | None:
    events = await incident_events(infrastructure, {incident_id})
    return events if len(events) >= count else None


async def test_every_202_is_on_kafka_even_when_intake_is_killed_right_after_answering(
    infrastructure: Infrastructure, tmp_path: Path, store: AsyncMongoClient[dict[str, Any]]
) -> None:
    service = start_intake(infrastructure, tmp_path / "killed")
    batch = uuid.uuid4().hex[:8]
    accepted: list[dict[str, Any]] = []
    try:
        async with httpx.AsyncClient(
            base_url=service.base_url, timeout=30.0, limits=httpx.Limits(max_connections=20)
        ) as http:

            async def report(n: int) -> None:
                answer = await http.post(
                    "/v1/incidents", headers=service.auth("tenant-a"), json={"title": f"Crash batch {batch} report {n}"}
                )
                if answer.status_code == 202:
                    accepted.append(answer.json())
                    if len(accepted) == 1:
                        # No shutdown code runs: requests still in flight die with the process.
                        stop_intake(service, kill=True)

            await asyncio.gather(*(report(n) for n in range(20)), return_exceptions=True)
    finally:
        stop_intake(service, kill=True)
    assert accepted, "no report was answered before the kill"

    # Read right away, without restarting anything: the 202 was only sent once Kafka had the event.
    answered_ids = {answer["incident_id"] for answer in accepted}
    reported = [e for e in await incident_events(infrastructure, answered_ids) if e["type"] == "incident.reported"]
    assert {event["incident_id"] for event in reported} == answered_ids

    # What the killed process had written but not yet published goes out when intake starts again.
    database: AsyncDatabase[dict[str, Any]] = store[service.database]
    written = {document["_id"] async for document in database["incidents"].find({}, {"_id": 1})}
    assert answered_ids <= written
    restarted = start_intake(infrastructure, tmp_path / "restarted", database=service.database)
    try:

        async def all_published() -> bool:
            events = await incident_events(infrastructure, written)
            return {e["incident_id"] for e in events if e["type"] == "incident.reported"} == written

        await wait_until(all_published, timeout=60, message="every written incident announced")
        await wait_until(lambda: _no_pending(database), timeout=30, message="no outbox left pending")
    finally:
        stop_intake(restarted)


async def _no_pending(database: AsyncDatabase[dict[str, Any]]) -> bool:
    return await database["incidents"].count_documents({outbox.FLAG: True}) == 0


async def test_an_accepted_report_leaves_nothing_pending_in_its_outbox(
    intake: IntakeUnderTest, store: AsyncMongoClient[dict[str, Any]]
) -> None:
    # The normal path publishes and then removes the event in the request itself: nothing is left
    # for the sweep, which would otherwise publish every incident a second time.
    async with httpx.AsyncClient(base_url=intake.base_url, timeout=30.0) as http:
        answer = await http.post(
            "/v1/incidents",
            headers=intake.auth("tenant-a"),
            json={"title": f"Tape library offline {uuid.uuid4().hex[:8]}"},
        )
    assert answer.status_code == 202, answer.text
    incident_id = answer.json()["incident_id"]

    document = await store[intake.database]["incidents"].find_one({"_id": incident_id})

    assert document is not None
    assert document[outbox.FIELD] == [] and document[outbox.FLAG] is False

    async def ledger_finished() -> bool:
        # The batch's ledger document is deleted just after the 202 (group_commit.py).
        ledger = await store[intake.database][outbox.LEDGER].find({}).to_list()
        return all(entry["document_id"] != incident_id for batch in ledger for entry in batch["entries"])

    await wait_until(ledger_finished, timeout=10, message="the report's ledger batch finished")
    assert {e["type"] for e in await incident_events(intake.infrastructure, {incident_id})} == {"incident.reported"}


async def test_an_entry_that_can_never_be_published_is_dead_lettered_and_the_others_still_go_out(
    infrastructure: Infrastructure, tmp_path: Path, store: AsyncMongoClient[dict[str, Any]]
) -> None:
    # What an older intake could leave: an event over Kafka's size limit stored as pending (the
    # limit is now checked before the write), ahead of ten reports a crash left unpublished.
    crashed = start_intake(infrastructure, tmp_path / "before")
    stop_intake(crashed, kill=True)
    incidents = store[crashed.database]["incidents"]
    batch = uuid.uuid4().hex[:8]
    oversized_id = str(uuid.uuid4())
    oversized = document_left_by_a_crash("tenant-a", oversized_id, "INC-5000", f"Huge email {batch}")
    huge = envelope_for(
        IncidentReported(
            incident_id=oversized_id,
            number="INC-5000",
            title=f"Huge email {batch}",
            description="x" * 1_500_000,
            channel=Channel.EMAIL,
            reported_at=datetime.now(UTC),
        ),
        source="intake",
        tenant_id="tenant-a",
        incident_id=oversized_id,
    )
    oversized[outbox.FIELD] = [{"id": huge.id, "topic": topics.INCIDENTS, "json": huge.model_dump_json(), "at": 0.0}]
    await incidents.insert_one(oversized)  # first in the store's order: the sweep meets it first
    pending = {str(uuid.uuid4()): n for n in range(10)}
    for incident_id, n in pending.items():
        left = document_left_by_a_crash("tenant-a", incident_id, f"INC-{5001 + n}", f"Left pending {batch} {n}")
        for entry in left[outbox.FIELD]:
            entry["at"] = 0.0  # long settled: the sweep need not wait for their requests
        await incidents.insert_one(left)

    restarted = start_intake(infrastructure, tmp_path / "after", database=crashed.database)
    try:

        async def all_reported() -> bool:
            events = await incident_events(infrastructure, set(pending))
            return {e["incident_id"] for e in events if e["type"] == "incident.reported"} == set(pending)

        await wait_until(all_reported, timeout=90, interval=1.0, message="the ten pending reports published")

        dead_letters = store[crashed.database][outbox.DEAD_LETTERS]

        async def dead_lettered() -> dict[str, Any] | None:
            return await dead_letters.find_one({"_id": huge.id})

        dead = await wait_until(dead_lettered, timeout=60, message="the oversized entry dead-lettered")
        assert dead["document_id"] == oversized_id and dead["collection"] == "incidents"
        assert "EventTooLarge" in dead["reason"] and "description" in dead["reason"]
        assert dead["entry"]["json"] == huge.model_dump_json()  # kept whole, to be fixed and sent by hand
        document = await incidents.find_one({"_id": oversized_id})
        assert document is not None and document[outbox.FIELD] == []
        assert await incident_events(infrastructure, {oversized_id}) == []  # Kafka never saw it

        async with httpx.AsyncClient(base_url=restarted.base_url, timeout=30.0) as http:
            metrics = (await http.get("/metrics")).text
        assert 'aftercare_outbox_dead_lettered_total{collection="incidents",reason="EventTooLarge"} 1.0' in metrics
    finally:
        stop_intake(restarted)
