"""The tenant's change log: changes (deploys, configuration changes) reported by PagerDuty change
events, kept whether or not an incident was open for their source when they arrived, so that
whoever looks at a later incident can still see what changed before it."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from pymongo import ASCENDING, DESCENDING
from pymongo.asynchronous.database import AsyncDatabase


class ChangeLog:
    def __init__(self, database: AsyncDatabase[dict[str, Any]]) -> None:
        self._changes = database["changes"]

    async def ensure_indexes(self) -> None:
        await self._changes.create_index([("tenant_id", ASCENDING), ("received_at", DESCENDING)])

    async def record(
        self, tenant_id: str, change: dict[str, Any], *, received_at: datetime, incident_ids: list[str]
    ) -> str:
        """Keep the change; returns its id. ``incident_ids``: the open incidents it was shown on."""
        change_id = str(uuid.uuid4())
        await self._changes.insert_one(
            change
            | {"_id": change_id, "tenant_id": tenant_id, "received_at": received_at, "incident_ids": incident_ids}
        )
        return change_id

    async def recent(self, tenant_id: str, *, limit: int) -> list[dict[str, Any]]:
        """The tenant's latest changes, newest first."""
        cursor = self._changes.find({"tenant_id": tenant_id}).sort([("received_at", DESCENDING)]).limit(limit)
        return [document async for document in cursor]
