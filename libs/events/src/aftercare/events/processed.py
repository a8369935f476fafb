"""Which events a consumer has already handled, kept in the service's own database.

A record per (consumer group, handler, event id) is written after the handler's own writes
(the consumer runner writes those of a whole batch at once, before committing the batch's
offsets); its ``_id`` is that triple, so the unique ``_id`` index makes a second record for the
same event impossible. A redelivered event finds its record and is skipped.

The store has no transactions, so a crash between a handler's write and this record means the
handler runs again on redelivery: handlers make their own writes idempotent too (upsert keyed
by the event id, or an ``$ne`` guard on a list of applied event ids in the same document).

Checking a batch against the processed records is one read by ``_id`` (``$in``, in chunks the
store's index pushdown takes: infra/ferretdb/_overlay, aftercare_pushdown.go). Until session 6 it
was a write: a "started" record per (group, handler, event) was inserted, and only the ids whose
insert hit the unique ``_id`` were looked up, because the embedded store then answered every
query, even by ``_id``, with a scan of the whole collection. Since the pushdown an ``_id`` lookup
is answered from the index, and a write costs more than a read there (writes take turns for the
database file): the insert was 13 ms of every event's path in the e2e profile, and its purge
deleted as many records again. The started collection is no longer written; the purge still
clears what older versions left in it.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, datetime, timedelta

from pymongo.asynchronous.collection import AsyncCollection
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import BulkWriteError, DuplicateKeyError

COLLECTION = "processed_events"
STARTED_COLLECTION = "processed_events_started"  # written by versions before session 6 only

_DUPLICATE_KEY = 11000

# The store's index pushdown takes an ``$in`` of at most 100 values (aftercareMaxIn); a longer
# list would be answered by reading the whole collection.
_IDS_PER_READ = 100


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

    async def begin(self, ids: Iterable[str]) -> set[str]:
        """The record ids among ``ids`` that are processed already (those of a batch about to be
        handled). Nothing is written: an id not processed yet may still be handled meanwhile by
        another copy of its event, which the consumer runner guards against itself (copies of
        one event share a key, so one lane handles them in turn; see ``consumer.py``)."""
        return await self.already_processed(dict.fromkeys(ids))

    async def already_processed(self, ids: Iterable[str]) -> set[str]:
        """The record ids among ``ids`` that have a processed record (one ``_id`` read per chunk)."""
        wanted = list(ids)
        found: set[str] = set()
        for start in range(0, len(wanted), _IDS_PER_READ):
            cursor = self._records.find({"_id": {"$in": wanted[start : start + _IDS_PER_READ]}}, {"_id": 1})
            found.update([document["_id"] async for document in cursor])
        return found

    async def mark(self, group: str, handler: str, event_id: str) -> None:
        """Record that ``handler`` of ``group`` has had its effect for ``event_id``."""
        try:
            await self._records.insert_one(_record(group, handler, event_id, datetime.now(UTC)))
        except DuplicateKeyError:
            # Another instance handled it during a rebalance; its effect is there already.
            pass

    async def mark_many(self, group: str, handled: Iterable[tuple[str, str]]) -> None:
        """Record several ``(handler, event id)`` pairs of ``group`` in one write.

        Pairs recorded already (by another instance during a rebalance) are left as they are.
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
        # Started records are no longer written (see the module's doc); these are older versions'.
        await self._started.delete_many({"started_at": {"$lt": cutoff}})
        return result.deleted_count


def _raise_unless_only_duplicates(error: BulkWriteError) -> None:
    details = error.details or {}
    if details.get("writeConcernErrors") or any(
        failure.get("code") != _DUPLICATE_KEY for failure in details.get("writeErrors", ())
    ):
        raise error
