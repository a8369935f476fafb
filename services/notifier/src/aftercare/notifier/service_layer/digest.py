"""Use case: the digest for low priorities. Deliveries planned as ``digest`` wait until their
contact's digest is due, then go out together as one message and are marked ``digested``."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime

import structlog

from aftercare.events.schedule import DueItem
from aftercare.events.tenant_copy import TenantCopy
from aftercare.events.tenants import NotificationChannel
from aftercare.notifier.adapters.store import Store
from aftercare.notifier.adapters.templates import MessageTemplates
from aftercare.notifier.domain.delivery import DeliveryState, SendError
from aftercare.notifier.domain.preferences import delivery_key
from aftercare.notifier.service_layer.deliver import ChannelSender

log = structlog.stdlib.get_logger("aftercare.notifier.digest")


class Digests:
    def __init__(
        self,
        store: Store,
        tenants: TenantCopy,
        templates: MessageTemplates,
        senders: dict[NotificationChannel, ChannelSender],
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self._store = store
        self._tenants = tenants
        self._templates = templates
        self._senders = senders
        self._clock = clock

    async def send(self, item: DueItem) -> None:
        """The digest slot ``item`` (a stored due time, runtime.due_times) has come."""
        payload = item.payload
        channel = NotificationChannel(payload["channel"])
        waiting = [
            document
            async for document in self._store.deliveries.find(
                {
                    "tenant_id": payload["tenant_id"],
                    "recipient": payload["recipient"],
                    "channel": channel.value,
                    "digest": True,
                    "state": DeliveryState.PENDING.value,
                }
            )
        ]
        if not waiting:
            return
        tenant = await self._tenants.get(payload["tenant_id"])
        items = []
        for document in sorted(waiting, key=lambda d: d["created_at"]):
            rendered = self._templates.render(document["kind"], document["language"], document["context"])
            items.append({"subject": rendered.subject, "status_url": document["context"].get("status_url", "")})
        first = waiting[0]
        context = dict(first["context"]) | {"count": str(len(items)), "items": items}
        message = self._templates.render("digest", first["language"], context)
        key = delivery_key(f"digest:{item.key}", payload["recipient"], channel)
        digest_delivery = {
            "_id": key,
            "tenant_id": payload["tenant_id"],
            "incident_id": None,
            "recipient": payload["recipient"],
            "kind": "digest",
        }
        sender = self._senders.get(channel)
        if sender is None:
            raise SendError(f"no {channel.value} channel configured", permanent=True)

        async def always() -> bool:
            return True

        await sender.send(digest_delivery, message, tenant, always)
        now = self._clock()
        for document in waiting:
            await self._store.deliveries.update_one(
                {"_id": document["_id"]},
                {
                    "$set": {"state": DeliveryState.DIGESTED.value, "sent_at": now, "digest_id": key},
                    "$push": {"attempts": {"at": now, "attempt": 1, "outcome": "digested", "detail": key}},
                },
            )
        log.info("digest sent", recipient=payload["recipient"], items=len(items))
