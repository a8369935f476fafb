"""Use case: an event arrives -> the read model learns it -> the notices it calls for are planned
(who, which channel, when) and stored as deliveries, once per idempotency key."""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import structlog
from pymongo.errors import DuplicateKeyError

from aftercare.events.envelope import Envelope
from aftercare.events.incidents import IncidentClosed, IncidentReopened, IncidentReported, IncidentResolved
from aftercare.events.schedule import DueItem, DueTimes
from aftercare.events.tenant_copy import TenantCopy
from aftercare.events.tenants import NotificationChannel, Priority, TenantUpserted
from aftercare.events.triage import IncidentTriaged
from aftercare.notifier.adapters.read_model import IncidentReadModel
from aftercare.notifier.adapters.store import Store
from aftercare.notifier.domain.chat import ChatWebhook, chat_deliveries
from aftercare.notifier.domain.delivery import DeliveryState
from aftercare.notifier.domain.incident_view import is_open
from aftercare.notifier.domain.notices import THROTTLED_KINDS, Notice, NoticeKind, notice_for, pages_for
from aftercare.notifier.domain.preferences import Policy, Subscription, plan, throttle_key
from aftercare.notifier.settings import NotifierSettings

log = structlog.stdlib.get_logger("aftercare.notifier.notify")

PERIODIC_UPDATE = "periodic-update"
# Subscriptions and chat rooms are read once per this many seconds, not for every notice (two
# scans of the store each): a change made through another instance counts here after it at
# the latest; one made through this instance counts at once (``forget_*``).
SETTINGS_SEEN_SECONDS = 2.0
DIGEST = "digest"


@dataclass
class Links:
    portal_base_url: str
    public_base_url: str

    def incident(self, tenant: TenantUpserted | None, incident_id: str | None) -> str:
        slug = tenant.status_page_slug if tenant else None
        if slug and incident_id:
            return f"{self.portal_base_url.rstrip('/')}/portal/{slug}/incidents/{incident_id}"
        return self.status_page(tenant)

    def status_page(self, tenant: TenantUpserted | None) -> str:
        slug = tenant.status_page_slug if tenant else None
        return f"{self.public_base_url.rstrip('/')}/status/{slug}" if slug else self.public_base_url


class NotificationPlanner:
    def __init__(
        self,
        store: Store,
        tenants: TenantCopy,
        read_model: IncidentReadModel,
        settings: NotifierSettings,
        wake_delivery: asyncio.Event,
        due_times: DueTimes,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        hand_over: Callable[[dict[str, Any]], None] = lambda delivery: None,
    ) -> None:
        self._store = store
        self._tenants = tenants
        self.read_model = read_model
        self._settings = settings
        self._due = due_times  # the platform's stored due times (runtime.due_times)
        self._wake = wake_delivery
        # Deliveries due at once go to this process's delivery job directly (DeliveryWorker.hand_over).
        self._hand_over = hand_over
        self._clock = clock
        self.links = Links(settings.portal_base_url, settings.public_base_url)
        self._subscriptions_seen: dict[str, tuple[float, dict[str, Subscription]]] = {}
        self._tenants_seen: dict[str, tuple[float, TenantUpserted]] = {}
        # Incidents whose periodic update this process knows is not scheduled (cancelled, or
        # never scheduled): every later event of a resolved incident (its notifications sent,
        # its steps) used to cost a delete of a due time that was not there. An incident's events
        # come to one instance at a time (its key), so this copy is the one that matters; a new
        # owner after a rebalance starts empty and cancels once.
        self._no_periodic_update: OrderedDict[str, None] = OrderedDict()
        self._rooms_seen: tuple[float, dict[str, ChatWebhook]] | None = None
        self.policy = Policy(
            throttle_minutes=settings.throttle_minutes,
            digest_every=timedelta(minutes=settings.digest_interval_minutes),
        )

    async def on_event(self, envelope: Envelope[Any]) -> None:
        """Handler for every incident, triage, remediation and notification-request event."""
        if isinstance(envelope.data, IncidentReported):
            # The report's "received" needs nothing from the read model (its number and title
            # are in the event; no priority yet), so it is planned while the read model is
            # written: one store write fewer on the way to the customer's first email.
            received = notice_for(envelope, None)
            planned = self.store_notice(received) if received is not None else asyncio.sleep(0)
            view, _ = await asyncio.gather(self.read_model.apply(envelope), planned)
        else:
            view = await self.read_model.apply(envelope)
            notice = notice_for(envelope, view)
            if notice is not None:
                await self.store_notice(notice)
        for page in pages_for(envelope, view):
            await self.store_notice(page)
        await self._keep_periodic_updates(envelope, view)

    async def on_tenant(self, envelope: Envelope[TenantUpserted]) -> None:
        """Keep the tenant copy, then plan the notices that waited for this tenant."""
        await self._tenants.apply(envelope)
        self._tenants_seen.pop(envelope.data.tenant_id, None)
        async for document in self._store.waiting_notices.find({"tenant_id": envelope.data.tenant_id}):
            await self.store_notice(notice_from_document(document["notice"]))
            await self._store.waiting_notices.delete_one({"_id": document["_id"]})

    async def on_read_model_only(self, envelope: Envelope[Any]) -> None:
        """Handler for events that only go on the dashboard (steps, approvals, notifications)."""
        await self.read_model.apply(envelope)

    async def store_notice(self, notice: Notice) -> int:
        """Plan ``notice``'s deliveries and store the new ones; returns how many were new."""
        now = self._clock()
        tenant = await self._tenant(notice.tenant_id)
        if tenant is None and notice.recipient is None:
            # The tenant travels on another topic and may arrive later (a fresh notifier reads
            # everything from the start): park the notice until it does (see ``on_tenant``).
            await self._store.waiting_notices.update_one(
                {"_id": notice.notice_id},
                {"$set": {"tenant_id": notice.tenant_id, "notice": notice_to_document(notice), "at": now}},
                upsert=True,
            )
            # The runner handles the tenants topic concurrently with the incidents: the tenant may
            # have arrived, and ``on_tenant`` scanned the waiting notices, while this one was being
            # parked. Look again after parking; planning a notice twice is harmless (deliveries
            # are keyed), leaving it parked would lose it.
            tenant = await self._tenants.get(notice.tenant_id)
            if tenant is None:
                log.info("notice waits for its tenant", tenant_id=notice.tenant_id, notice=notice.notice_id)
                return 0
            await self._store.waiting_notices.delete_one({"_id": notice.notice_id})
        contacts = list(tenant.contacts) if tenant else []
        subscriptions = await self._subscriptions_of(notice.tenant_id)
        throttled: dict[str, datetime] = {}
        if notice.kind in THROTTLED_KINDS and notice.incident_id:
            async for document in self._store.throttle.find({"incident_id": notice.incident_id}):
                throttled[document["_id"]] = document["last_due"]
        digest_at = next_digest(now, self.policy.digest_every)
        planned = plan(notice, contacts, subscriptions, now, throttled, digest_at, self.policy)
        contact_names = {c.email or c.phone or c.name: c.name for c in contacts}
        reply_to = tenant.inbound_emails[0] if tenant and tenant.inbound_emails else None
        new = 0
        for delivery in planned:
            context = notice.context | {
                "status_url": self.links.incident(tenant, notice.incident_id),
                "status_page_url": self.links.status_page(tenant),
                "tenant_name": tenant.name if tenant else "",
                # A page names the on-call person it was sent to; others are the tenant's contacts.
                "contact_name": notice.context.get("contact_name")
                or next(
                    (name for address, name in contact_names.items() if address.lower() == delivery.contact),
                    delivery.recipient.split("@")[0],
                ),
            }
            document = {
                "_id": delivery.key,
                "tenant_id": notice.tenant_id,
                "incident_id": notice.incident_id,
                "notice_id": notice.notice_id,
                "about_event_id": notice.about_event_id,
                "kind": notice.kind.value,
                "priority": notice.priority.value if notice.priority else None,
                "channel": delivery.channel.value,
                "recipient": delivery.recipient,
                "contact": delivery.contact,
                "language": delivery.language,
                "context": context,
                "subject": notice.subject,
                "in_reply_to": notice.in_reply_to,
                # Replies join the incident at intake; kept here so sending needs no tenant read.
                "reply_to": reply_to,
                "state": DeliveryState.PENDING.value,
                "due_at": delivery.due_at,
                "held_reason": delivery.held_reason,
                "digest": delivery.digest,
                "attempt_count": 0,
                "attempts": [],
                "created_at": now,
            }
            try:
                await self._store.deliveries.insert_one(document)
            except DuplicateKeyError:
                continue  # planned before: a redelivered event, or intake's ack already took it
            new += 1
            if not delivery.digest and delivery.due_at <= now:
                self._hand_over(document)
            if notice.kind in THROTTLED_KINDS and notice.incident_id:
                await self._store.throttle.update_one(
                    {"_id": throttle_key(notice, delivery.recipient, delivery.channel)},
                    {"$set": {"incident_id": notice.incident_id}, "$max": {"last_due": delivery.due_at}},
                    upsert=True,
                )
            if delivery.digest:
                # The key names the slot: scheduling it again for the next delivery changes nothing.
                await self._due.schedule(
                    f"digest|{notice.tenant_id}|{delivery.channel.value}|{delivery.recipient.lower()}|{digest_at.isoformat()}",
                    digest_at,
                    DIGEST,
                    {"tenant_id": notice.tenant_id, "channel": delivery.channel.value, "recipient": delivery.recipient},
                )
        new += await self._store_chat_deliveries(notice, tenant, now)
        if new:
            log.info("deliveries planned", kind=notice.kind.value, new=new, incident_id=notice.incident_id)
            self._wake.set()
        return new

    async def _store_chat_deliveries(self, notice: Notice, tenant: TenantUpserted | None, now: datetime) -> int:
        """The operators' chat rooms that want ``notice`` (domain/chat.py); sent at once."""
        rooms = await self._chat_rooms()
        new = 0
        for key, name, url in chat_deliveries(notice, rooms):
            document: dict[str, Any] = {
                "_id": key,
                "tenant_id": notice.tenant_id,
                "incident_id": notice.incident_id,
                "notice_id": notice.notice_id,
                "about_event_id": notice.about_event_id,
                "kind": notice.kind.value,
                "priority": notice.priority.value if notice.priority else None,
                "channel": NotificationChannel.CHAT.value,
                "chat_format": rooms[name].format.value,
                "recipient": url,
                "contact": f"chat:{name}",
                "language": "en",
                "context": notice.context
                | {
                    "status_url": self.links.incident(tenant, notice.incident_id),
                    "status_page_url": self.links.status_page(tenant),
                    "tenant_name": tenant.name if tenant else "",
                    "contact_name": name,
                },
                "subject": notice.subject,
                "in_reply_to": None,
                "state": DeliveryState.PENDING.value,
                "due_at": now,
                "held_reason": None,
                "digest": False,
                "attempt_count": 0,
                "attempts": [],
                "created_at": now,
            }
            try:
                await self._store.deliveries.insert_one(document)
            except DuplicateKeyError:
                continue
            new += 1
            self._hand_over(document)
        return new

    # --- subscriptions and chat rooms, read at most every SETTINGS_SEEN_SECONDS ----------------

    async def _subscriptions_of(self, tenant_id: str) -> dict[str, Subscription]:
        seen = self._subscriptions_seen.get(tenant_id)
        if seen is not None and time.monotonic() - seen[0] < SETTINGS_SEEN_SECONDS:
            return seen[1]
        subscriptions = {
            document["contact"]: Subscription.model_validate(document["subscription"])
            async for document in self._store.subscriptions.find({"tenant_id": tenant_id})
        }
        if len(self._subscriptions_seen) >= 10_000:
            self._subscriptions_seen.clear()
        self._subscriptions_seen[tenant_id] = (time.monotonic(), subscriptions)
        return subscriptions

    async def _tenant(self, tenant_id: str) -> TenantUpserted | None:
        # Read at most every SETTINGS_SEEN_SECONDS per tenant (every notice asks); a tenant that
        # arrives through this instance's consumer counts at once (on_tenant). Not found is never
        # kept: a notice for a tenant not known yet parks and looks again (store_notice).
        seen = self._tenants_seen.get(tenant_id)
        if seen is not None and time.monotonic() - seen[0] < SETTINGS_SEEN_SECONDS:
            return seen[1]
        tenant = await self._tenants.get(tenant_id)
        if tenant is not None:
            if len(self._tenants_seen) >= 10_000:
                self._tenants_seen.clear()
            self._tenants_seen[tenant_id] = (time.monotonic(), tenant)
        return tenant

    async def _chat_rooms(self) -> dict[str, ChatWebhook]:
        if self._rooms_seen is not None and time.monotonic() - self._rooms_seen[0] < SETTINGS_SEEN_SECONDS:
            return self._rooms_seen[1]
        rooms = {
            document["_id"]: ChatWebhook.model_validate(document["room"])
            async for document in self._store.chat_webhooks.find({})
        }
        self._rooms_seen = (time.monotonic(), rooms)
        return rooms

    def forget_subscriptions(self, tenant_id: str) -> None:
        """A contact's subscription changed through this instance: the next notice reads it."""
        self._subscriptions_seen.pop(tenant_id, None)

    def forget_chat_rooms(self) -> None:
        """A chat room changed through this instance: the next notice reads the rooms."""
        self._rooms_seen = None

    # --- periodic updates while a P1/P2 is open ------------------------------------------------

    def update_interval(self, priority: str | None) -> timedelta | None:
        if priority == Priority.P1.value:
            return timedelta(minutes=self._settings.periodic_update_minutes_p1)
        if priority == Priority.P2.value:
            return timedelta(minutes=self._settings.periodic_update_minutes_p2)
        return None

    async def _keep_periodic_updates(self, envelope: Envelope[Any], view: dict[str, Any] | None) -> None:
        incident_id = envelope.incident_id
        if incident_id is None or view is None:
            return
        key = f"{PERIODIC_UPDATE}|{incident_id}"
        if isinstance(envelope.data, IncidentResolved | IncidentClosed) or not is_open(view):
            await self._cancel_periodic_update(incident_id, key)
            return
        if isinstance(envelope.data, IncidentTriaged | IncidentReopened):
            interval = self.update_interval(view.get("priority"))
            if interval is None:
                await self._cancel_periodic_update(incident_id, key)
            else:
                self._no_periodic_update.pop(incident_id, None)
                await self._due.schedule(key, self._clock() + interval, PERIODIC_UPDATE, {"incident_id": incident_id})

    async def _cancel_periodic_update(self, incident_id: str, key: str) -> None:
        if incident_id in self._no_periodic_update:
            return
        await self._due.cancel(key)
        self._no_periodic_update[incident_id] = None
        if len(self._no_periodic_update) > 10_000:
            self._no_periodic_update.popitem(last=False)

    async def fire_periodic_update(self, item: DueItem) -> None:
        """A P1/P2 incident's update is due: tell its contacts it is still being worked on.
        Fired at least once (runtime.due_times): a second firing plans the same notice (its id
        names the due time), so nobody hears it twice."""
        incident_id = item.payload["incident_id"]
        view = await self.read_model.get(incident_id)
        interval = self.update_interval((view or {}).get("priority"))
        if view is None or not is_open(view) or interval is None:
            return
        notice = Notice(
            kind=NoticeKind.PERIODIC,
            notice_id=f"{incident_id}:update:{item.due_at.isoformat()}",
            tenant_id=view["tenant_id"],
            incident_id=incident_id,
            about_event_id=item.key,
            priority=Priority(view["priority"]),
            context={
                "number": view.get("number") or "",
                "title": view.get("title") or "",
                "priority": view["priority"],
                "status": view.get("status") or "",
            },
        )
        await self.store_notice(notice)
        await self._due.schedule(item.key, item.due_at + interval, PERIODIC_UPDATE, item.payload)


def next_digest(now: datetime, every: timedelta) -> datetime:
    """Digests go out on a fixed grid (every ``every`` since the epoch), so all instances agree."""
    step = every.total_seconds()
    epoch = datetime(1970, 1, 1, tzinfo=UTC)
    slots = int((now - epoch).total_seconds() // step) + 1
    return epoch + timedelta(seconds=slots * step)


def notice_to_document(notice: Notice) -> dict[str, Any]:
    document = dataclasses.asdict(notice)
    document["kind"] = notice.kind.value
    document["priority"] = notice.priority.value if notice.priority else None
    return document


def notice_from_document(document: dict[str, Any]) -> Notice:
    fields = dict(document)
    fields["kind"] = NoticeKind(fields["kind"])
    fields["priority"] = Priority(fields["priority"]) if fields.get("priority") else None
    return Notice(**fields)
