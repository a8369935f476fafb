"""The dashboard's live path and the read model's writes: how many store round trips an event
costs, that browsers get a row before any write, each event once, rendered once for all."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

from aftercare.events.envelope import Envelope, envelope_for
from aftercare.events.incidents import Channel, IncidentReported, IncidentResolved
from aftercare.events.tenants import Priority
from aftercare.events.testing import MemoryCollection, MemoryDatabase
from aftercare.events.triage import IncidentTriaged
from aftercare.notifier.adapters.live_feed import LiveFeed, LiveRow, LiveRows, LiveSubscription
from aftercare.notifier.adapters.read_model import IncidentReadModel

T0 = datetime(2026, 3, 2, 12, 0, tzinfo=UTC)


class CountedCollection(MemoryCollection):
    """The platform's in-memory collection, counting the store operations made on it."""

    def __init__(self) -> None:
        super().__init__("incidents", MemoryDatabase())
        self.calls: list[str] = []

    async def find_one(self, query: Any = None, projection: Any = None) -> dict[str, Any] | None:
        self.calls.append("find_one")
        return await super().find_one(query, projection)

    async def insert_one(self, document: dict[str, Any]) -> Any:
        self.calls.append("insert_one")
        return await super().insert_one(document)

    async def replace_one(self, query: Any, document: dict[str, Any], upsert: bool = False) -> Any:
        self.calls.append("replace_one")
        return await super().replace_one(query, document, upsert)


def reported(incident_id: str = "i1") -> Envelope[Any]:
    event = IncidentReported(
        incident_id=incident_id, number="INC-7", title="disk full", channel=Channel.API, reported_at=T0
    )
    envelope = envelope_for(event, source="intake", tenant_id="acme", incident_id=incident_id)
    return envelope.model_copy(update={"time": T0})


def triaged(incident_id: str = "i1") -> Envelope[Any]:
    event = IncidentTriaged(incident_id=incident_id, number="INC-7", priority=Priority.P2, category="disk")
    envelope = envelope_for(event, source="triage", tenant_id="acme", incident_id=incident_id)
    return envelope.model_copy(update={"time": T0 + timedelta(seconds=1)})


def resolved(incident_id: str = "i1") -> Envelope[Any]:
    event = IncidentResolved(incident_id=incident_id, number="INC-7", by="remediation", resolution="cleaned up")
    envelope = envelope_for(event, source="intake", tenant_id="acme", incident_id=incident_id)
    return envelope.model_copy(update={"time": T0 + timedelta(seconds=2)})


def frames(subscription: LiveSubscription) -> list[LiveRow]:
    rows = subscription.take()
    assert rows is not None, "rows were lost"
    return rows


async def test_an_incidents_events_cost_one_store_round_trip_each() -> None:
    incidents = CountedCollection()
    read_model = IncidentReadModel(incidents)  # type: ignore[arg-type]
    await read_model.apply(reported())
    assert incidents.calls == ["insert_one"]  # a report opens its incident: no read first
    triage = triaged()
    view = await read_model.apply(triage)
    assert incidents.calls == ["insert_one", "replace_one"]  # starts from what it wrote
    assert view is not None and view["priority"] == "P2" and view["title"] == "disk full"
    assert await read_model.apply(triage) == view  # a redelivery changes nothing
    assert incidents.calls == ["insert_one", "replace_one"]


async def test_a_write_made_elsewhere_is_read_and_kept() -> None:
    incidents = CountedCollection()
    read_model = IncidentReadModel(incidents)  # type: ignore[arg-type]
    await read_model.apply(reported())
    # Another instance adds the triage entry: the copy this process remembers is stale now.
    elsewhere = IncidentReadModel(incidents)  # type: ignore[arg-type]
    await elsewhere.apply(triaged())
    incidents.calls.clear()
    view = await read_model.apply(resolved())
    assert incidents.calls == ["replace_one", "find_one", "replace_one"]  # refused, read, written
    stored = await incidents.find_one({"_id": "i1"})
    assert stored is not None
    assert [entry["type"] for entry in stored["entries"]] == [
        "incident.reported",
        "incident.triaged",
        "incident.resolved",
    ]
    assert view is not None and view["priority"] == "P2" and view["status"] == "resolved"


async def test_browsers_get_the_row_before_any_write_once_per_event_rendered_once() -> None:
    incidents = CountedCollection()
    read_model = IncidentReadModel(incidents)  # type: ignore[arg-type]
    feed = LiveFeed()
    read_model.listeners.append(feed.publish)
    rows = LiveRows(read_model, feed)
    first, second = feed.subscribe(), feed.subscribe()

    report = reported()
    await rows.push(report)
    assert incidents.calls == ["find_one"]  # the stored timeline, read once; nothing written
    pushed = frames(first)
    assert len(pushed) == 1 and frames(second)[0].frame is pushed[0].frame  # the same bytes for all
    row = json.loads(pushed[0].frame.decode().split("data: ", 1)[1])
    assert row["incident_id"] == "i1" and row["title"] == "disk full" and pushed[0].tenant_id == "acme"

    await read_model.apply(report)  # the group consumer's write of the same event
    assert frames(first) == []  # pushed once

    await rows.push(triaged())
    assert incidents.calls == ["find_one", "insert_one"]  # no read for an incident the tail knows
    row = json.loads(frames(first)[0].frame.decode().split("data: ", 1)[1])
    assert row["priority"] == "P2" and row["title"] == "disk full"  # never goes backwards
