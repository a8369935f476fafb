"""Per-integration rate limit, shared by every intake instance through the store.

A fixed one-minute window per key: one atomic ``$inc`` on ``<key>|<minute>``. Over the limit
the caller gets 429 with Retry-After (the seconds left in the window); nothing is dropped
silently. Old windows are deleted by a periodic sweep (no TTL index on the embedded store).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from pymongo import ReturnDocument
from pymongo.asynchronous.database import AsyncDatabase


@dataclass(frozen=True)
class Verdict:
    allowed: bool
    retry_after_s: int
    count: int


class RateLimiter:
    def __init__(self, database: AsyncDatabase[dict[str, Any]], per_minute: int) -> None:
        self._windows = database["rate_limit_windows"]
        self.per_minute = per_minute

    async def ensure_indexes(self) -> None:
        await self._windows.create_index("window")

    async def hit(self, key: str) -> Verdict:
        now = time.time()
        window = int(now // 60)
        document = await self._windows.find_one_and_update(
            {"_id": f"{key}|{window}"}, {"$inc": {"count": 1}, "$setOnInsert": {"window": window}},
            upsert=True, return_document=ReturnDocument.AFTER,
        )
        count = int(document["count"])
        retry_after = max(1, int((window + 1) * 60 - now))
        return Verdict(allowed=count <= self.per_minute, retry_after_s=retry_after, count=count)

    async def forget_old_windows(self) -> None:
        await self._windows.delete_many({"window": {"$lt": int(time.time() // 60) - 1}})
