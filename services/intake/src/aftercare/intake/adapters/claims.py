"""Claim a document id once: the first writer wins, every later one reads what the winner wrote.

Idempotency keys, phone calls, a dedup key's open incident and a channel credential are all
claimed this way: insert a document with a chosen ``_id``; on a duplicate key, read the holder.
The unique ``_id`` index has the last word, so two instances racing on the same claim agree.
"""

from __future__ import annotations

from typing import Any

from pymongo.asynchronous.collection import AsyncCollection
from pymongo.errors import DuplicateKeyError

# A holder that vanishes between our insert and our read (released meanwhile) is retried; past
# this many rounds something keeps deleting it, which is a bug, not a race.
CLAIM_ATTEMPTS = 10


async def claim(collection: AsyncCollection[dict[str, Any]], document: dict[str, Any]) -> tuple[dict[str, Any], bool]:
    """Insert ``document`` unless its ``_id`` is taken; returns (the stored document, whether it is ours)."""
    for _ in range(CLAIM_ATTEMPTS):
        try:
            await collection.insert_one(document)
            return document, True
        except DuplicateKeyError:
            holder = await collection.find_one({"_id": document["_id"]})
            if holder is not None:
                return holder, False
    raise RuntimeError(f"claim of {document['_id']!r} in {collection.name} kept vanishing")
