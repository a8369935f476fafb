"""The parts an intake request or message uses, built once the store and Kafka are connected."""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

from aftercare.events.runtime import ServiceRuntime
from aftercare.intake.adapters.attachments import AttachmentStore
from aftercare.intake.adapters.change_log import ChangeLog
from aftercare.intake.adapters.idempotency_keys import IdempotencyKeys
from aftercare.intake.adapters.incident_store import IncidentStore
from aftercare.intake.adapters.phone_calls import PhoneCalls
from aftercare.intake.adapters.rate_limit import RateLimiter
from aftercare.intake.adapters.tenant_registry import TenantRegistry
from aftercare.intake.settings import IntakeSettings


@dataclass
class IntakeComponents:
    settings: IntakeSettings
    incidents: IncidentStore
    tenants: TenantRegistry
    limiter: RateLimiter
    attachments: AttachmentStore

    # Built once: a pymongo collection object per request was ~1 % of intake's CPU per report.
    @cached_property
    def idempotency_keys(self) -> IdempotencyKeys:
        return IdempotencyKeys(self.incidents.database)

    @cached_property
    def changes(self) -> ChangeLog:
        return ChangeLog(self.incidents.database)

    @cached_property
    def phone_calls(self) -> PhoneCalls:
        return PhoneCalls(self.incidents.database["phone_calls"])

    @classmethod
    def build(cls, runtime: ServiceRuntime, settings: IntakeSettings) -> IntakeComponents:
        producer = runtime.require_producer()
        return cls(
            settings=settings,
            incidents=IncidentStore(runtime.db, producer),
            tenants=TenantRegistry(runtime.db, producer, cache_seconds=settings.credential_cache_seconds),
            limiter=RateLimiter(runtime.db, settings.rate_limit_per_minute),
            attachments=AttachmentStore(runtime.db, settings.max_attachment_bytes),
        )

    async def ensure_indexes(self) -> None:
        await self.incidents.ensure_indexes()
        await self.tenants.ensure_indexes()
        await self.limiter.ensure_indexes()
        await self.attachments.ensure_indexes()
        await self.changes.ensure_indexes()
