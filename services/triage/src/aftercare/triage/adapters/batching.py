"""Single-document reads and writes of one collection, many callers per store round trip.

Triage handles incidents side by side (one lane per incident). Each incident makes a handful of
small store calls (its own document, its group keys, its source's flapping history), and on the
embedded store every call is a round trip that waits its turn: one at a time they were the
ceiling (8 incidents/s, about ten round trips each). Here the calls that arrive while another
batch is in flight wait for it and then go together:

* reads by ``_id`` as one ``find({"_id": {"$in": [...]}})`` (an indexed lookup);
* inserts, updates and deletes as one unordered ``bulk_write``; each caller gets its own
  outcome (a ``DuplicateKeyError`` for its insert that lost, for example).

A lone call goes at once; nothing waits on a timer. Callers that need the count of what their
update changed (a conditional takeover) call the collection directly: a bulk write reports counts
for the whole batch only.

Each caller still awaits its own call before its next one, so one incident's steps keep their
order; calls of different incidents in one batch were concurrent anyway.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

from pymongo import DeleteOne, InsertOne, UpdateOne
from pymongo.asynchronous.collection import AsyncCollection
from pymongo.errors import BulkWriteError, DuplicateKeyError, OperationFailure

DUPLICATE_KEY = 11000

WriteOp = InsertOne[dict[str, Any]] | UpdateOne | DeleteOne


class BatchedCollection:
    """Batches the single-document calls of concurrent callers on ``collection``."""

    def __init__(
        self,
        collection: AsyncCollection[dict[str, Any]],
        *,
        projection: dict[str, Any] | None = None,
        max_batch: int = 500,
    ) -> None:
        self.collection = collection
        self._projection = projection
        self._max_batch = max_batch
        self._reads: list[tuple[Any, asyncio.Future[dict[str, Any] | None]]] = []
        self._writes: list[tuple[WriteOp, asyncio.Future[None]]] = []
        self._reader: asyncio.Task[None] | None = None
        self._writer: asyncio.Task[None] | None = None

    async def find_one(self, document_id: Any) -> dict[str, Any] | None:
        """The document with this ``_id`` (without the projected-out fields), or None."""
        found: asyncio.Future[dict[str, Any] | None] = asyncio.get_running_loop().create_future()
        self._reads.append((document_id, found))
        if self._reader is None or self._reader.done():
            self._reader = asyncio.create_task(self._read_batches())
        return await found

    async def write(self, operation: WriteOp) -> None:
        """Apply one insert, update or delete; raises ``DuplicateKeyError`` for an insert (or
        upsert) whose ``_id`` exists, ``OperationFailure`` for another refusal of this operation."""
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._writes.append((operation, done))
        if self._writer is None or self._writer.done():
            self._writer = asyncio.create_task(self._write_batches())
        await done

    async def _read_batches(self) -> None:
        while self._reads:
            batch, self._reads = self._reads[: self._max_batch], self._reads[self._max_batch :]
            try:
                ids = list({document_id for document_id, _ in batch})
                query = {"_id": ids[0]} if len(ids) == 1 else {"_id": {"$in": ids}}
                found = {document["_id"]: document async for document in self.collection.find(query, self._projection)}
            except BaseException as error:
                _fail_callers(batch, error)
                if not isinstance(error, Exception):
                    raise
                continue
            for document_id, waiting in batch:
                if not waiting.done():
                    waiting.set_result(found.get(document_id))

    async def _write_batches(self) -> None:
        while self._writes:
            batch, self._writes = self._writes[: self._max_batch], self._writes[self._max_batch :]
            failed: dict[int, Exception] = {}
            try:
                await self.collection.bulk_write([operation for operation, _ in batch], ordered=False)
            except BulkWriteError as error:
                for write_error in error.details.get("writeErrors", []):
                    code, message = write_error.get("code"), write_error.get("errmsg", "write refused")
                    failed[write_error["index"]] = (
                        DuplicateKeyError(message, code, write_error)
                        if code == DUPLICATE_KEY
                        else OperationFailure(message, code, write_error)
                    )
                if error.details.get("writeConcernErrors"):
                    failed = dict.fromkeys(range(len(batch)), OperationFailure("write concern not met"))
            except BaseException as error:
                _fail_callers(batch, error)
                if not isinstance(error, Exception):
                    raise
                continue
            for index, (_, waiting) in enumerate(batch):
                if waiting.done():
                    continue
                if index in failed:
                    waiting.set_exception(failed[index])
                else:
                    waiting.set_result(None)


def _fail_callers(batch: Sequence[tuple[Any, asyncio.Future[Any]]], error: BaseException) -> None:
    """Every caller waiting on a failed round trip gets its error (a cancellation as a RuntimeError:
    the batch loop re-raises the cancellation itself)."""
    for _, waiting in batch:
        if not waiting.done():
            waiting.set_exception(error if isinstance(error, Exception) else RuntimeError(str(error)))
