"""What sending one delivery costs in store round trips, and that its events keep their order.

The e-mail rate is bound by store round trips (docs/status/notifier.md): recording a sent
delivery publishes its NotificationSent from the entry it has just written, without reading the
delivery back first. Only when an earlier attempt's event still waits in the delivery's outbox
is the whole outbox read and published, oldest first.
"""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime, timedelta
from typing import Any

from aftercare.events.envelope import envelope_for
from aftercare.events.notifications import NotificationFailed
from aftercare.events.outbox import OutboxRelay, stored
from aftercare.events.tenant_copy import TenantCopy
from aftercare.events.tenants import NotificationChannel, TenantUpserted
from aftercare.events.testing import MemoryBus, MemoryDatabase
from aftercare.notifier.adapters.store import Store
from aftercare.notifier.adapters.templates import RenderedMessage
from aftercare.notifier.domain.delivery import RetryPolicy
from aftercare.notifier.service_layer.deliver import Claim, DeliveryWorker

T0 = datetime(2026, 12, 1, 3, 0, tzinfo=UTC)


class PlainTemplates:
    def render(self, kind: str, language: str, context: dict[str, Any], subject: str | None = None) -> RenderedMessage:
        return RenderedMessage(subject=subject or kind, text="text", html="<p>html</p>", sms="sms")


class AcceptingRelay:
    """An SMTP relay that takes every message once the delivery is claimed."""

    def __init__(self) -> None:
        self.sent: list[str] = []

    async def send(
        self, delivery: dict[str, Any], message: RenderedMessage, tenant: TenantUpserted | None, claim: Claim
    ) -> bool:
        if not await claim():
            return False
        self.sent.append(delivery["_id"])
        return True


def a_delivery(key: str) -> dict[str, Any]:
    return {
        "_id": key,
        "tenant_id": "acme",
        "incident_id": "i-1",
        "notice_id": "n-1",
        "about_event_id": "e-1",
        "kind": "incident-received",
        "channel": NotificationChannel.EMAIL.value,
        "recipient": "dana@acme.example",
        "contact": "dana@acme.example",
        "language": "en",
        "context": {},
        "subject": "We received your report",
        "reply_to": "help@acme.example",
        "state": "pending",
        "due_at": T0,
        "digest": False,
        "attempt_count": 0,
        "attempts": [],
    }


def a_worker(database: MemoryDatabase, bus: MemoryBus) -> tuple[DeliveryWorker, Store, AcceptingRelay]:
    db: Any = database
    store = Store(db)
    relay = AcceptingRelay()
    worker = DeliveryWorker(
        store,
        TenantCopy(db),
        PlainTemplates(),  # type: ignore[arg-type]
        {NotificationChannel.EMAIL: relay},
        OutboxRelay(bus),  # type: ignore[arg-type]
        RetryPolicy(),
        timedelta(minutes=5),
        clock=lambda: T0,
    )
    return worker, store, relay


def count_reads(collection: Any, counts: Counter[str]) -> None:
    """Count the service's find_one calls (the fake's find_one_and_update calls its own)."""
    original_find_one, original_find_and_update = collection.find_one, collection.find_one_and_update
    inside = [0]

    async def counted(*args: Any, **kwargs: Any) -> Any:
        if not inside[0]:
            counts["find_one"] += 1
        return await original_find_one(*args, **kwargs)

    async def find_and_update(*args: Any, **kwargs: Any) -> Any:
        inside[0] += 1
        try:
            return await original_find_and_update(*args, **kwargs)
        finally:
            inside[0] -= 1

    collection.find_one = counted
    collection.find_one_and_update = find_and_update


async def test_a_sent_delivery_publishes_its_event_without_reading_the_delivery_again() -> None:
    database, bus = MemoryDatabase(), MemoryBus()
    worker, store, relay = a_worker(database, bus)
    await store.deliveries.insert_one(a_delivery("d-1"))
    counts: Counter[str] = Counter()
    count_reads(store.deliveries, counts)

    assert await worker.run_due() == 1

    assert relay.sent == ["d-1"]
    assert [event.type for event in bus.published] == ["notification.sent"]
    document = database["deliveries"].documents["d-1"]
    assert document["state"] == "sent" and not document.get("outbox")
    assert counts["find_one"] == 0  # one read fewer per notification than a general flush


async def test_an_earlier_attempts_waiting_event_goes_out_first() -> None:
    database, bus = MemoryDatabase(), MemoryBus()
    worker, store, relay = a_worker(database, bus)
    # The first attempt failed and its NotificationFailed could not be published (Kafka down).
    earlier = envelope_for(
        NotificationFailed(
            notification_id="d-1",
            incident_id="i-1",
            channel=NotificationChannel.EMAIL,
            recipient="dana@acme.example",
            template="incident-received",
            about_event_id="e-1",
            error="relay refused: 451 try later",
            attempts=1,
            will_retry=True,
        ),
        source="notifier",
        tenant_id="acme",
        incident_id="i-1",
    )
    waiting = a_delivery("d-1") | {"state": "retrying", "attempt_count": 1, "outbox": [stored(earlier)]}
    await store.deliveries.insert_one(waiting | {"outbox_pending": True})

    assert await worker.run_due() == 1

    assert relay.sent == ["d-1"]
    assert [event.type for event in bus.published] == ["notification.failed", "notification.sent"]
    assert bus.published[0].id == earlier.id
    assert not database["deliveries"].documents["d-1"].get("outbox")
