"""Triage's grouping state (first incident per group key, flapping history) is derived from
events, so an operator can drop it and replay it from Kafka: ``python -m aftercare.triage
rebuild-groups`` gives back what was there, and grouping goes on from it."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from pymongo import AsyncMongoClient

from aftercare.events import outbox
from aftercare.events.incidents import Channel, IncidentResolved, Severity
from aftercare.events.producer import EventProducer

from .conftest import TriageUnderTest, publish, report, tenant_event
from kafka_helpers import unique_name, wait_until


async def _state(mongo: AsyncMongoClient[dict[str, Any]], database: str, tenant: str) -> dict[str, Any]:
    """The tenant's part of the grouping state, in a form that compares."""
    db = mongo[database]
    heads = {
        document["_id"]: (document["incident_id"], document["reported_at"])
        async for document in db["grouping_heads"].find({})
        if f"|{tenant}|" in document["_id"]
    }
    flaps = {
        document["_id"]: (sorted(document.get("opened", [])), sorted(document.get("resolved", [])))
        async for document in db["flap_history"].find({})
        if document["_id"].startswith(f"{tenant}|")
    }
    return {"heads": heads, "flaps": flaps}


def _rebuild(service: TriageUnderTest) -> dict[str, Any]:
    env = dict(os.environ) | {
        "AFTERCARE_KAFKA_BOOTSTRAP_SERVERS": service.infrastructure.bootstrap_servers,
        "AFTERCARE_MONGO_URL": service.infrastructure.mongo_url,
        "AFTERCARE_TRIAGE_DATABASE": service.database,
    }
    done = subprocess.run(
        [sys.executable, "-m", "aftercare.triage", "rebuild-groups", "--json"],
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    summary: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return summary


async def test_the_grouping_state_dropped_and_replayed_from_kafka_is_what_it_was(
    triage_service: TriageUnderTest, producer: EventProducer
) -> None:
    tenant = unique_name("acme")
    await publish(producer, tenant, tenant_event(tenant))
    first = report("billing-db: too many connections", system="billing-db", severity=Severity.CRITICAL)
    again = report("billing-db: too many connections", system="billing-db", channel=Channel.ALERTMANAGER)
    keyed = report("wiki backup failed", system="wiki", dedup_key=unique_name("backup"))
    gone = report("shop-web 503", system="shop-web", severity=Severity.CRITICAL, source="lb-01")
    # Minutes apart, as a flapping source's opens are (two opens in one millisecond are one).
    flappy = [
        report(f"disk latency on san-3 ({n})", source="san-3", reported_at=datetime.now(UTC) - timedelta(minutes=n))
        for n in range(2)
    ]
    mongo: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(triage_service.infrastructure.mongo_url, tz_aware=True)
    incidents = mongo[triage_service.database]["incidents"]

    # Read from this triage's own database: other triage processes of the test session announce
    # the same decisions on the same topic.
    def triaged(ids: set[str]) -> Callable[[], Awaitable[bool]]:
        async def done() -> bool:
            return {d["_id"] async for d in incidents.find({"_id": {"$in": list(ids)}}) if d.get("triaged_at")} >= ids

        return done

    # The first alert is triaged before its repeat is published: the two have different keys, so
    # different partitions, and a triage catching up on the session's earlier incidents (a full
    # test run) may reach either first; whichever claims the group first is the first incident.
    await publish(producer, tenant, first)
    await wait_until(triaged({first.incident_id}), timeout=180, interval=0.5, message="the first alert triaged")
    for incident in (again, keyed, gone, *flappy):
        await publish(producer, tenant, incident)
    ids = {i.incident_id for i in (first, again, keyed, gone, *flappy)}
    await wait_until(triaged(ids), timeout=120, interval=0.5, message="all triaged")

    async def nothing_left_flagged() -> bool:
        # A decision's events, once published, leave the outbox with its flag; left flagged, every
        # triaged incident waited for the outbox sweep's full scan (once a minute) to unflag it.
        return await incidents.count_documents({"_id": {"$in": list(ids)}, outbox.FLAG: True}) == 0

    await wait_until(nothing_left_flagged, timeout=8, interval=0.5, message="no triaged incident left flagged")
    for incident in (gone, *flappy):
        await publish(
            producer, tenant, IncidentResolved(incident_id=incident.incident_id, number=incident.number, by="ops")
        )

    try:

        async def settled() -> dict[str, Any] | None:
            state = await _state(mongo, triage_service.database, tenant)
            resolves = sum(len(resolved) for _, resolved in state["flaps"].values())
            holders = {incident_id for incident_id, _ in state["heads"].values()}
            return state if resolves == 3 and gone.incident_id not in holders else None

        before = await wait_until(settled, timeout=60, interval=0.5, message="resolves applied")
        # What there is to rebuild: the first alert and the keyed report hold their keys, the
        # resolved one holds nothing any more, the flapping source has its opens and resolves.
        holders = {incident_id for incident_id, _ in before["heads"].values()}
        assert holders == {first.incident_id, keyed.incident_id}
        assert any(len(opened) == 2 and len(resolved) == 2 for opened, resolved in before["flaps"].values())

        summary = await asyncio.to_thread(_rebuild, triage_service)
        after = await _state(mongo, triage_service.database, tenant)
    except BaseException:
        await mongo.close()
        raise

    assert summary["heads"] >= len(before["heads"])
    assert after == before

    # And triage groups from the rebuilt state: one more alert joins the first.
    late = report("billing-db: too many connections (again)", system="billing-db", channel=Channel.ALERTMANAGER)
    await publish(producer, tenant, late)

    async def grouped() -> dict[str, Any] | None:
        return await incidents.find_one({"_id": late.incident_id, "triaged_at": {"$exists": True}})

    try:
        joined = await wait_until(grouped, timeout=120, interval=0.5, message="a later alert triaged")
    finally:
        await mongo.close()
    assert joined["duplicate_of"] == first.incident_id
