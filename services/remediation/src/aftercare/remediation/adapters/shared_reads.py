"""Store reads shared by the callers that need the same value at the same moment.

Every run needs its tenant, the tenant's kill switch and its runbook's current version; each is
read at most once a second per process. When that second ran out in a burst, every drive found
the value stale together and read it again: in the 500-run bench that was about one read of each
per run. A caller that finds the value being read now waits for that read instead.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

Value = TypeVar("Value")


class SharedReads(Generic[Value]):
    """Values by key, read with ``read`` and kept while ``keep(value)`` says so."""

    def __init__(self, read: Callable[[str], Awaitable[Value]], keep: Callable[[Value], bool] = lambda _: True) -> None:
        self._read = read
        self._keep = keep
        self._values: dict[str, tuple[Value, float]] = {}
        self._reading: dict[str, asyncio.Future[Value]] = {}
        # Bumped by ``forget``: a read begun before it must not store what it found.
        self._generations: dict[str, int] = {}

    async def get(self, key: str, max_age_s: float) -> Value:
        """The value, read at most ``max_age_s`` ago (0: read now, alone)."""
        cached = self._values.get(key)
        if cached is not None and time.monotonic() - cached[1] < max_age_s:
            return cached[0]
        if max_age_s > 0 and key in self._reading:
            return await asyncio.shield(self._reading[key])
        generation = self._generations.get(key, 0)
        reading: asyncio.Future[Value] = asyncio.get_running_loop().create_future()
        if max_age_s > 0:
            self._reading[key] = reading
        try:
            value = await self._read(key)
        except BaseException as error:
            reading.set_exception(error)
            reading.exception()  # retrieved: nobody may be waiting for it
            raise
        finally:
            if self._reading.get(key) is reading:
                del self._reading[key]
        if self._generations.get(key, 0) == generation and self._keep(value):
            self._values[key] = (value, time.monotonic())
        reading.set_result(value)
        return value

    def forget(self, key: str) -> None:
        """The next ``get`` reads again (this process changed the value)."""
        self._values.pop(key, None)
        self._reading.pop(key, None)
        self._generations[key] = self._generations.get(key, 0) + 1
