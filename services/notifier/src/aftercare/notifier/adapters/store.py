"""The notifier's own database: collections, indexes, and the delivery job's single-instance
lease (the platform's ``Leases``). Periodic updates and digests are the platform's stored due
times (``runtime.due_times``, collection ``due_times``).

Collections:
* ``tenants`` — the tenant copy (``aftercare.events.tenant_copy``);
* ``deliveries`` — one document per notice x contact address x channel, ``_id`` the idempotency
  key; its state, due time, every attempt, and the outbox of the events announcing it;
* ``subscriptions`` — per tenant contact: channels, events, quiet hours, language, webhook;
* ``throttle`` — when the last progress update per incident x address x channel was due;
* ``incidents`` — the dashboard's read model, built only from events;
* ``advisories`` — published advisories and the tenants they matched;
* ``leases``, ``lease_claims`` — which instance runs the single-instance jobs (platform's ``Leases``);
* ``waiting_notices`` — notices whose tenant event has not arrived yet;
* ``chat_webhooks`` — operators' chat rooms (Slack/Teams incoming webhooks), by name;
* ``target_latency`` — each diagnostic target's latest probes, for the dashboard's sparklines.
"""

from __future__ import annotations

import contextlib
from datetime import UTC, datetime
from typing import Any

from pymongo.asynchronous.database import AsyncDatabase

from aftercare.events.outbox import OutboxRelay
from aftercare.events.schedule import Leases


class Store:
    def __init__(self, database: AsyncDatabase[dict[str, Any]]) -> None:
        self.db = database
        self.deliveries = database["deliveries"]
        self.subscriptions = database["subscriptions"]
        self.throttle = database["throttle"]
        self.incidents = database["incidents"]
        self.advisories = database["advisories"]
        self.leases = database["leases"]
        self.waiting_notices = database["waiting_notices"]
        self.chat_webhooks = database["chat_webhooks"]
        self.target_latency = database["target_latency"]

    async def ensure_indexes(self) -> None:
        await self.deliveries.create_index([("state", 1), ("due_at", 1)])
        await self.deliveries.create_index("incident_id")
        await OutboxRelay.ensure_indexes(self.deliveries)
        await OutboxRelay.ensure_indexes(self.advisories)
        await self.subscriptions.create_index("tenant_id")
        await self.throttle.create_index("incident_id")
        await self.incidents.create_index("tenant_id")
        await self.waiting_notices.create_index("tenant_id")
        await self.target_latency.create_index("tenant_id")


class DeliveryLease:
    """The delivery job's single-instance lease: the platform's ``Leases`` (a takeover is decided
    by a unique claim insert, so exactly one instance wins even on the embedded store, whose
    conditional updates are not atomic), asked of the store only once a third of the period is
    used up, so a busy delivery loop does not pay two store round trips per round for it."""

    def __init__(self, leases: Leases, name: str = "delivery-job") -> None:
        self._leases = leases
        self.name = name
        self._expires_at: datetime | None = None

    async def hold(self, now: datetime) -> bool:
        """Take or renew the lease when due; True if this instance holds it now."""
        if self._expires_at is not None and self._expires_at - now > self._leases.period * 2 / 3:
            return True
        ours, _ = await self._leases.acquire(self.name, now)
        self._expires_at = ours.expires_at if ours is not None else None
        return ours is not None

    async def release(self) -> None:
        if self._expires_at is None:
            return
        self._expires_at = None
        with contextlib.suppress(Exception):
            await self._leases.release(self.name, datetime.now(UTC))
