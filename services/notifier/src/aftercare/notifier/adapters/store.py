"""The notifier's own database: collections, indexes, and the small stored mechanisms (the
single-instance lease, stored due times) the use cases build on.

Collections:
* ``tenants`` — the tenant copy (``aftercare.events.tenant_copy``);
* ``deliveries`` — one document per notice x contact address x channel, ``_id`` the idempotency
  key; its state, due time, every attempt, and the outbox of the events announcing it;
* ``subscriptions`` — per tenant contact: channels, events, quiet hours, language, webhook;
* ``throttle`` — when the last progress update per incident x address x channel was due;
* ``timers`` — stored due times (periodic updates of open P1/P2, digests, webhook retries);
* ``incidents`` — the dashboard's read model, built only from events;
* ``advisories`` — published advisories and the tenants they matched;
* ``leases`` — which instance runs the single-instance jobs;
* ``waiting_notices`` — notices whose tenant event has not arrived yet;
* ``chat_webhooks`` — operators' chat rooms (Slack/Teams incoming webhooks), by name.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
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
        self.timers = database["timers"]
        self.incidents = database["incidents"]
        self.advisories = database["advisories"]
        self.leases = database["leases"]
        self.waiting_notices = database["waiting_notices"]
        self.chat_webhooks = database["chat_webhooks"]

    async def ensure_indexes(self) -> None:
        await self.deliveries.create_index([("state", 1), ("due_at", 1)])
        await self.deliveries.create_index("incident_id")
        await OutboxRelay.ensure_indexes(self.deliveries)
        await OutboxRelay.ensure_indexes(self.advisories)
        await self.subscriptions.create_index("tenant_id")
        await self.throttle.create_index("incident_id")
        await self.timers.create_index("due_at")
        await self.incidents.create_index("tenant_id")
        await self.waiting_notices.create_index("tenant_id")


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


class DueTimes:
    """Stored due times: upsert by key, cancel by key, fetch what is due. Fired by the leased job."""

    def __init__(self, store: Store) -> None:
        self._timers = store.timers

    async def schedule(self, key: str, kind: str, due_at: datetime, payload: dict[str, Any]) -> None:
        await self._timers.update_one(
            {"_id": key}, {"$set": {"kind": kind, "due_at": due_at, "payload": payload}}, upsert=True
        )

    async def schedule_if_absent(self, key: str, kind: str, due_at: datetime, payload: dict[str, Any]) -> None:
        with contextlib.suppress(DuplicateKeyError):
            await self._timers.insert_one({"_id": key, "kind": kind, "due_at": due_at, "payload": payload})

    async def cancel(self, key: str) -> None:
        await self._timers.delete_one({"_id": key})

    async def due(self, now: datetime, limit: int = 100) -> AsyncIterator[dict[str, Any]]:
        async for timer in self._timers.find({"due_at": {"$lte": now}}).sort("due_at", 1).limit(limit):
            yield timer

    async def done(self, timer: dict[str, Any]) -> None:
        """Remove a fired timer unless it was rescheduled meanwhile."""
        await self._timers.delete_one({"_id": timer["_id"], "due_at": timer["due_at"]})
