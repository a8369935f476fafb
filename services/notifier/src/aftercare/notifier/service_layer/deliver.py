"""Use case: send the deliveries that are due, record every attempt, announce the outcome.

Run only by the instance holding the delivery lease (``entrypoints/scheduled.py``). Each delivery
is claimed at its channel's point of no return (see ``domain/delivery.py``), then recorded with
its outcome and the event announcing it in one write (outbox), then published.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

import structlog
from prometheus_client import Counter

from aftercare.events import outbox
from aftercare.events.envelope import Event, envelope_for
from aftercare.events.notifications import NotificationFailed, NotificationSent
from aftercare.events.outbox import OutboxRelay
from aftercare.events.tenant_copy import TenantCopy
from aftercare.events.tenants import NotificationChannel, TenantUpserted
from aftercare.notifier.adapters.store import Store
from aftercare.notifier.adapters.templates import MessageTemplates, RenderedMessage
from aftercare.notifier.domain.delivery import (
    DUE_STATES,
    DeliveryState,
    RetryPolicy,
    SendError,
    after_failure,
    after_lost_claim,
)

log = structlog.stdlib.get_logger("aftercare.notifier.deliver")

NOTIFICATIONS = Counter(
    "aftercare_notifications_total", "Notification attempts by channel and outcome.", ["channel", "outcome"]
)

Claim = Callable[[], Awaitable[bool]]

# At most this many handed-over deliveries wait for the next round; beyond, the oldest are left
# to the due query (they are stored, so nothing is lost).
HANDED_OVER_AT_MOST = 1000


class ChannelSender(Protocol):
    async def send(
        self, delivery: dict[str, Any], message: RenderedMessage, tenant: TenantUpserted | None, claim: Claim
    ) -> bool:
        """Deliver; False if ``claim`` declined. Raises ``SendError`` when the channel refused."""
        ...


class DeliveryWorker:
    def __init__(
        self,
        store: Store,
        tenants: TenantCopy,
        templates: MessageTemplates,
        senders: dict[NotificationChannel, ChannelSender],
        relay: OutboxRelay,
        retry: RetryPolicy,
        sending_lease: timedelta,
        concurrency: int = 8,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self._store = store
        self._tenants = tenants
        self._templates = templates
        self._senders = senders
        self._relay = relay
        self._retry = retry
        self._lease = sending_lease
        self._slots = asyncio.Semaphore(concurrency)
        self._clock = clock
        self._next_recovery = datetime.min.replace(tzinfo=UTC)  # at once when the job starts here
        self._handed_over: deque[dict[str, Any]] = deque(maxlen=HANDED_OVER_AT_MOST)

    def hand_over(self, delivery: dict[str, Any]) -> None:
        """``delivery`` was just stored by this process and is due now: the next round sends it
        from here instead of finding it with the due query (a store round trip on the way to
        every customer's first email). Only a shortcut: if this process does not hold the
        delivery lease, or stops first, the stored delivery is found by the due query like any
        other, and its claim (a conditional write) keeps it from going out twice."""
        self._handed_over.append(delivery)

    def take_handed_over(self) -> list[dict[str, Any]]:
        handed = list(self._handed_over)
        self._handed_over.clear()
        return handed

    async def send_handed_over(
        self, deliveries: list[dict[str, Any]], still_held: Callable[[], Awaitable[bool]] | None = None
    ) -> int:
        """Attempt deliveries handed over by the planner (``hand_over``); returns how many."""
        await asyncio.gather(*(self._attempt(document, still_held) for document in deliveries))
        return len(deliveries)

    async def run_due(self, limit: int = 200, still_held: Callable[[], Awaitable[bool]] | None = None) -> int:
        """Send what is due now; returns how many deliveries were taken up. ``still_held`` is
        asked before each delivery: once it says no, the round sends nothing more."""
        now = self._clock()
        due = [
            document
            async for document in self._store.deliveries.find(
                {"state": {"$in": [state.value for state in DUE_STATES]}, "due_at": {"$lte": now}, "digest": False}
            )
            .sort("due_at", 1)
            .limit(limit)
        ]
        await asyncio.gather(*(self._attempt(document, still_held) for document in due))
        return len(due)

    async def _attempt(self, delivery: dict[str, Any], still_held: Callable[[], Awaitable[bool]] | None) -> None:
        async with self._slots:
            try:
                if still_held is not None and not await still_held():
                    return  # the lease went to another instance: it sends this one
                await self.attempt(delivery)
            except Exception:  # one broken delivery must not stop the others; it stays due
                log.exception("delivery attempt crashed", delivery=delivery["_id"])

    async def attempt(self, delivery: dict[str, Any]) -> None:
        channel = NotificationChannel(delivery["channel"])
        sender = self._senders.get(channel)
        # The tenant is read only for an email planned before deliveries carried their Reply-To.
        needs_tenant = channel is NotificationChannel.EMAIL and "reply_to" not in delivery
        tenant = await self._tenants.get(delivery["tenant_id"]) if needs_tenant else None
        attempt_no = delivery["attempt_count"] + 1
        started = self._clock()

        async def claim() -> bool:
            result = await self._store.deliveries.update_one(
                {"_id": delivery["_id"], "state": delivery["state"], "attempt_count": delivery["attempt_count"]},
                {
                    "$set": {
                        "state": DeliveryState.SENDING.value,
                        "claimed_at": self._clock(),
                        "claimed_until": self._clock() + self._lease,
                        "attempt_count": attempt_no,
                    }
                },
            )
            return result.modified_count == 1

        try:
            if sender is None:
                raise SendError(f"no {channel.value} channel is configured on this notifier", permanent=True)
            message = self._templates.render(
                delivery["kind"], delivery["language"], delivery["context"], delivery.get("subject")
            )
            if not await sender.send(delivery, message, tenant, claim):
                return  # another instance claimed it first
        except SendError as error:
            await self._failed(delivery, channel, attempt_no, started, error)
            return
        await self._record(
            delivery,
            DeliveryState.SENT,
            attempt_no,
            {"at": started, "attempt": attempt_no, "outcome": "sent", "detail": ""},
            NotificationSent(
                notification_id=delivery["_id"],
                incident_id=delivery.get("incident_id"),
                channel=channel,
                recipient=delivery["recipient"],
                template=delivery["kind"],
                about_event_id=delivery["about_event_id"],
            ),
            extra={"sent_at": self._clock()},
        )
        NOTIFICATIONS.labels(channel=channel.value, outcome="sent").inc()

    async def _failed(
        self,
        delivery: dict[str, Any],
        channel: NotificationChannel,
        attempt_no: int,
        started: datetime,
        error: SendError,
    ) -> None:
        if error.ambiguous and channel is not NotificationChannel.WEBHOOK:
            # May have arrived: never sent twice automatically (see domain/delivery.py).
            state: DeliveryState = DeliveryState.UNCONFIRMED
            due_at, will_retry = None, False
        else:
            # Webhooks go again with the same webhook-id, after the same backoff as any failure.
            outcome = after_failure(error, attempt_no, self._clock(), self._retry)
            state, due_at, will_retry = outcome.state, outcome.due_at, outcome.will_retry
        event = None
        if state in (DeliveryState.FAILED, DeliveryState.UNCONFIRMED):
            event = NotificationFailed(
                notification_id=delivery["_id"],
                incident_id=delivery.get("incident_id"),
                channel=channel,
                recipient=delivery["recipient"],
                template=delivery["kind"],
                about_event_id=delivery["about_event_id"],
                error=error.detail if state is DeliveryState.FAILED else f"outcome unknown: {error.detail}",
                attempts=attempt_no,
                will_retry=False,
            )
        extra: dict[str, Any] = {"last_error": error.detail}
        if due_at is not None:
            extra["due_at"] = due_at
        await self._record(
            delivery,
            state,
            attempt_no,
            {"at": started, "attempt": attempt_no, "outcome": state.value, "detail": error.detail},
            event,
            extra=extra,
        )
        NOTIFICATIONS.labels(channel=channel.value, outcome=state.value).inc()
        log.warning(
            "delivery attempt failed",
            delivery=delivery["_id"],
            channel=channel.value,
            attempt=attempt_no,
            state=state.value,
            will_retry=will_retry,
            error=error.detail,
        )

    async def _record(
        self,
        delivery: dict[str, Any],
        state: DeliveryState,
        attempt_no: int,
        attempt: dict[str, Any],
        event: Event | None,
        extra: dict[str, Any] | None = None,
    ) -> None:
        update: dict[str, Any] = {
            "$set": {"state": state.value, "attempt_count": attempt_no, **(extra or {})},
            "$push": {"attempts": attempt},
            "$unset": {"claimed_until": ""},
        }
        entries: list[dict[str, Any]] = []
        if event is not None:
            envelope = envelope_for(
                event, source="notifier", tenant_id=delivery["tenant_id"], incident_id=delivery.get("incident_id")
            )
            entries = [outbox.stored(envelope)]
            update = outbox.add_entries_to_update(update, entries)
        await self._store.deliveries.update_one({"_id": delivery["_id"]}, update)
        if not entries:
            return
        if delivery.get(outbox.FIELD):
            # An earlier attempt's event is still waiting there: publish everything, in order.
            await self._relay.flush(self._store.deliveries, delivery["_id"])
        else:
            # The usual case: publish the entry just written without reading the document again.
            await self._relay.flush_entries(self._store.deliveries, delivery["_id"], entries)

    async def recover_lost_claims_when_due(self, now: datetime) -> int:
        """``recover_lost_claims`` at most every quarter of the sending lease (a claim is lost
        only once that lease ran out), not in every round: it is a scan of the deliveries."""
        if now < self._next_recovery:
            return 0
        self._next_recovery = now + min(self._lease / 4, timedelta(seconds=5))
        return await self.recover_lost_claims()

    async def recover_lost_claims(self) -> int:
        """Deliveries whose claim outlived its lease: their process died at or after the point of
        no return. Email and SMS become ``unconfirmed`` (never sent twice automatically); webhooks
        go again with the same webhook-id (receivers deduplicate on it)."""
        now = self._clock()
        count = 0
        async for delivery in self._store.deliveries.find(
            {"state": DeliveryState.SENDING.value, "claimed_until": {"$lt": now}}
        ):
            channel = NotificationChannel(delivery["channel"])
            state = after_lost_claim(channel)
            detail = "the notifier stopped after handing the message over; it may or may not have arrived"
            event = None
            if state is DeliveryState.UNCONFIRMED:
                event = NotificationFailed(
                    notification_id=delivery["_id"],
                    incident_id=delivery.get("incident_id"),
                    channel=channel,
                    recipient=delivery["recipient"],
                    template=delivery["kind"],
                    about_event_id=delivery["about_event_id"],
                    error=f"outcome unknown: {detail}",
                    attempts=max(1, delivery["attempt_count"]),
                    will_retry=False,
                )
            await self._record(
                delivery,
                state,
                delivery["attempt_count"],
                {"at": now, "attempt": delivery["attempt_count"], "outcome": "lost-claim", "detail": detail},
                event,
                extra={"due_at": now} if state is DeliveryState.PENDING else {"last_error": detail},
            )
            count += 1
            log.warning("delivery claim lost with its process", delivery=delivery["_id"], now_state=state.value)
        return count

    async def resend(self, key: str) -> bool:
        """An operator's decision to send an unconfirmed or failed delivery again (same key,
        same Message-ID / webhook-id)."""
        result = await self._store.deliveries.update_one(
            {"_id": key, "state": {"$in": [DeliveryState.UNCONFIRMED.value, DeliveryState.FAILED.value]}},
            {"$set": {"state": DeliveryState.PENDING.value, "due_at": self._clock(), "resent_by_operator": True}},
        )
        return result.modified_count == 1
