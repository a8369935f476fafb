"""Use case: an operator publishes an advisory; tenants whose systems match are told through their
preferred channels and see it on their status page."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

from aftercare.events import outbox
from aftercare.events.envelope import envelope_for
from aftercare.events.notifications import AdvisoryPublished
from aftercare.events.outbox import OutboxRelay
from aftercare.events.tenants import TenantUpserted
from aftercare.notifier.adapters.store import Store
from aftercare.notifier.domain.advisories import affected, parse_range
from aftercare.notifier.domain.notices import Notice, NoticeKind
from aftercare.notifier.service_layer.notify import NotificationPlanner

ADVISORY_SOURCE_TENANT = "_advisories"


async def publish_advisory(
    store: Store,
    planner: NotificationPlanner,
    relay: OutboxRelay,
    *,
    title: str,
    product: str,
    affected_versions: str,
    severity: str,
    kind: str,
    text: str,
    cve: str | None,
    published_by: str,
) -> dict[str, Any]:
    versions = parse_range(affected_versions)
    matches: dict[str, list[str]] = {}
    async for document in store.db["tenants"].find({}):
        fields = {key: value for key, value in document.items() if key in TenantUpserted.model_fields}
        tenant = TenantUpserted.model_validate(fields)
        matching = affected(list(tenant.systems), product, versions)
        if matching and tenant.active:
            matches[tenant.tenant_id] = [system.name for system in matching]
    advisory_id = f"adv-{uuid.uuid4().hex[:12]}"
    event = AdvisoryPublished(
        advisory_id=advisory_id,
        title=title,
        product=product,
        affected_versions=str(versions),
        severity=severity,
        kind=kind,
        text=text,
        cve=cve,
        published_by=published_by,
        affected_tenants=sorted(matches),
    )
    envelope = envelope_for(event, source="notifier", tenant_id=ADVISORY_SOURCE_TENANT)
    document = event.model_dump(mode="json") | {"affected_systems": matches, "published_at": datetime.now(UTC)}
    await store.advisories.update_one(
        {"_id": advisory_id}, outbox.add_to_update({"$set": document}, envelope), upsert=True
    )
    await relay.flush(store.advisories, advisory_id)
    for tenant_id, names in matches.items():
        await planner.store_notice(
            Notice(
                kind=NoticeKind.ADVISORY,
                notice_id=f"advisory:{advisory_id}",
                tenant_id=tenant_id,
                incident_id=None,
                about_event_id=envelope.id,
                context={
                    "advisory_title": title,
                    "product": product,
                    "affected_versions": str(versions),
                    "severity": severity,
                    "cve": cve or "",
                    "text": text,
                    "system": ", ".join(names),
                },
            )
        )
    return document | {"_id": advisory_id}
