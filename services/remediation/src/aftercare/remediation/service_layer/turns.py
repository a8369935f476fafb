"""Per-document turns inside one process: the embedded store does not make concurrent updates of
one document atomic, so the writers of one run (engine, approval API, outbox sweep) take turns."""

from __future__ import annotations

import asyncio
import weakref


class Turns:
    def __init__(self) -> None:
        self._locks: weakref.WeakValueDictionary[str, asyncio.Lock] = weakref.WeakValueDictionary()

    def __call__(self, document_id: object) -> asyncio.Lock:
        key = str(document_id)
        lock = self._locks.get(key)
        if lock is None:
            lock = asyncio.Lock()
            self._locks[key] = lock
        return lock
