"""The events remediation reacts to, and which handler does what with each."""

from __future__ import annotations

from aftercare.events import topics
from aftercare.events.consumer import HandlerTable
from aftercare.events.runtime import ServiceRuntime
from aftercare.events.tenant_copy import TenantCopy
from aftercare.events.tenants import TenantUpserted

CONSUMER_GROUP = "remediation"
TOPICS = [topics.TRIAGE, topics.TENANTS]


def handlers(runtime: ServiceRuntime) -> HandlerTable:
    tenants = TenantCopy(runtime.db)
    return {
        TenantUpserted: [tenants.apply],
    }
