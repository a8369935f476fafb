"""``phone_calls``: one document per (tenant, CallSid), claimed before the incident is touched,
so a webhook Twilio retries does not act twice (see ``service_layer/take_phone_call.py``).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from pymongo.asynchronous.collection import AsyncCollection

from aftercare.intake.adapters.claims import claim


@dataclass(frozen=True)
class CallRecord:
    incident_id: str
    opens: bool  # this call opens its own incident (else it updates the caller's open one)
    applied: frozenset[str]


class PhoneCalls:
    def __init__(self, collection: AsyncCollection[dict[str, Any]]) -> None:
        self._calls = collection

    @staticmethod
    def _id(tenant_id: str, call_sid: str) -> str:
        return f"{tenant_id}|{call_sid}"

    @staticmethod
    def _record(document: dict[str, Any]) -> CallRecord:
        applied = set(document.get("applied", []))
        if document["opens"]:
            # The request that opened the incident put its content into the description.
            applied.add(document["first_piece"])
        return CallRecord(str(document["incident_id"]), bool(document["opens"]), frozenset(applied))

    async def find(self, tenant_id: str, call_sid: str) -> CallRecord | None:
        document = await self._calls.find_one({"_id": self._id(tenant_id, call_sid)})
        return self._record(document) if document else None

    async def claim(
        self, tenant_id: str, call_sid: str, *, caller: str, first_piece: str, incident_id: str, opens: bool
    ) -> CallRecord:
        """Record the call's incident unless a concurrent request (a retry) did; returns the winner."""
        stored, _ = await claim(
            self._calls,
            {
                "_id": self._id(tenant_id, call_sid),
                "tenant_id": tenant_id,
                "call_sid": call_sid,
                "caller": caller,
                "incident_id": incident_id,
                "opens": opens,
                "first_piece": first_piece,
                "applied": [],
                "at": datetime.now(UTC),
            },
        )
        return self._record(stored)

    async def point_to(self, tenant_id: str, call_sid: str, incident_id: str) -> None:
        # The call now updates someone else's incident: it no longer "opens" one.
        await self._calls.update_one(
            {"_id": self._id(tenant_id, call_sid)}, {"$set": {"incident_id": incident_id, "opens": False}}
        )

    async def mark_applied(self, tenant_id: str, call_sid: str, piece: str) -> None:
        await self._calls.update_one({"_id": self._id(tenant_id, call_sid)}, {"$addToSet": {"applied": piece}})
