"""Group commit: new documents that arrive together are written in one store write and their
events published in one Kafka batch, each caller still told only once both are done.

Opening an incident one by one costs four store round trips (insert with the events in the
outbox, publish, empty the outbox, clear its flag) per report; under an alert storm the store's
writes were the ceiling. ``GroupCommit.insert`` queues the document; whichever batch is not
already being committed goes as:

1. one ledger document listing the batch's events (``outbox_ledger``, by ``_id``): the outbox of
   the whole batch, written *before* the documents;
2. one ``insert_many`` of the documents (unordered: a duplicate fails alone);
3. one ``publish`` of every written document's events (acks=all, within the publish deadline);
4. the ledger document deleted (by ``_id``), after the callers were told and without holding up
   the next batch: finished batches' documents are deleted together, up to 100 per write, by a
   task of their own. (Deleted in line, that delete was a third of each batch's store time in
   the intake bench, 37 ms, with the next batch waiting for it.)

A crash anywhere leaves the ledger document; ``OutboxRelay.sweep`` (``sweep_ledger``) then
publishes the events of the documents that this batch wrote (each carries its batch's id in
``outbox_batch``: another instance may have written the same ``_id``), in order, and drops those
of documents never written (nobody was told they were accepted). So "written" and "announced" cannot
drift apart, as with the per-document outbox, with two small writes per batch instead of three
per document. The ledger holds only unfinished batches, so the sweep reads a handful of
documents, however many incidents the store holds.

Concurrency gives the batching: while one batch is being committed, the next one queues. Nothing
waits on a timer, and a lone request goes at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from pymongo.asynchronous.collection import AsyncCollection
from pymongo.errors import BulkWriteError, DuplicateKeyError, OperationFailure

from aftercare.events import outbox
from aftercare.events.envelope import Envelope
from aftercare.events.producer import EventProducer

LEDGER = outbox.LEDGER
DUPLICATE_KEY = 11000
# The store's index pushdown takes an $in of at most 100 values (aftercare_pushdown.go).
CLEARED_PER_WRITE = 100


@dataclass
class _Queued:
    document: dict[str, Any]
    entries: list[dict[str, Any]]
    events: Sequence[Envelope[Any]]
    done: asyncio.Future[None] = field(default_factory=lambda: asyncio.get_running_loop().create_future())


class GroupCommit:
    """Inserts new documents of one collection with their events, many callers per write."""

    def __init__(
        self, collection: AsyncCollection[dict[str, Any]], producer: EventProducer, *, max_batch: int = 500
    ) -> None:
        self._collection = collection
        self._ledger = collection.database[LEDGER]
        self._producer = producer
        self._max_batch = max_batch
        self._queue: list[_Queued] = []
        self._committing = False
        self._finished: list[str] = []  # ledger ids of finished batches, not deleted yet
        self._clearing: asyncio.Task[None] | None = None

    async def insert(self, document: dict[str, Any], events: Sequence[Envelope[Any]]) -> None:
        """Insert ``document`` and publish ``events``; return once the document is stored and
        Kafka has acknowledged the events.

        Raises ``EventTooLarge`` before anything is written if an event could never be published,
        ``DuplicateKeyError`` if the document collides with a unique key (nothing published for
        it), ``PublishFailed`` if Kafka did not acknowledge in time (the document is stored and
        the sweep publishes its events later), or the store's error.
        """
        entries = [outbox.stored(event) | {"document_id": document["_id"]} for event in events]
        queued = _Queued(document, entries, events)
        self._queue.append(queued)
        if not self._committing:
            self._committing = True
            # The caller that finds nobody committing commits, for itself and whoever queued
            # meanwhile; a task, so that its own cancellation cannot strand the others.
            asyncio.get_running_loop().create_task(self._commit_all())
        await asyncio.shield(queued.done)

    async def _commit_all(self) -> None:
        try:
            while self._queue:
                batch, self._queue = self._queue[: self._max_batch], self._queue[self._max_batch :]
                try:
                    await self._commit(batch)
                except BaseException as error:  # every caller hears about it; the loop goes on
                    for queued in batch:
                        if not queued.done.done():
                            queued.done.set_exception(error)
                    if not isinstance(error, Exception):
                        raise
        finally:
            self._committing = False

    async def _commit(self, batch: list[_Queued]) -> None:
        ledger_id = str(uuid.uuid4())
        for queued in batch:
            # Which batch wrote it: two instances can write the same _id (one wins), and the sweep
            # must publish only the winner's events, never the loser's (a second IncidentReported).
            queued.document[outbox.BATCH] = ledger_id
        await self._ledger.insert_one(
            {
                "_id": ledger_id,
                "collection": self._collection.name,
                "entries": [entry for queued in batch for entry in queued.entries],
                "at": time.time(),
            }
        )
        failed: dict[int, Exception] = {}
        try:
            await self._collection.insert_many([queued.document for queued in batch], ordered=False)
        except BulkWriteError as error:
            for problem in error.details.get("writeErrors", []):
                code = problem.get("code")
                kind = DuplicateKeyError if code == DUPLICATE_KEY else OperationFailure
                failed[problem["index"]] = kind(problem.get("errmsg", "write failed"), code, problem)
        written = [queued for index, queued in enumerate(batch) if index not in failed]
        for index, problem in failed.items():
            batch[index].done.set_exception(problem)
        if failed:
            # The failed documents' events must never go out (a duplicate _id is another
            # attempt's incident): the ledger keeps only the written ones.
            await self._ledger.update_one(
                {"_id": ledger_id},
                {"$set": {"entries": [entry for queued in written for entry in queued.entries]}},
            )
        if not written:
            self._forget(ledger_id)
            return
        records = [
            (event.data.TOPIC, entry["json"].encode(), event)
            for queued in written
            for entry, event in zip(queued.entries, queued.events, strict=True)
        ]
        try:
            await self._producer.publish_serialized(records)
        except Exception as error:
            # Stored, not announced: the ledger document stays for the sweep.
            for queued in written:
                queued.done.set_exception(error)
            return
        for queued in written:
            queued.done.set_result(None)
        self._forget(ledger_id)

    def _forget(self, ledger_id: str) -> None:
        """The batch is done: its ledger document goes with the next clearing write."""
        self._finished.append(ledger_id)
        if self._clearing is None or self._clearing.done():
            self._clearing = asyncio.get_running_loop().create_task(self._clear_finished())

    async def _clear_finished(self) -> None:
        while self._finished:
            ledger_ids, self._finished = self._finished[:CLEARED_PER_WRITE], self._finished[CLEARED_PER_WRITE:]
            # A ledger document left by a failure here (or by a stop before this ran) only makes
            # the sweep publish these events again, which consumers ignore (they deduplicate by
            # event id).
            with contextlib.suppress(Exception):
                await self._ledger.delete_many({"_id": {"$in": ledger_ids}})

    async def settled(self) -> None:
        """Return once the ledger documents of every finished batch are deleted (for a clean
        stop, and for tests that look at the ledger)."""
        while self._clearing is not None and not self._clearing.done():
            await asyncio.shield(self._clearing)
