"""Per-integration rate limit, shared by every intake instance through the store.

A fixed one-minute window per key: a ``$inc`` on ``<key>|<minute>``. Over the limit the caller
gets 429 with Retry-After (the seconds left in the window); nothing is dropped silently. Old
windows are deleted by a periodic sweep (no TTL index on the embedded store).

Counting goes through ``BatchedCounter``: the hits that arrive while a window's previous
increment is on its way to the store go together as one ``$inc`` (every hit still gets its own
count, as if counted alone). Under load that is one store write per batch instead of one per
request. That is for speed only: each ``$inc`` is atomic (on the embedded store too, through its
build patch), so several instances sharing one store together hold the limit exactly.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from pymongo.asynchronous.database import AsyncDatabase

from aftercare.intake.adapters.counters import BatchedCounter


@dataclass(frozen=True)
class Verdict:
    allowed: bool
    retry_after_s: int
    count: int


class RateLimiter:
    def __init__(self, database: AsyncDatabase[dict[str, Any]], per_minute: int) -> None:
        self._windows = database["rate_limit_windows"]
        self.per_minute = per_minute
        self._counts = BatchedCounter(self._windows, on_insert=_window_of)

    async def ensure_indexes(self) -> None:
        await self._windows.create_index("window")

    async def hit(self, key: str) -> Verdict:
        now = time.time()
        window = int(now // 60)
        count = await self._counts.next(f"{key}|{window}")
        retry_after = max(1, int((window + 1) * 60 - now))
        return Verdict(allowed=count <= self.per_minute, retry_after_s=retry_after, count=count)

    async def forget_old_windows(self) -> None:
        await self._windows.delete_many({"window": {"$lt": int(time.time() // 60) - 1}})


def _window_of(window_id: str) -> dict[str, Any]:
    return {"window": int(window_id.rsplit("|", 1)[1])}
