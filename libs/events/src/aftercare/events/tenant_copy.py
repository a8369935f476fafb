"""A service's own copy of the tenants, kept from ``TenantUpserted`` events.

Intake owns tenants; triage, remediation and the notifier each keep the copy they need in their
own database (collection ``tenants``), so none of them reads intake's database or calls its API.
"""

from __future__ import annotations

from typing import Any

from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import DuplicateKeyError

from aftercare.events.envelope import Envelope
from aftercare.events.tenants import TenantUpserted

COLLECTION = "tenants"


class TenantCopy:
    def __init__(self, database: AsyncDatabase[dict[str, Any]]) -> None:
        self._tenants = database[COLLECTION]

    async def apply(self, envelope: Envelope[TenantUpserted]) -> None:
        """Store the tenant unless a newer version of it is stored already.

        Idempotent and order-safe: a redelivered or late event older than the stored copy
        changes nothing.
        """
        tenant = envelope.data
        document = tenant.model_dump(mode="json") | {"as_of": envelope.time, "event_id": envelope.id}
        try:
            await self._tenants.update_one(
                {"_id": tenant.tenant_id, "as_of": {"$lte": envelope.time}},
                {"$set": document},
                upsert=True,
            )
        except DuplicateKeyError:
            pass  # a newer copy exists: the filter missed it and the upsert collided with it

    async def get(self, tenant_id: str) -> TenantUpserted | None:
        document = await self._tenants.find_one({"_id": tenant_id})
        if document is None:
            return None
        fields = {key: value for key, value in document.items() if key in TenantUpserted.model_fields}
        return TenantUpserted.model_validate(fields)
