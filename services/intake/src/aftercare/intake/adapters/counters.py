"""Counter documents incremented in batches: incident numbers and rate-limit windows."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from pymongo import ReturnDocument
from pymongo.asynchronous.collection import AsyncCollection
from pymongo.errors import DuplicateKeyError


class BatchedCounter:
    """Counter documents (``{"_id", "value"}``) whose increments are sent to the store in batches.

    ``next(id)`` returns the counter's value after this caller's increment, exactly as a ``$inc``
    of 1 of its own would, but increments that arrive together go out as one ``$inc`` of their
    number, one batch at a time per document. Used for rate-limit windows and incident numbers.
    """

    def __init__(
        self, collection: AsyncCollection[dict[str, Any]], on_insert: Callable[[str], dict[str, Any]] | None = None
    ) -> None:
        self._collection = collection
        self._on_insert = on_insert
        self._waiting: dict[str, list[asyncio.Future[int]]] = {}
        self._writers: dict[str, asyncio.Task[None]] = {}

    async def next(self, counter_id: str) -> int:
        mine: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self._waiting.setdefault(counter_id, []).append(mine)
        if counter_id not in self._writers:
            # Its own task: a caller that goes away must not strand the others waiting on it.
            self._writers[counter_id] = asyncio.create_task(self._write(counter_id))
        return await mine

    async def _write(self, counter_id: str) -> None:
        batch: list[asyncio.Future[int]] = []
        try:
            while batch := self._waiting.pop(counter_id, []):
                try:
                    value = await self._increment(counter_id, len(batch))
                except Exception as error:
                    for waiting in batch:
                        if not waiting.done():
                            waiting.set_exception(error)
                    continue
                for position, waiting in enumerate(batch):
                    if not waiting.done():  # a caller that gave up leaves a gap, like a lost request
                        waiting.set_result(value - len(batch) + 1 + position)
        finally:
            del self._writers[counter_id]
            # Only if this task itself was cancelled (shutdown): nobody is left waiting forever.
            for waiting in batch + self._waiting.pop(counter_id, []):
                if not waiting.done():
                    waiting.cancel()

    async def _increment(self, counter_id: str, by: int) -> int:
        update: dict[str, Any] = {"$inc": {"value": by}}
        if self._on_insert is not None:
            update["$setOnInsert"] = self._on_insert(counter_id)
        try:
            document = await self._collection.find_one_and_update(
                {"_id": counter_id}, update, upsert=True, return_document=ReturnDocument.AFTER
            )
        except DuplicateKeyError:
            # Created at the same moment by another instance (both upserts inserted; one lost):
            # it exists now, so incrementing it works.
            document = await self._collection.find_one_and_update(
                {"_id": counter_id}, update, upsert=True, return_document=ReturnDocument.AFTER
            )
        assert document is not None  # upsert with ReturnDocument.AFTER always returns one
        return int(document["value"])
