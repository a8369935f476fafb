"""Triage's own database: its view of incidents, grouping heads, flapping history.

Collections:
* ``incidents``: what triage knows of each incident (facts, decision, a person's manual choice),
  with the events it announces in the document's outbox;
* ``grouping_heads``: ``_id`` ``<kind>|<tenant>|<key>`` -> the first open incident with that dedup key,
  fingerprint or system; read by ``_id`` only (the one lookup the embedded store indexes);
* ``flap_history``: per source, when it opened and resolved lately.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from datetime import datetime
from typing import Any

import structlog
from opentelemetry.trace import SpanKind
from pymongo import DeleteOne, InsertOne, UpdateOne
from pymongo.asynchronous.collection import AsyncCollection
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import DuplicateKeyError

from aftercare.events import outbox
from aftercare.events.envelope import Envelope
from aftercare.events.outbox import OutboxRelay
from aftercare.events.producer import EventProducer
from aftercare.events.tenant_copy import TenantCopy
from aftercare.events.tenants import TenantUpserted
from aftercare.events.tracing import tracer
from aftercare.triage.adapters.batching import BatchedCollection
from aftercare.triage.domain.grouping import OpenIncident

log = structlog.stdlib.get_logger("aftercare.triage")

FLAP_KEEP = 20


class TenantDirectory:
    """The tenant copy, with a short-lived in-process cache: tenants change rarely and every
    incident needs its tenant."""

    def __init__(self, database: AsyncDatabase[dict[str, Any]], max_age_s: float = 5.0) -> None:
        self.copy = TenantCopy(database)
        self._cache: dict[str, tuple[float, TenantUpserted | None]] = {}
        self._max_age_s = max_age_s
        # One read per tenant at a time: when the cached copy ages, the incidents triaged side by
        # side wait for that one read instead of each reading the same tenant.
        self._reading: dict[str, asyncio.Future[TenantUpserted | None]] = {}

    async def apply(self, envelope: Envelope[TenantUpserted]) -> None:
        await self.copy.apply(envelope)
        self._cache.pop(envelope.data.tenant_id, None)

    async def get(self, tenant_id: str, *, fresh: bool = False) -> TenantUpserted | None:
        cached = self._cache.get(tenant_id)
        now = time.monotonic()
        if not fresh and cached is not None and now - cached[0] < self._max_age_s:
            return cached[1]
        if not fresh and (reading := self._reading.get(tenant_id)) is not None:
            return await asyncio.shield(reading)
        read = asyncio.ensure_future(self.copy.get(tenant_id))
        if not fresh:
            self._reading[tenant_id] = read
        try:
            tenant = await asyncio.shield(read)
        finally:
            if self._reading.get(tenant_id) is read:
                del self._reading[tenant_id]
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
        # Incidents are triaged side by side: their reads and writes share round trips.
        self.batched = BatchedCollection(self.collection, projection={outbox.FIELD: 0})
        self._clearing: set[asyncio.Future[None]] = set()
        self.relay = relay
        self.producer = producer

    async def ensure_indexes(self) -> None:
        await OutboxRelay.ensure_indexes(self.collection)

    async def get(self, incident_id: str) -> dict[str, Any] | None:
        return await self.batched.find_one(incident_id)

    async def save(self, incident_id: str, update: dict[str, Any], *events: Envelope[Any]) -> None:
        """One write: the incident's new state and the events that announce it; then publish
        them and take exactly those entries out (no read back: we know what we wrote). What a
        crash leaves behind, the outbox sweep publishes."""
        if not events:
            await self.batched.write(UpdateOne({"_id": incident_id}, update, upsert=True))
            return
        entries = [outbox.stored(envelope) for envelope in events]
        merged = {key: dict(value) for key, value in update.items()}
        merged.setdefault("$push", {})[outbox.FIELD] = {"$each": entries}
        merged.setdefault("$set", {})[outbox.FLAG] = True
        await self.batched.write(UpdateOne({"_id": incident_id}, merged, upsert=True))
        # The JSON just stored is what goes on Kafka (as the outbox sweep sends it): each event is
        # serialised once. One PRODUCER span per call, as publish_many makes.
        name = f"publish {events[0].type}" if len(events) == 1 else f"publish {len(events)} events"
        with tracer().start_as_current_span(name, kind=SpanKind.PRODUCER):
            await self.producer.publish_serialized(
                [
                    (envelope.data.TOPIC, entry["json"].encode(), envelope)
                    for envelope, entry in zip(events, entries, strict=True)
                ]
            )
        # Taking the published entries out waits for nobody: if it is lost, the outbox sweep
        # publishes them again under the same ids, which consumers drop as repeats.
        clearing = asyncio.ensure_future(self._take_out(incident_id, entries))
        self._clearing.add(clearing)
        clearing.add_done_callback(self._cleared)

    async def _take_out(self, incident_id: str, entries: list[dict[str, Any]]) -> None:
        # The usual case, one rewrite of the document: the outbox holds just these entries, so it
        # is emptied and unflagged at once. Otherwise (another event arrived meanwhile) only these
        # entries are pulled and the flag stays for the sweep. Both go in one batch, in order; if
        # a store ran the second first, the first would match nothing and the sweep unflags it.
        # Left set, every triaged incident stayed flagged, and each full outbox sweep read and
        # cleared 500 of them (a read and a write each) while triage flagged more.
        await asyncio.gather(
            self.batched.write(
                UpdateOne({"_id": incident_id, outbox.FIELD: entries}, {"$set": {outbox.FIELD: [], outbox.FLAG: False}})
            ),
            self.batched.write(UpdateOne({"_id": incident_id}, {"$pullAll": {outbox.FIELD: entries}})),
        )

    def _cleared(self, clearing: asyncio.Future[None]) -> None:
        self._clearing.discard(clearing)
        if not clearing.cancelled() and (error := clearing.exception()) is not None:
            log.warning("outbox entries not cleared; the sweep publishes them again", error=str(error))

    async def take_parked(self, incident_id: str) -> bool:
        """True for the one caller that takes a report parked for its tenant (one atomic write)."""
        taken = await self.collection.update_one(
            {"_id": incident_id, "awaiting_tenant": True}, {"$set": {"awaiting_tenant": False}}
        )
        return taken.modified_count == 1

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


def _open_incident(document: dict[str, Any]) -> OpenIncident:
    return OpenIncident(
        incident_id=document["incident_id"],
        number=document["number"],
        reported_at=document["reported_at"],
        system=document.get("system"),
        category=document["category"],
        dedup_key=document.get("dedup_key"),
    )


class GroupingHeads:
    """The first open incident per group key, one holder at a time.

    Taking a key is a single atomic write (an insert on the unique ``_id``, or a takeover
    conditional on the holder read), so incidents triaged side by side (different Kafka keys,
    or two triage instances) cannot both become the first: exactly one insert wins, the others
    read the winner and group under it.
    """

    CLAIM_ATTEMPTS = 10

    def __init__(self, database: AsyncDatabase[dict[str, Any]]) -> None:
        self.collection: AsyncCollection[dict[str, Any]] = database["grouping_heads"]
        self.batched = BatchedCollection(self.collection)

    async def holder(self, key: str) -> OpenIncident | None:
        document = await self.batched.find_one(key)
        return _open_incident(document) if document is not None else None

    async def find(self, keys: Sequence[str]) -> list[OpenIncident]:
        heads = [await self.holder(key) for key in keys]
        return [head for head in heads if head is not None]

    async def claim(self, key: str, head: OpenIncident, *, take_over_before: datetime | None) -> OpenIncident:
        """Make ``head`` the holder of ``key`` unless another incident holds it; return the holder
        (``head`` itself when this call or an earlier delivery of the same incident took it).

        A holder reported before ``take_over_before`` (outside the grouping window) is replaced;
        ``None`` never replaces (a dedup key is held until its incident resolves)."""
        document = _head_document(head)
        holder: OpenIncident | None = None
        for _ in range(self.CLAIM_ATTEMPTS):
            try:
                await self.batched.write(InsertOne({"_id": key, **document}))
                return head
            except DuplicateKeyError:
                pass
            holder = await self.holder(key)
            if holder is None:
                continue  # released between our insert and our read: try the insert again
            if holder.incident_id == head.incident_id:
                return head
            if take_over_before is None or holder.reported_at >= take_over_before:
                return holder
            # Conditional on the holder we read: of several takeovers at once, one matches.
            taken = await self.collection.update_one(
                {"_id": key, "incident_id": holder.incident_id}, {"$set": document}
            )
            if taken.modified_count == 1:
                return head
        if holder is None:
            raise RuntimeError(f"group key {key!r} kept changing hands; the incident is retried")
        return holder

    async def release(self, keys: Sequence[str], incident_id: str) -> None:
        for key in keys:
            await self.batched.write(DeleteOne({"_id": key, "incident_id": incident_id}))

    async def drop(self) -> None:
        await self.collection.drop()


class FlapHistory:
    def __init__(self, database: AsyncDatabase[dict[str, Any]]) -> None:
        self.collection: AsyncCollection[dict[str, Any]] = database["flap_history"]
        self.batched = BatchedCollection(self.collection)

    async def get(self, key: str) -> tuple[list[datetime], list[datetime]]:
        document = await self.batched.find_one(key) or {}
        return list(document.get("opened", [])), list(document.get("resolved", []))

    async def record(
        self, key: str, what: str, moment: datetime, known: tuple[list[datetime], list[datetime]] | None = None
    ) -> None:
        """Add an open or resolve moment; ``known`` is the history just read, to save a read.

        ``$addToSet`` is one atomic write, so opens of one source triaged side by side all count
        (a redelivered event adds nothing); trimming the oldest is a second, harmless write."""
        opened, resolved = known if known is not None else await self.get(key)
        moments = opened if what == "opened" else resolved
        if moment in moments:
            return  # a redelivered event
        await self.batched.write(UpdateOne({"_id": key}, {"$addToSet": {what: moment}}, upsert=True))
        surplus = sorted([*moments, moment])[: max(0, len(moments) + 1 - FLAP_KEEP)]
        if surplus:
            await self.batched.write(UpdateOne({"_id": key}, {"$pullAll": {what: surplus}}))

    async def drop(self) -> None:
        await self.collection.drop()
