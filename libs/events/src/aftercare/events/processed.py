"""Which events a consumer has already handled, kept in the service's own database.

A record per (consumer group, handler, event id) is written right after the handler's own
writes; its ``_id`` is that triple, so the unique ``_id`` index makes a second record for the
same event impossible. A redelivered event finds its record and is skipped.

The store has no transactions, so a crash between a handler's write and this record means the
handler runs again on redelivery: handlers make their own writes idempotent too (upsert keyed
by the event id, or an ``$ne`` guard on a list of applied event ids in the same document).
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, datetime, timedelta

from pymongo.asynchronous.collection import AsyncCollection
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import DuplicateKeyError

COLLECTION = "processed_events"


def record_id(group: str, handler: str, event_id: str) -> str:
    return f"{group}|{handler}|{event_id}"


class ProcessedEventLog:
    def __init__(self, database: AsyncDatabase) -> None:  # type: ignore[type-arg]
        self._records: AsyncCollection = database[COLLECTION]  # type: ignore[type-arg]

    async def ensure_indexes(self) -> None:
        # _id is unique already; the time index serves the periodic purge (TTL indexes are not
        # available on the embedded store).
        await self._records.create_index("processed_at")

    async def already_processed(self, ids: Iterable[str]) -> set[str]:
        wanted = list(ids)
        if not wanted:
            return set()
        cursor = self._records.find({"_id": {"$in": wanted}}, {"_id": 1})
        return {document["_id"] async for document in cursor}

    async def mark(self, group: str, handler: str, event_id: str) -> None:
        try:
            await self._records.insert_one({
                "_id": record_id(group, handler, event_id),
                "group": group,
                "handler": handler,
                "event_id": event_id,
                "processed_at": datetime.now(UTC),
            })
        except DuplicateKeyError:
            # Another instance handled it during a rebalance; its effect is there already.
            pass

    async def purge_older_than(self, age: timedelta) -> int:
        """Forget records older than ``age`` (keep it longer than the topics' retention)."""
        result = await self._records.delete_many({"processed_at": {"$lt": datetime.now(UTC) - age}})
        return result.deleted_count
