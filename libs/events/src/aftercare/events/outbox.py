"""Outbox: a document's state change and the events announcing it, written as one.

The store has no transactions, so "write the incident, then publish" could drift apart (a crash
in between loses the event; a failed publish leaves a change nobody hears of). Instead the
pending events ride in the changed document itself, in the same single-document write:

    await incidents.update_one({"_id": id}, outbox.add_to_update({"$set": {...}}, envelope))
    await relay.flush(incidents, id)            # publish, then pull them out

``flush`` publishes a document's pending events in order and removes each once Kafka has it.
``sweep`` (run at start-up and every few seconds) publishes whatever a crash left pending. An
event may be published twice (crash after publish, before removal); consumers deduplicate by
event id, so that is harmless.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Sequence
from contextlib import AbstractAsyncContextManager
from typing import Any

import structlog
from pymongo.asynchronous.collection import AsyncCollection

from aftercare.events.catalog import parse_envelope
from aftercare.events.envelope import Envelope
from aftercare.events.producer import EventProducer

log = structlog.stdlib.get_logger("aftercare.events.outbox")

FIELD = "outbox"
FLAG = "outbox_pending"  # indexed, so the sweep finds pending documents without a scan


def add_to_update(update: dict[str, Any], *envelopes: Envelope[Any]) -> dict[str, Any]:
    """Return ``update`` extended so that it also stores ``envelopes`` in the outbox."""
    if not envelopes:
        return update
    merged = {key: dict(value) for key, value in update.items()}
    merged.setdefault("$push", {})[FIELD] = {"$each": [stored(envelope) for envelope in envelopes]}
    merged.setdefault("$set", {})[FLAG] = True
    return merged


def stored(envelope: Envelope[Any]) -> dict[str, Any]:
    # Kept as the exact JSON that will go on Kafka, so what is published is what was decided;
    # ``at`` lets the sweep leave fresh entries to the request that is flushing them.
    return {"id": envelope.id, "topic": envelope.data.TOPIC, "json": envelope.model_dump_json(), "at": time.time()}


class OutboxRelay:
    """Publishes the events waiting in documents' outboxes."""

    def __init__(
        self, producer: EventProducer, turn: Callable[[Any], AbstractAsyncContextManager[Any]] | None = None
    ) -> None:
        """``turn(document_id)``, when given, is held while the sweep changes a document: the
        service's own writers take the same turn, because the embedded store does not make
        concurrent updates of one document atomic (a $push racing the sweep's $pullAll could
        be lost)."""
        self._producer = producer
        self._turn = turn

    @staticmethod
    async def ensure_indexes(collection: AsyncCollection[dict[str, Any]]) -> None:
        await collection.create_index(FLAG)

    async def flush(self, collection: AsyncCollection[dict[str, Any]], document_id: Any) -> list[Envelope[Any]]:
        """Publish the pending events of one document, in order; returns what was published."""
        document = await collection.find_one({"_id": document_id}, {FIELD: 1})
        if not document or not document.get(FIELD):
            return []
        return await self._publish(collection, document_id, document[FIELD])

    async def _publish(
        self, collection: AsyncCollection[dict[str, Any]], document_id: Any, entries: Sequence[dict[str, Any]]
    ) -> list[Envelope[Any]]:
        envelopes = [parse_envelope(entry["json"]) for entry in entries]
        # Keep the exact stored ids/trace context: parse_envelope returns them unchanged.
        published = await self._producer.publish_many(envelopes)
        # $pullAll of the exact entries read: FerretDB 1.24 ignores a $pull whose condition looks
        # inside the entries ({"id": {"$in": ...}}), which left every event pending forever.
        # Filtered by _id alone, the one filter the embedded store answers from an index. The flag
        # is cleared by the sweep, which can check emptiness and clear in one conditional write.
        await collection.update_one({"_id": document_id}, {"$pullAll": {FIELD: list(entries)}})
        return published

    async def sweep(
        self, collection: AsyncCollection[dict[str, Any]], limit: int = 500, min_age_s: float = 10.0
    ) -> int:
        """Publish what was left pending in ``collection``; returns the number of events.

        Entries younger than ``min_age_s`` are left alone: the request that wrote them is
        flushing them right now, and publishing them here too would only duplicate them.
        """
        count = 0
        settled = time.time() - min_age_s
        candidates = [document["_id"] async for document in collection.find({FLAG: True}, {"_id": 1}).limit(limit)]
        for document_id in candidates:
            async with self._turn(document_id) if self._turn else contextlib.nullcontext():
                # Read again inside the turn: the request that wrote it may have flushed it since.
                document = await collection.find_one({"_id": document_id}, {FIELD: 1})
                entries = (document or {}).get(FIELD) or []
                if document is not None and not entries:
                    # Clear the flag only if nothing new arrived meanwhile.
                    await collection.update_one({"_id": document_id, FIELD: {"$size": 0}}, {"$set": {FLAG: False}})
                elif entries and min(entry.get("at", 0.0) for entry in entries) <= settled:
                    count += len(await self._publish(collection, document_id, entries))
        return count

    async def sweep_forever(
        self, collections: Sequence[AsyncCollection[dict[str, Any]]], interval_s: float = 5.0
    ) -> None:
        """Background loop: publish what requests or crashes left pending."""
        while True:
            for collection in collections:
                try:
                    published = await self.sweep(collection)
                    if published:
                        log.info("outbox sweep published pending events", collection=collection.name, events=published)
                except Exception as error:  # keep sweeping; Kafka or the store may be back soon
                    log.warning("outbox sweep failed; will retry", collection=collection.name, error=str(error))
            await asyncio.sleep(interval_s)
