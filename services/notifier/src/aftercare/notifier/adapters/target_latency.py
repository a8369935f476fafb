"""The latest probes of every diagnostic target, for the dashboard's latency sparklines.

``target_latency``: ``_id`` ``<tenant>|<system>``, the target, its latest status, and its last
``SAMPLES_KEPT`` samples (oldest first), built only from triage's ``target.probed`` events.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from pymongo import ReturnDocument
from pymongo.asynchronous.collection import AsyncCollection

from aftercare.events.envelope import Envelope
from aftercare.events.triage import TargetProbed
from aftercare.notifier.domain.target_latency import SAMPLES_KEPT


class TargetLatencies:
    def __init__(self, collection: AsyncCollection[dict[str, Any]]) -> None:
        self._targets = collection

    async def on_target_probed(self, envelope: Envelope[TargetProbed]) -> None:
        """Append one sample. The runner's processed-event log makes this once per event; the
        embedded store's single-document updates are atomic, so two instances never lose one."""
        probe = envelope.data
        sample = {"at": probe.probed_at, "latency_ms": probe.latency_ms, "status": probe.status}
        document = await self._targets.find_one_and_update(
            {"_id": f"{envelope.tenant_id}|{probe.system}"},
            {
                "$push": {"samples": sample},
                "$set": {
                    "tenant_id": envelope.tenant_id,
                    "system": probe.system,
                    "target": probe.target,
                    "status": probe.status,
                    "probed_at": probe.probed_at,
                },
            },
            upsert=True,
            return_document=ReturnDocument.AFTER,
        )
        # No $push $slice on the embedded store (FerretDB 1.24): drop the oldest ones after.
        for _ in range(len((document or {}).get("samples", [])) - SAMPLES_KEPT):
            await self._targets.update_one({"_id": f"{envelope.tenant_id}|{probe.system}"}, {"$pop": {"samples": -1}})

    async def of_tenants(self, tenants: Sequence[str] | None) -> list[dict[str, Any]]:
        """Every target the operator may see (None: all tenants), by tenant then system."""
        query: dict[str, Any] = {} if tenants is None else {"tenant_id": {"$in": list(tenants)}}
        found = [document async for document in self._targets.find(query)]
        return sorted(found, key=lambda d: (d.get("tenant_id", ""), d.get("system", "")))
