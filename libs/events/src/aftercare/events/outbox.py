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

An entry that can never be published (over Kafka's size limit, no longer a valid event) must
not hold up the others: the sweep moves it to the ``outbox_dead_letters`` collection of the same
database with the reason, counts it in ``aftercare_outbox_dead_lettered_total`` (alert on any
increase) and goes on. When Kafka or the store is down, the pass stops and the next one retries.
``stored`` refuses an event over the size limit before it is written (``EventTooLarge``).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Sequence
from contextlib import AbstractAsyncContextManager
from typing import Any, ClassVar

import structlog
from aiokafka.errors import KafkaError, KafkaTimeoutError
from pymongo import ReturnDocument
from pymongo.asynchronous.collection import AsyncCollection
from pymongo.errors import PyMongoError

from aftercare.events.catalog import parse_envelope
from aftercare.events.envelope import Envelope
from aftercare.events.metrics import OUTBOX_DEAD_LETTERED
from aftercare.events.producer import MAX_MESSAGE_BYTES, EventProducer, PublishFailed, check_size

log = structlog.stdlib.get_logger("aftercare.events.outbox")

FIELD = "outbox"
FLAG = "outbox_pending"  # indexed, so the sweep finds pending documents without a scan
DEAD_LETTERS = "outbox_dead_letters"
LEDGER = "outbox_ledger"  # batches of a group commit not finished yet (see group_commit.py)
# The group-commit batch that wrote a document: its ledger entries are this document's events only
# if the document carries that batch's id (another batch may have written the same _id).
BATCH = "outbox_batch"


def add_to_update(update: dict[str, Any], *envelopes: Envelope[Any]) -> dict[str, Any]:
    """Return ``update`` extended so that it also stores ``envelopes`` in the outbox."""
    return add_entries_to_update(update, [stored(envelope) for envelope in envelopes])


def add_entries_to_update(update: dict[str, Any], entries: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """``add_to_update`` for entries already made with ``stored``: the caller keeps them, to
    publish exactly these afterwards (``OutboxRelay.flush_entries``)."""
    if not entries:
        return update
    merged = {key: dict(value) for key, value in update.items()}
    merged.setdefault("$push", {})[FIELD] = {"$each": list(entries)}
    merged.setdefault("$set", {})[FLAG] = True
    return merged


def stored(envelope: Envelope[Any], max_bytes: int = MAX_MESSAGE_BYTES) -> dict[str, Any]:
    """The outbox entry for ``envelope``; raises ``EventTooLarge`` if Kafka could never take it.

    Called while building the write, so an event too large to publish is refused before the
    store write, not stored as pending and retried forever.
    """
    # Kept as the exact JSON that will go on Kafka, so what is published is what was decided;
    # ``at`` lets the sweep leave fresh entries to the request that is flushing them.
    json = envelope.model_dump_json()
    check_size(envelope, json.encode(), max_bytes)
    return {"id": envelope.id, "topic": envelope.data.TOPIC, "json": json, "at": time.time()}


def _always(document_id: Any) -> Callable[[dict[str, Any]], Any]:
    return lambda _entry: document_id


def is_outage(error: BaseException) -> bool:
    """Whether ``error`` means Kafka or the store is unavailable (retry later), not a bad entry."""
    if isinstance(error, (PublishFailed, PyMongoError, OSError, TimeoutError)):
        return True
    return isinstance(error, KafkaError) and (bool(error.retriable) or isinstance(error, KafkaTimeoutError))


class OutboxRelay:
    """Publishes the events waiting in documents' outboxes."""

    # Documents whose flush failed in this process, by collection (shared by every relay of the
    # process: the sweep's relay must hear of another relay's failures). What the frequent sweep
    # passes look at; a full scan for flagged documents runs at start-up and rarely after.
    _remembered: ClassVar[dict[str, set[Any]]] = {}

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
        try:
            document = await collection.find_one({"_id": document_id}, {FIELD: 1})
            if not document or not document.get(FIELD):
                return []
            return await self._publish(collection, document_id, document[FIELD])
        except Exception:
            # Left pending (Kafka or the store is down): the next sweep pass looks at it first,
            # without scanning the collection for flagged documents.
            self._remembered.setdefault(collection.full_name, set()).add(document_id)
            raise

    async def flush_entries(
        self, collection: AsyncCollection[dict[str, Any]], document_id: Any, entries: Sequence[dict[str, Any]]
    ) -> list[Envelope[Any]]:
        """Publish ``entries`` (exactly as the caller stored them in the document's outbox, in
        order) and pull them out: one round trip fewer than ``flush``, which reads the outbox
        first. Entries left there by others (a crashed instance, a failed flush) are not looked
        at, so a caller that may find such entries, and whose events must keep their order,
        uses ``flush``."""
        if not entries:
            return []
        try:
            return await self._publish(collection, document_id, entries)
        except Exception:
            # As flush: left pending, the next sweep pass looks at this document first.
            self._remembered.setdefault(collection.full_name, set()).add(document_id)
            raise

    async def _send(self, entries: Sequence[dict[str, Any]]) -> list[Envelope[Any]]:
        records: list[tuple[str, bytes, Envelope[Any]]] = []
        for entry in entries:
            # Keep the exact stored ids/trace context: parse_envelope returns them unchanged, and
            # the stored JSON is sent as it is (serialised once, when it was written).
            envelope = parse_envelope(entry["json"])
            records.append((envelope.data.TOPIC, entry["json"].encode(), envelope))
        await self._producer.publish_serialized(records)
        return [envelope for _, _, envelope in records]

    async def _publish(
        self, collection: AsyncCollection[dict[str, Any]], document_id: Any, entries: Sequence[dict[str, Any]]
    ) -> list[Envelope[Any]]:
        published = await self._send(entries)
        await self._remove(collection, document_id, entries)
        return published

    @staticmethod
    async def _remove(
        collection: AsyncCollection[dict[str, Any]], document_id: Any, entries: Sequence[dict[str, Any]]
    ) -> None:
        # $pullAll of the exact entries read: FerretDB 1.24 ignores a $pull whose condition looks
        # inside the entries ({"id": {"$in": ...}}), which left every event pending forever.
        # Filtered by _id alone, the one filter the embedded store answers from an index. The
        # flag is cleared in the same write, so a flushed document is not left for the sweep's
        # scan; flagged again if another writer added an event meanwhile.
        after = await collection.find_one_and_update(
            {"_id": document_id},
            {"$pullAll": {FIELD: list(entries)}, "$set": {FLAG: False}},
            # No projection: the embedded store does not implement one on findAndModify.
            return_document=ReturnDocument.AFTER,
        )
        if after is not None and after.get(FIELD):
            await collection.update_one({"_id": document_id}, {"$set": {FLAG: True}})

    async def _send_isolating(
        self,
        collection: AsyncCollection[dict[str, Any]],
        entries: Sequence[dict[str, Any]],
        document_of: Callable[[dict[str, Any]], Any],
    ) -> int:
        """Publish ``entries`` in order; one that can never be published is dead-lettered and the
        others still go. Returns how many were published. Outages (Kafka or the store
        unavailable) propagate: the whole pass waits for the next."""
        try:
            return len(await self._send(entries))
        except Exception as error:
            if is_outage(error):
                raise
        # Something here cannot be published: find which entry, in order (a later event of a
        # document must not overtake an earlier one that can still go).
        published = 0
        for entry in entries:
            try:
                published += len(await self._send([entry]))
            except Exception as error:
                if is_outage(error):
                    raise
                await self._dead_letter(collection, document_of(entry), entry, error)
        return published

    async def _dead_letter(
        self, collection: AsyncCollection[dict[str, Any]], document_id: Any, entry: dict[str, Any], error: Exception
    ) -> None:
        reason = f"{type(error).__name__}: {error}"
        dead = collection.database[DEAD_LETTERS]
        # Kept whole (the store takes documents far larger than Kafka's messages), so the event can
        # be fixed and published again by hand; upserted by event id so a crash here repeats harmlessly.
        await dead.update_one(
            {"_id": entry.get("id") or str(document_id)},
            {
                "$set": {
                    "collection": collection.name,
                    "document_id": document_id,
                    "topic": entry.get("topic"),
                    "entry": entry,
                    "reason": reason,
                    "dead_lettered_at": time.time(),
                }
            },
            upsert=True,
        )
        OUTBOX_DEAD_LETTERED.labels(collection=collection.name, reason=type(error).__name__).inc()
        log.error(
            "outbox entry can never be published; moved to the dead letters",
            collection=collection.name,
            document_id=str(document_id),
            event_id=entry.get("id"),
            reason=reason,
            dead_letters=DEAD_LETTERS,
        )

    async def sweep(
        self,
        collection: AsyncCollection[dict[str, Any]],
        limit: int = 500,
        min_age_s: float = 10.0,
        *,
        full: bool = True,
    ) -> int:
        """Publish what was left pending in ``collection``; returns the number of events.

        Entries younger than ``min_age_s`` are left alone: the request that wrote them is
        flushing them right now, and publishing them here too would only duplicate them. An
        entry that can never be published is dead-lettered and the others still go out; an
        outage of Kafka or the store ends the pass (raised) for the next one to retry. Batches
        a group commit left unfinished (``outbox_ledger``) are swept first.

        ``full=False`` looks only at the documents whose flush failed in this process, not for
        flagged documents: on the embedded store that query reads the whole collection, so it
        runs at start-up and every few minutes (``sweep_forever``), not every pass.
        """
        count = await self.sweep_ledger(collection, min_age_s=min_age_s)
        settled = time.time() - min_age_s
        remembered = self._remembered.setdefault(collection.full_name, set())
        if full:
            candidates = [d["_id"] async for d in collection.find({FLAG: True}, {"_id": 1}).limit(limit)]
            candidates += [document_id for document_id in remembered if document_id not in candidates]
        else:
            candidates = list(remembered)
        for document_id in candidates:
            remembered.discard(document_id)
            try:
                count += await self._sweep_document(collection, document_id, settled)
            except Exception:
                remembered.add(document_id)  # still pending: the next pass looks at it again
                raise
        return count

    async def _sweep_document(
        self, collection: AsyncCollection[dict[str, Any]], document_id: Any, settled: float
    ) -> int:
        async with self._turn(document_id) if self._turn else contextlib.nullcontext():
            # Read again inside the turn: the request that wrote it may have flushed it since.
            document = await collection.find_one({"_id": document_id}, {FIELD: 1})
            entries = (document or {}).get(FIELD) or []
            if document is not None and not entries:
                # Clear the flag only if nothing new arrived meanwhile.
                await collection.update_one({"_id": document_id, FIELD: {"$size": 0}}, {"$set": {FLAG: False}})
            elif entries and min(entry.get("at", 0.0) for entry in entries) <= settled:
                published = await self._send_isolating(collection, entries, _always(document_id))
                await self._remove(collection, document_id, entries)
                return published
            elif entries:
                # Too fresh: its request is flushing it right now; look again next pass.
                self._remembered.setdefault(collection.full_name, set()).add(document_id)
        return 0

    async def flush_ledger(self, collection: AsyncCollection[dict[str, Any]], document_id: Any) -> int:
        """Publish the events of ``document_id`` that a group commit left in the ledger (its request
        was answered 503 or crashed); returns how many. For a retry that finds the document
        written: it may answer "accepted" only once these are on Kafka."""
        ledger = collection.database[LEDGER]
        published = 0
        # The ledger holds only unfinished batches: reading it whole costs next to nothing.
        async for batch in ledger.find({"collection": collection.name}):
            entries: list[dict[str, Any]] = batch.get("entries") or []
            mine = [entry for entry in entries if entry.get("document_id") == document_id]
            if not mine:
                continue
            published += len(await self._send(mine))
            rest = [entry for entry in entries if entry.get("document_id") != document_id]
            if rest:
                await ledger.update_one({"_id": batch["_id"]}, {"$set": {"entries": rest}})
            else:
                await ledger.delete_one({"_id": batch["_id"]})
        return published

    async def sweep_ledger(
        self,
        collection: AsyncCollection[dict[str, Any]],
        *,
        min_age_s: float = 10.0,
        abandon_after_s: float = 300.0,
    ) -> int:
        """Finish the group-commit batches of ``collection`` a crash or an outage left in the
        ledger: publish the events of the documents that were written, in order; drop those of
        documents never written (nobody was told they were accepted) once the batch is older than
        ``abandon_after_s`` (younger, a stalled request may still write them)."""
        count = 0
        now = time.time()
        # The ledger holds only unfinished batches: a handful of documents, whatever the store holds.
        batches = [b async for b in collection.database[LEDGER].find({"collection": collection.name})]
        for batch in batches:
            if batch.get("at", 0.0) > now - min_age_s:
                continue  # its request is still committing it
            entries: list[dict[str, Any]] = batch.get("entries") or []
            document_ids = list(dict.fromkeys(entry["document_id"] for entry in entries))
            written: set[Any] = set()
            taken: set[Any] = set()  # written, but by another batch: these events never go out
            for document_id in document_ids:
                document = await collection.find_one({"_id": document_id}, {"_id": 1, BATCH: 1})
                if document is None:
                    continue
                # A document without the field was written before batches stamped it (kept as written).
                if document.get(BATCH, batch["_id"]) == batch["_id"]:
                    written.add(document_id)
                else:
                    taken.add(document_id)
            ready = [entry for entry in entries if entry["document_id"] in written]
            if ready:
                count += await self._send_isolating(collection, ready, lambda entry: entry["document_id"])
            unwritten = [entry for entry in entries if entry["document_id"] not in written | taken]
            if unwritten and batch.get("at", 0.0) > now - abandon_after_s:
                await collection.database[LEDGER].update_one({"_id": batch["_id"]}, {"$set": {"entries": unwritten}})
            else:
                await collection.database[LEDGER].delete_one({"_id": batch["_id"]})
        return count

    async def sweep_forever(
        self,
        collections: Sequence[AsyncCollection[dict[str, Any]]],
        interval_s: float = 5.0,
        full_scan_every_s: float = 60.0,
    ) -> None:
        """Background loop: publish what requests or crashes left pending.

        Every ``interval_s``: the group-commit ledger and the documents whose flush failed here
        (both small, whatever the store holds). At start-up and every ``full_scan_every_s``: also
        every flagged document: what a crash of any instance left in documents' outboxes, and
        what a write left whose reply was lost (the store killed after the write landed: the
        writer saw an error, so nothing here remembers that document). The flag is indexed and
        the embedded store answers that equality from the index (20,000 documents: 10 ms, against
        1.9 s for a scan), so once a minute costs nothing; it was every 10 minutes while that
        query was a full read, and a run's "succeeded" event then waited 9.5 minutes for it in
        the 2,000-incident fault run.
        """
        next_full = 0.0
        while True:
            full = time.monotonic() >= next_full
            failed = False
            for collection in collections:
                try:
                    published = await self.sweep(collection, full=full)
                    if published:
                        log.info("outbox sweep published pending events", collection=collection.name, events=published)
                except Exception as error:  # keep sweeping; Kafka or the store may be back soon
                    failed = True  # a full pass not finished: the next pass scans again
                    log.warning("outbox sweep failed; will retry", collection=collection.name, error=str(error))
            if full and not failed:
                next_full = time.monotonic() + full_scan_every_s
            await asyncio.sleep(interval_s)
