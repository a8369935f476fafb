"""Triage's own database: its view of incidents, grouping heads, flapping history.

Collections:
* ``incidents``: what triage knows of each incident (facts, decision, a person's manual choice),
  with the events it announces in the document's outbox;
* ``grouping_heads``: ``_id`` ``<kind>|<tenant>|<key>`` -> the first open incident with that dedup key,
  fingerprint or system; read by ``_id`` only (the one lookup the embedded store indexes);
* ``flap_history``: per source, when it opened and resolved lately.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from pymongo.asynchronous.collection import AsyncCollection
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import DuplicateKeyError

from aftercare.events import outbox
from aftercare.events.envelope import Envelope
from aftercare.events.outbox import OutboxRelay
from aftercare.events.producer import EventProducer
from aftercare.events.tenant_copy import TenantCopy
from aftercare.events.tenants import TenantUpserted
from aftercare.triage.domain.grouping import OpenIncident

FLAP_KEEP = 20


class TenantDirectory:
    """The tenant copy, with a short-lived in-process cache: tenants change rarely and every
    incident needs its tenant."""

    def __init__(self, database: AsyncDatabase[dict[str, Any]], max_age_s: float = 5.0) -> None:
        self.copy = TenantCopy(database)
        self._cache: dict[str, tuple[float, TenantUpserted | None]] = {}
        self._max_age_s = max_age_s

    async def apply(self, envelope: Envelope[TenantUpserted]) -> None:
        await self.copy.apply(envelope)
        self._cache.pop(envelope.data.tenant_id, None)

    async def get(self, tenant_id: str) -> TenantUpserted | None:
        cached = self._cache.get(tenant_id)
        now = time.monotonic()
        if cached is not None and now - cached[0] < self._max_age_s:
            return cached[1]
        tenant = await self.copy.get(tenant_id)
        self._cache[tenant_id] = (now, tenant)
        return tenant

    async def all(self) -> list[TenantUpserted]:
        tenants: list[TenantUpserted] = []
        async for document in self.copy._tenants.find({}):
            fields = {key: value for key, value in document.items() if key in TenantUpserted.model_fields}
            tenants.append(TenantUpserted.model_validate(fields))
        return tenants


class TriageIncidents:
    def __init__(self, database: AsyncDatabase[dict[str, Any]], relay: OutboxRelay, producer: EventProducer) -> None:
        self.collection: AsyncCollection[dict[str, Any]] = database["incidents"]
        self.relay = relay
        self.producer = producer

    async def ensure_indexes(self) -> None:
        await OutboxRelay.ensure_indexes(self.collection)

    async def get(self, incident_id: str) -> dict[str, Any] | None:
        return await self.collection.find_one({"_id": incident_id}, {outbox.FIELD: 0})

    async def save(self, incident_id: str, update: dict[str, Any], *events: Envelope[Any]) -> None:
        """One write: the incident's new state and the events that announce it; then publish
        them and take exactly those entries out (no read back: we know what we wrote). What a
        crash leaves behind, the outbox sweep publishes."""
        if not events:
            await self.collection.update_one({"_id": incident_id}, update, upsert=True)
            return
        entries = [outbox.stored(envelope) for envelope in events]
        merged = {key: dict(value) for key, value in update.items()}
        merged.setdefault("$push", {})[outbox.FIELD] = {"$each": entries}
        merged.setdefault("$set", {})[outbox.FLAG] = True
        await self.collection.update_one({"_id": incident_id}, merged, upsert=True)
        await self.producer.publish_many(list(events))
        await self.collection.update_one({"_id": incident_id}, {"$pullAll": {outbox.FIELD: entries}})

    async def recent(self, limit: int) -> list[dict[str, Any]]:
        cursor = self.collection.find({"facts": {"$exists": True}}, {outbox.FIELD: 0}).sort("reported_at", -1)
        return [document async for document in cursor.limit(limit)]


def _head_document(head: OpenIncident) -> dict[str, Any]:
    return {
        "incident_id": head.incident_id,
        "number": head.number,
        "reported_at": head.reported_at,
        "system": head.system,
        "category": head.category,
        "dedup_key": head.dedup_key,
    }


class GroupingHeads:
    def __init__(self, database: AsyncDatabase[dict[str, Any]]) -> None:
        self.collection: AsyncCollection[dict[str, Any]] = database["grouping_heads"]

    async def find(self, keys: Sequence[str]) -> list[OpenIncident]:
        heads: list[OpenIncident] = []
        for key in keys:
            document = await self.collection.find_one({"_id": key})
            if document is not None:
                heads.append(
                    OpenIncident(
                        incident_id=document["incident_id"],
                        number=document["number"],
                        reported_at=document["reported_at"],
                        system=document.get("system"),
                        category=document["category"],
                        dedup_key=document.get("dedup_key"),
                    )
                )
        return heads

    async def claim(self, keys: Sequence[str], head: OpenIncident, *, replace_older_than: datetime) -> None:
        """Make ``head`` the first open incident for each key, unless one recent enough holds it."""
        document = _head_document(head)
        for key in keys:
            try:
                await self.collection.insert_one({"_id": key, **document})
            except DuplicateKeyError:
                # Held by an incident outside the window (or one since resolved): take it over.
                await self.collection.update_one(
                    {"_id": key, "reported_at": {"$lt": replace_older_than}}, {"$set": document}
                )

    async def release(self, keys: Sequence[str], incident_id: str) -> None:
        for key in keys:
            await self.collection.delete_one({"_id": key, "incident_id": incident_id})


class FlapHistory:
    def __init__(self, database: AsyncDatabase[dict[str, Any]]) -> None:
        self.collection: AsyncCollection[dict[str, Any]] = database["flap_history"]

    async def get(self, key: str) -> tuple[list[datetime], list[datetime]]:
        document = await self.collection.find_one({"_id": key}) or {}
        return list(document.get("opened", [])), list(document.get("resolved", []))

    async def record(
        self, key: str, what: str, moment: datetime, known: tuple[list[datetime], list[datetime]] | None = None
    ) -> None:
        """Add an open or resolve moment; ``known`` is the history just read, to save a read."""
        opened, resolved = known if known is not None else await self.get(key)
        moments = opened if what == "opened" else resolved
        if moment in moments:
            return  # a redelivered event
        moments = sorted([*moments, moment])[-FLAP_KEEP:]
        await self.collection.update_one({"_id": key}, {"$set": {what: moments}}, upsert=True)
