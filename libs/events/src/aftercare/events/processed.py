"""Which events a consumer has already handled, kept in the service's own database.

A record per (consumer group, handler, event id) is written after the handler's own writes
(the consumer runner writes those of a whole batch at once, before committing the batch's
offsets); its ``_id`` is that triple, so the unique ``_id`` index makes a second record for the
same event impossible. A redelivered event finds its record and is skipped.

The store has no transactions, so a crash between a handler's write and this record means the
handler runs again on redelivery: handlers make their own writes idempotent too (upsert keyed
by the event id, or an ``$ne`` guard on a list of applied event ids in the same document).

Checking a batch against the processed records is done by writing, not reading: ``begin``
inserts a "started" record per (group, handler, event) into a second collection, and only
those whose insert hits the unique ``_id`` (seen before: a redelivery or a duplicate) are then
looked up among the processed records. Every processed record has a started record (written
first, purged last), so a successful insert proves the event new without a query. This keeps
the usual path to index-backed inserts: the embedded store (FerretDB 1.24 on SQLite) answered
every query, even by ``_id``, with a scan of the whole collection, so a lookup per batch would
have slowed a consumer down in step with the size of its history. Since the store's pushdown
patch (infra/ferretdb/_overlay, aftercare_pushdown.go) answers ``_id`` lookups from the index, a
read of the processed records could replace the "started" insert (one write per event, 13 ms in
the e2e profile of session 5); not changed yet.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, datetime, timedelta

from pymongo.asynchronous.collection import AsyncCollection
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import BulkWriteError, DuplicateKeyError

COLLECTION = "processed_events"
STARTED_COLLECTION = "processed_events_started"

# Started records outlive their processed records by this much, so that a processed record never
# exists without its started record (handling of a batch takes far less than this).
_STARTED_EXTRA_RETENTION = timedelta(days=1)

_DUPLICATE_KEY = 11000


def record_id(group: str, handler: str, event_id: str) -> str:
    return f"{group}|{handler}|{event_id}"


def _record(group: str, handler: str, event_id: str, at: datetime) -> dict[str, object]:
    return {
        "_id": record_id(group, handler, event_id),
        "group": group,
        "handler": handler,
        "event_id": event_id,
        "processed_at": at,
    }


class ProcessedEventLog:
    def __init__(self, database: AsyncDatabase) -> None:  # type: ignore[type-arg]
        self._records: AsyncCollection = database[COLLECTION]  # type: ignore[type-arg]
        self._started: AsyncCollection = database[STARTED_COLLECTION]  # type: ignore[type-arg]
        self.database = database

    async def ensure_indexes(self) -> None:
        # _id is unique already; the time index serves the periodic purge (TTL indexes are not
        # available on the embedded store).
        await self._records.create_index("processed_at")
        await self._started.create_index("started_at")

    async def begin(self, ids: Iterable[str]) -> set[str]:
        """Note that handling of the record ids ``ids`` begins; return those already processed.

        Safe to repeat: ids whose started record exists (from an earlier delivery, or from an
        earlier try of this call) are looked up among the processed records.
        """
        _, processed = await self.begin_batch(ids)
        return processed

    async def begin_batch(self, ids: Iterable[str]) -> tuple[set[str], set[str]]:
        """Like ``begin``, returning ``(seen_before, already_processed)``.

        ``seen_before`` are the ids whose started record existed (a redelivery or a duplicate);
        those not processed yet may still be processed by another copy of the event handled
        meanwhile, so a caller that handles events concurrently checks them again just before
        running their handler. Ids never seen before are certainly not processed.
        """
        wanted = list(dict.fromkeys(ids))
        if not wanted:
            return set(), set()
        now = datetime.now(UTC)
        seen_before: list[str] = []
        try:
            # Unordered: a duplicate does not stop the records after it from being written.
            await self._started.insert_many([{"_id": id_, "started_at": now} for id_ in wanted], ordered=False)
        except BulkWriteError as error:
            _raise_unless_only_duplicates(error)
            seen_before = [wanted[failure["index"]] for failure in error.details["writeErrors"]]
        return set(seen_before), await self.already_processed(seen_before)

    async def already_processed(self, ids: Iterable[str]) -> set[str]:
        """The record ids among ``ids`` that have a processed record (a query; see ``begin``)."""
        wanted = list(ids)
        if not wanted:
            return set()
        cursor = self._records.find({"_id": {"$in": wanted}}, {"_id": 1})
        return {document["_id"] async for document in cursor}

    async def mark(self, group: str, handler: str, event_id: str) -> None:
        """Record that ``handler`` of ``group`` has had its effect for ``event_id``."""
        await self.begin([record_id(group, handler, event_id)])  # no-op if it has begun already
        try:
            await self._records.insert_one(_record(group, handler, event_id, datetime.now(UTC)))
        except DuplicateKeyError:
            # Another instance handled it during a rebalance; its effect is there already.
            pass

    async def mark_many(self, group: str, handled: Iterable[tuple[str, str]]) -> None:
        """Record several ``(handler, event id)`` pairs of ``group`` in one write.

        Call ``begin`` for them first (the consumer runner does, before the handlers). Pairs
        recorded already (by another instance during a rebalance) are left as they are.
        """
        now = datetime.now(UTC)
        documents = [_record(group, handler, event_id, now) for handler, event_id in handled]
        if not documents:
            return
        try:
            await self._records.insert_many(documents, ordered=False)
        except BulkWriteError as error:
            _raise_unless_only_duplicates(error)

    async def purge_older_than(self, age: timedelta) -> int:
        """Forget records older than ``age`` (keep it longer than the topics' retention)."""
        cutoff = datetime.now(UTC) - age
        result = await self._records.delete_many({"processed_at": {"$lt": cutoff}})
        # Processed records first, then the (older) started records: never one without the other.
        await self._started.delete_many({"started_at": {"$lt": cutoff - _STARTED_EXTRA_RETENTION}})
        return result.deleted_count


def _raise_unless_only_duplicates(error: BulkWriteError) -> None:
    details = error.details or {}
    if details.get("writeConcernErrors") or any(
        failure.get("code") != _DUPLICATE_KEY for failure in details.get("writeErrors", ())
    ):
        raise error
