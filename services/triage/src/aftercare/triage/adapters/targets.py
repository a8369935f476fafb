"""Registered diagnostic targets, who probed which period, and 24 hours of probe history.

``diagnostic_targets``: ``_id`` ``<tenant>|<system>``; the target as the tenant registered it, the
tenant's allow-list, and the health kept between probes (failures in a row, latency baseline,
the open problem) with the ProblemDetected/ProblemCleared events in its outbox.
``probe_claims``: ``_id`` ``<target id>|<period number>``, inserted by whoever probes that period:
the unique ``_id`` makes sure two triage instances never probe one target twice in a period.
``probe_history``: ``_id`` ``<target id>|<hour>``, the samples of one hour, pushed as they come.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict
from datetime import UTC, datetime, timedelta
from typing import Any

from pymongo.asynchronous.collection import AsyncCollection
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import DuplicateKeyError

from aftercare.events import outbox
from aftercare.events.envelope import Envelope
from aftercare.events.outbox import OutboxRelay
from aftercare.events.tenants import TenantUpserted
from aftercare.events.triage import ProbeResult
from aftercare.triage.domain.diagnosis import OpenProblem, TargetHealth

DEFAULT_INTERVAL_S = 60
HISTORY_HOURS = 24


def target_id(tenant_id: str, system: str) -> str:
    return f"{tenant_id}|{system}"


def health_document(health: TargetHealth) -> dict[str, Any]:
    document = asdict(health)
    return document


def health_of(document: dict[str, Any]) -> TargetHealth:
    stored = document.get("health") or {}
    problem = stored.get("problem")
    return TargetHealth(
        failures=stored.get("failures", 0),
        slow=stored.get("slow", 0),
        successes=stored.get("successes", 0),
        baseline_ms=stored.get("baseline_ms"),
        samples=stored.get("samples", 0),
        problem=OpenProblem(problem["incident_id"], problem["kind"], problem["since"]) if problem else None,
    )


class TargetStore:
    def __init__(self, database: AsyncDatabase[dict[str, Any]], relay: OutboxRelay) -> None:
        self.targets: AsyncCollection[dict[str, Any]] = database["diagnostic_targets"]
        self.claims: AsyncCollection[dict[str, Any]] = database["probe_claims"]
        self.history: AsyncCollection[dict[str, Any]] = database["probe_history"]
        self.relay = relay

    async def ensure_indexes(self) -> None:
        await OutboxRelay.ensure_indexes(self.targets)

    async def sync_tenant(self, tenant: TenantUpserted) -> None:
        """Register the tenant's systems that have a diagnostic target; drop those gone."""
        wanted: dict[str, dict[str, Any]] = {}
        if tenant.active:
            for system in tenant.systems:
                if system.diagnostic_target is None:
                    continue
                target = system.diagnostic_target
                wanted[target_id(tenant.tenant_id, system.name)] = {
                    "tenant_id": tenant.tenant_id,
                    "system": system.name,
                    "target": target.model_dump(mode="json"),
                    "interval_s": target.interval_seconds or DEFAULT_INTERVAL_S,
                    "allowlist": list(tenant.probe_allowlist),
                }
        for identifier, fields in wanted.items():
            await self.targets.update_one({"_id": identifier}, {"$set": fields}, upsert=True)
        async for document in self.targets.find({"tenant_id": tenant.tenant_id}, {"_id": 1}):
            if document["_id"] not in wanted:
                await self.targets.delete_one({"_id": document["_id"]})

    async def all(self) -> list[dict[str, Any]]:
        return [document async for document in self.targets.find({}, {outbox.FIELD: 0})]

    async def get(self, identifier: str) -> dict[str, Any] | None:
        return await self.targets.find_one({"_id": identifier}, {outbox.FIELD: 0})

    async def claim(self, identifier: str, period: int, instance: str, now: datetime) -> bool:
        """True for the one caller that may probe ``identifier`` in ``period``."""
        try:
            await self.claims.insert_one({"_id": f"{identifier}|{period}", "by": instance, "at": now})
        except DuplicateKeyError:
            return False
        return True

    async def purge_claims(self, before: datetime) -> int:
        result = await self.claims.delete_many({"at": {"$lt": before}})
        return result.deleted_count

    async def record(
        self, identifier: str, health: TargetHealth, result: ProbeResult, *events: Envelope[Any], flush_now: bool = True
    ) -> None:
        """The target's new health (and the events it causes) in one write; then the sample.

        ``flush_now`` False leaves the events to the outbox sweep (latency samples: not urgent).
        """
        update = {"$set": {"health": health_document(health), "last": result.model_dump(mode="json")}}
        await self.targets.update_one({"_id": identifier}, outbox.add_to_update(update, *events))
        if events and flush_now:
            await self.relay.flush(self.targets, identifier)
        at = result.at or datetime.now(UTC)
        hour = int(at.timestamp() // 3600)
        sample = {"at": at, "status": result.status, "latency_ms": result.latency_ms, "detail": result.detail[:200]}
        outcome = await self.history.update_one(
            {"_id": f"{identifier}|{hour}"}, {"$push": {"samples": sample}, "$setOnInsert": {"hour": hour}}, upsert=True
        )
        if outcome.upserted_id is not None:
            # A new hour began for this target: the hour that fell out of the 24 h goes.
            await self.history.delete_one({"_id": f"{identifier}|{hour - HISTORY_HOURS - 1}"})

    async def samples(self, identifier: str, now: datetime, hours: int = HISTORY_HOURS) -> list[dict[str, Any]]:
        since = now - timedelta(hours=hours)
        current = int(now.timestamp() // 3600)
        found: list[dict[str, Any]] = []
        for hour in range(current - hours, current + 1):
            document = await self.history.find_one({"_id": f"{identifier}|{hour}"})
            if document:
                found.extend(sample for sample in document.get("samples", []) if sample["at"] >= since)
        return found

    async def delete_history(self, identifiers: Sequence[str]) -> None:
        for identifier in identifiers:
            await self.history.delete_many({"_id": {"$regex": f"^{identifier}\\|"}})
