"""The notifier's own database: collections, indexes, and the delivery job's single-instance
lease. Periodic updates and digests are the platform's stored due times (``runtime.due_times``,
collection ``due_times``).

Collections:
* ``tenants`` — the tenant copy (``aftercare.events.tenant_copy``);
* ``deliveries`` — one document per notice x contact address x channel, ``_id`` the idempotency
  key; its state, due time, every attempt, and the outbox of the events announcing it;
* ``subscriptions`` — per tenant contact: channels, events, quiet hours, language, webhook;
* ``throttle`` — when the last progress update per incident x address x channel was due;
* ``incidents`` — the dashboard's read model, built only from events;
* ``advisories`` — published advisories and the tenants they matched;
* ``leases`` — which instance runs the single-instance jobs;
* ``waiting_notices`` — notices whose tenant event has not arrived yet;
* ``chat_webhooks`` — operators' chat rooms (Slack/Teams incoming webhooks), by name;
* ``target_latency`` — each diagnostic target's latest probes, for the dashboard's sparklines.
"""

from __future__ import annotations

import contextlib
from datetime import datetime, timedelta
from typing import Any

from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import DuplicateKeyError

from aftercare.events.outbox import OutboxRelay


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


class Lease:
    """One holder at a time for a named job, renewed while it runs; taken over when it lapses."""

    def __init__(self, store: Store, name: str, holder: str, ttl: timedelta) -> None:
        self._leases = store.leases
        self.name = name
        self.holder = holder
        self._ttl = ttl

    async def hold(self, now: datetime) -> bool:
        """Take or renew the lease; True if this instance holds it now."""
        try:
            result = await self._leases.update_one(
                {"_id": self.name, "$or": [{"holder": self.holder}, {"until": {"$lt": now}}]},
                {"$set": {"holder": self.holder, "until": now + self._ttl}},
                upsert=True,
            )
        except DuplicateKeyError:
            return False  # someone else holds it: the filter missed and the upsert collided
        return result.matched_count == 1 or result.upserted_id is not None

    async def release(self) -> None:
        with contextlib.suppress(Exception):
            await self._leases.delete_one({"_id": self.name, "holder": self.holder})
