"""Idempotency-Key for the JSON API: the same key with the same body gives the same incident.

The key is claimed before the incident exists, with the incident id allocated up front; the
incident is then opened under that id. A retry after a crash in between finds the claim and
opens the incident under the same id, so a client retrying never gets two incidents.
"""

from __future__ import annotations

import hashlib
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from pymongo.asynchronous.database import AsyncDatabase

from aftercare.intake.adapters.claims import claim


class IdempotencyConflict(ValueError):
    """The key was used before with a different request body."""


@dataclass(frozen=True)
class Claim:
    incident_id: str
    first_use: bool


def body_digest(body: bytes) -> str:
    return hashlib.sha256(body).hexdigest()


class IdempotencyKeys:
    def __init__(self, database: AsyncDatabase[dict[str, Any]]) -> None:
        self._keys = database["idempotency_keys"]

    async def claim(self, tenant_id: str, key: str, digest: str) -> Claim:
        stored, first_use = await claim(
            self._keys,
            {"_id": f"{tenant_id}|{key}", "digest": digest, "incident_id": str(uuid.uuid4()), "at": datetime.now(UTC)},
        )
        if stored["digest"] != digest:
            raise IdempotencyConflict(key)
        return Claim(str(stored["incident_id"]), first_use=first_use)

    async def settle(self, tenant_id: str, key: str, incident_id: str) -> None:
        """Point the key at the incident the request really went to (an open one, by dedup_key)."""
        await self._keys.update_one({"_id": f"{tenant_id}|{key}"}, {"$set": {"incident_id": incident_id}})
