"""The consumer runner's retry stage: events whose handler failed, waiting in the service's store.

One document per consumer group and Kafka key (an incident) that has a failing event: the
failing event first, then every later event of the same key that arrived meanwhile, in order,
with the attempts made on the first one and when to try it again. The runner that owns the
key's partition retries the first event at its due time; once it is handled (or dead-lettered
after the last attempt) it is removed and the next one is tried at once; the document is
deleted when it is empty, and the key's events flow normally again.

The events are kept as they came from Kafka (value, key, headers, origin), so a dead letter
made from the stage is the same as one made straight from the topic.

Single-document writes only (the embedded store has no transactions). Only the runner that
owns the key's partition writes a key's document, one change at a time (its per-key lane), so
the writes never race; ``last_offset`` lets a redelivered event (after a crash before the
commit) be recognised as already in the stage.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from bson import Binary
from pymongo.asynchronous.collection import AsyncCollection
from pymongo.asynchronous.database import AsyncDatabase

COLLECTION = "consumer_retries"


@dataclass(frozen=True)
class StagedEvent:
    """One Kafka message waiting in the retry stage, as it was on its topic."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: tuple[tuple[str, bytes], ...]

    def to_document(self) -> dict[str, Any]:
        return {
            "offset": self.offset,
            "value": None if self.value is None else Binary(self.value),
            "headers": [{"name": name, "value": Binary(value)} for name, value in self.headers],
        }

    @classmethod
    def from_document(cls, parked: ParkedKey, document: dict[str, Any]) -> StagedEvent:
        value = document.get("value")
        return cls(
            topic=parked.topic,
            partition=parked.partition,
            offset=int(document["offset"]),
            key=parked.key,
            value=None if value is None else bytes(value),
            headers=tuple((header["name"], bytes(header["value"])) for header in document.get("headers", ())),
        )


@dataclass
class ParkedKey:
    """What a runner keeps in memory about a key in the retry stage (the events stay in the store)."""

    document_id: str
    topic: str
    partition: int
    key: bytes | None
    attempts: int  # failed attempts of the first event so far
    due_at: datetime
    last_offset: int  # the highest offset ever put in the stage for this key
    last_error: str = ""


class RetryStage:
    """The ``consumer_retries`` collection of a service's database."""

    def __init__(self, database: AsyncDatabase[Any]) -> None:
        self._documents: AsyncCollection[Any] = database[COLLECTION]

    @staticmethod
    def document_id(group: str, topic: str, key: str) -> str:
        return f"{group}|{topic}|{key}"

    async def load(self, group: str, topic: str, partitions: Iterable[int]) -> list[ParkedKey]:
        """The keys of ``group`` in the stage whose events came from ``partitions`` of ``topic``."""
        cursor = self._documents.find(
            {"group": group, "topic": topic, "partition": {"$in": list(partitions)}}, {"events": 0}
        )
        return [
            ParkedKey(
                document_id=document["_id"],
                topic=document["topic"],
                partition=int(document["partition"]),
                key=None if document.get("key") is None else bytes(document["key"]),
                attempts=int(document["attempts"]),
                due_at=_aware(document["due_at"]),
                last_offset=int(document["last_offset"]),
                last_error=document.get("last_error", ""),
            )
            async for document in cursor
        ]

    async def park(self, group: str, parked: ParkedKey, event: StagedEvent) -> None:
        """Put the first failing event of a key in the stage (its document does not exist yet)."""
        await self._documents.replace_one(
            {"_id": parked.document_id},
            {
                "group": group,
                "topic": parked.topic,
                "partition": parked.partition,
                "key": None if parked.key is None else Binary(parked.key),
                "attempts": parked.attempts,
                "due_at": parked.due_at,
                "last_error": parked.last_error,
                "last_offset": event.offset,
                "events": [event.to_document()],
            },
            upsert=True,
        )

    async def append(self, parked: ParkedKey, event: StagedEvent) -> None:
        """Queue a later event of a key that is in the stage behind the ones already there."""
        await self._documents.update_one(
            {"_id": parked.document_id},
            {"$push": {"events": event.to_document()}, "$set": {"last_offset": event.offset}},
        )

    async def events(self, parked: ParkedKey) -> Sequence[StagedEvent]:
        """The key's waiting events, first (the failing one) first."""
        document = await self._documents.find_one({"_id": parked.document_id})
        if document is None:
            return []
        return [StagedEvent.from_document(parked, entry) for entry in document.get("events", ())]

    async def remove_first(self, parked: ParkedKey) -> None:
        """The first event is done (handled or dead-lettered): the next one is tried at once."""
        await self._documents.update_one(
            {"_id": parked.document_id},
            {"$pop": {"events": -1}, "$set": {"attempts": 0, "due_at": parked.due_at, "last_error": ""}},
        )

    async def reschedule(self, parked: ParkedKey) -> None:
        """Record a failed attempt of the first event and when to try again."""
        await self._documents.update_one(
            {"_id": parked.document_id},
            {"$set": {"attempts": parked.attempts, "due_at": parked.due_at, "last_error": parked.last_error}},
        )

    async def release(self, parked: ParkedKey) -> None:
        """The key has no waiting events any more."""
        await self._documents.delete_one({"_id": parked.document_id})

    async def waiting(self, group: str) -> list[dict[str, Any]]:
        """Every key of ``group`` in the stage, with its count of waiting events (for tests, tools)."""
        cursor = self._documents.find({"group": group})
        return [
            {
                "key": None if document.get("key") is None else bytes(document["key"]),
                "topic": document["topic"],
                "partition": document["partition"],
                "attempts": document["attempts"],
                "due_at": document["due_at"],
                "last_error": document.get("last_error", ""),
                "offsets": [int(entry["offset"]) for entry in document.get("events", ())],
            }
            async for document in cursor
        ]


def _aware(moment: datetime) -> datetime:
    # A client made without ``tz_aware=True`` reads naive datetimes (UTC by BSON's definition).
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)
