"""What planning notices costs in store round trips.

In the 2,000-incident fault run the notifier was the whole system's bottleneck. Every later
event of a resolved incident (each notification sent about it, each remediation step) deleted a
periodic-update due time that was not there. Every notice read the tenant's copy from the store.
Now a cancelled due time is cancelled once, and a tenant is read at most once every
SETTINGS_SEEN_SECONDS; a tenant that changes arrives through on_tenant and counts at once.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from datetime import UTC, datetime
from typing import Any

from aftercare.events.envelope import Envelope, envelope_for
from aftercare.events.incidents import Channel, IncidentReported, IncidentResolved
from aftercare.events.notifications import NotificationSent
from aftercare.events.schedule import DueTimes
from aftercare.events.tenant_copy import TenantCopy
from aftercare.events.tenants import Contact, ContractTier, NotificationChannel, TenantUpserted
from aftercare.events.testing import MemoryDatabase
from aftercare.notifier.adapters.read_model import IncidentReadModel
from aftercare.notifier.adapters.store import Store
from aftercare.notifier.service_layer.notify import NotificationPlanner
from aftercare.notifier.settings import NotifierSettings

T0 = datetime(2026, 12, 1, 3, 0, tzinfo=UTC)


def acme(contact_email: str = "dana@acme.example") -> Envelope[TenantUpserted]:
    tenant = TenantUpserted(
        tenant_id="acme",
        name="Acme",
        tier=ContractTier(name="gold"),
        contacts=[Contact(name="Dana", email=contact_email)],
    )
    return envelope_for(tenant, source="test", tenant_id="acme")


def incident_event(data: Any) -> Envelope[Any]:
    return envelope_for(data, source="test", tenant_id="acme", incident_id="i-1")


async def a_planner(database: MemoryDatabase) -> tuple[NotificationPlanner, Store]:
    db: Any = database
    store = Store(db)
    planner = NotificationPlanner(
        store,
        TenantCopy(db),
        IncidentReadModel(store.incidents),
        NotifierSettings(),
        asyncio.Event(),
        DueTimes(db),
        clock=lambda: T0,
    )
    await planner.on_tenant(acme())
    return planner, store


def count(collection: Any, operation: str, counts: Counter[str]) -> None:
    original = getattr(collection, operation)

    async def counted(*args: Any, **kwargs: Any) -> Any:
        counts[f"{collection.name}.{operation}"] += 1
        return await original(*args, **kwargs)

    setattr(collection, operation, counted)


async def test_a_resolved_incidents_later_events_cancel_its_periodic_update_once() -> None:
    database = MemoryDatabase()
    planner, _ = await a_planner(database)
    counts: Counter[str] = Counter()
    count(database["due_times"], "delete_one", counts)

    await planner.on_event(
        incident_event(
            IncidentReported(
                incident_id="i-1", number="INC-1", title="billing is down", channel=Channel.API, reported_at=T0
            )
        )
    )
    await planner.on_event(incident_event(IncidentResolved(incident_id="i-1", number="INC-1", by="remediation")))
    for n in range(5):  # the "resolved" e-mails and webhooks that follow, each an event
        await planner.on_event(
            incident_event(
                NotificationSent(
                    notification_id=f"d-{n}",
                    incident_id="i-1",
                    channel=NotificationChannel.EMAIL,
                    recipient="dana@acme.example",
                    template="incident-resolved",
                    about_event_id="e-1",
                )
            )
        )

    assert counts["due_times.delete_one"] == 1


async def test_the_tenant_is_read_once_for_many_notices_and_a_change_counts_at_once() -> None:
    database = MemoryDatabase()
    planner, _ = await a_planner(database)
    counts: Counter[str] = Counter()
    count(database["tenants"], "find_one", counts)

    for n in range(5):
        await planner.on_event(
            envelope_for(
                IncidentReported(
                    incident_id=f"i-{n}", number=f"INC-{n}", title="printer jam", channel=Channel.API, reported_at=T0
                ),
                source="test",
                tenant_id="acme",
                incident_id=f"i-{n}",
            )
        )
    assert counts["tenants.find_one"] == 1

    await planner.on_tenant(acme("erin@acme.example"))  # the contact changed
    await planner.on_event(
        envelope_for(
            IncidentReported(
                incident_id="i-9", number="INC-9", title="printer jam", channel=Channel.API, reported_at=T0
            ),
            source="test",
            tenant_id="acme",
            incident_id="i-9",
        )
    )
    recipients = {d["recipient"] for d in database["deliveries"].documents.values() if d["incident_id"] == "i-9"}
    assert recipients == {"erin@acme.example"}
