"""Who hears about a notice, on which channel, and when: subscriptions, quiet hours, throttling
and the digest for low priorities. Pure: the current time and the stored state are passed in."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import datetime, time, timedelta
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import BaseModel, ConfigDict, Field, field_validator

from aftercare.events.tenants import Contact, NotificationChannel, Priority
from aftercare.notifier.domain.notices import DIRECT_KINDS, THROTTLED_KINDS, URGENT_KINDS, Notice, NoticeKind

CUSTOMER_CHANNELS = (NotificationChannel.EMAIL, NotificationChannel.SMS, NotificationChannel.WEBHOOK)


class QuietHours(BaseModel):
    """A daily window in the contact's own time zone when only urgent messages go out."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    start: time = Field(description="Local time the quiet window starts, e.g. '22:00'.")
    end: time = Field(description="Local time it ends, e.g. '07:00' (may be on the next day).")
    time_zone: str = Field(default="UTC", description="IANA time zone, e.g. 'Europe/Berlin'.")

    @field_validator("time_zone")
    @classmethod
    def _known_zone(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"unknown time zone {value!r}; use an IANA name such as 'Europe/Berlin'") from None
        return value

    def contains(self, moment: datetime) -> bool:
        local = moment.astimezone(ZoneInfo(self.time_zone)).time()
        if self.start <= self.end:
            return self.start <= local < self.end
        return local >= self.start or local < self.end

    def ends_after(self, moment: datetime) -> datetime:
        """The first moment after ``moment`` when the window is over."""
        zone = ZoneInfo(self.time_zone)
        local = moment.astimezone(zone)
        candidate = datetime.combine(local.date(), self.end, tzinfo=zone)
        if candidate <= local:
            candidate = datetime.combine(local.date() + timedelta(days=1), self.end, tzinfo=zone)
        return candidate.astimezone(moment.tzinfo)


class Subscription(BaseModel):
    """What one tenant contact wants, stored by the notifier (the tenant event has the defaults)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    channels: list[NotificationChannel] | None = Field(
        default=None, description="Channels to use; default: the contact's preferred channels, else email."
    )
    events: list[NoticeKind] | None = Field(default=None, description="Messages wanted; default: all.")
    language: str | None = Field(default=None, description="Overrides the contact's language.")
    quiet_hours: QuietHours | None = None
    throttle_minutes: int | None = Field(default=None, ge=0, le=24 * 60)
    digest_priorities: list[Priority] = Field(
        default_factory=lambda: [Priority.P4],
        description="Priorities collected into a digest instead of sent one by one.",
    )
    webhook_url: str | None = None
    # The secret itself is stored beside the subscription, never in it (it is shown once).


@dataclass(frozen=True)
class PlannedDelivery:
    """One message to one address on one channel, and when it may go."""

    key: str
    channel: NotificationChannel
    recipient: str
    contact: str
    language: str
    due_at: datetime
    held_reason: str | None = None  # "quiet-hours", "throttled" or "digest"
    digest: bool = False


def delivery_key(notice_id: str, recipient: str, channel: NotificationChannel) -> str:
    """The idempotency key of a delivery: notice x contact address x channel. A redelivered event
    plans the same key and finds the delivery there already."""
    raw = f"{notice_id}|{recipient.strip().lower()}|{channel.value}"
    return hashlib.sha256(raw.encode()).hexdigest()[:32]


def contact_key(contact: Contact) -> str:
    return (contact.email or contact.phone or contact.name).strip().lower()


def address_of(contact: Contact, channel: NotificationChannel, subscription: Subscription | None) -> str | None:
    if channel is NotificationChannel.EMAIL:
        return contact.email
    if channel is NotificationChannel.SMS:
        return contact.phone
    if channel is NotificationChannel.WEBHOOK:
        return subscription.webhook_url if subscription else None
    return None


def channels_for(contact: Contact, subscription: Subscription | None) -> list[NotificationChannel]:
    if subscription is not None and subscription.channels is not None:
        chosen = subscription.channels
    elif contact.preferred_channels:
        chosen = contact.preferred_channels
    else:
        chosen = [NotificationChannel.EMAIL]
    return [channel for channel in chosen if channel in CUSTOMER_CHANNELS]


@dataclass(frozen=True)
class Policy:
    """Deployment-wide defaults a subscription may override."""

    throttle_minutes: int = 15
    digest_every: timedelta = timedelta(hours=24)


def plan(
    notice: Notice,
    contacts: list[Contact],
    subscriptions: dict[str, Subscription],
    now: datetime,
    last_progress_due: dict[str, datetime],
    next_digest_at: datetime,
    policy: Policy | None = None,
) -> list[PlannedDelivery]:
    """Every delivery ``notice`` calls for.

    ``last_progress_due`` maps a delivery's throttle key (``throttle_key``) to when the last
    progress update on it was due; ``next_digest_at`` is when the contact's next digest goes.
    """
    policy = policy or Policy()
    if notice.recipient is not None:
        # Addressed to one person (intake's acknowledgement to whoever wrote): at once, by email.
        channel = NotificationChannel.EMAIL
        return [
            PlannedDelivery(
                key=delivery_key(notice.notice_id, notice.recipient, channel),
                channel=channel,
                recipient=notice.recipient,
                contact=notice.recipient.lower(),
                language=notice.language or "en",
                due_at=now,
            )
        ]
    planned: list[PlannedDelivery] = []
    for contact in contacts:
        subscription = subscriptions.get(contact_key(contact))
        if subscription is not None and subscription.events is not None and notice.kind not in subscription.events:
            continue
        if notice.priority is not None and notice.priority not in contact.notify_on and notice.kind not in DIRECT_KINDS:
            continue
        language = (subscription.language if subscription else None) or contact.language
        for channel in channels_for(contact, subscription):
            address = address_of(contact, channel, subscription)
            if not address:
                continue
            if (
                channel is NotificationChannel.EMAIL
                and notice.acknowledged_by_intake is not None
                and address.strip().lower() == notice.acknowledged_by_intake.strip().lower()
            ):
                continue  # intake's acknowledgement is this address's message (see Notice)
            key = delivery_key(notice.notice_id, address, channel)
            due, reason, digest = _when(
                notice,
                subscription,
                now,
                last_progress_due.get(throttle_key(notice, address, channel)),
                next_digest_at,
                policy,
            )
            planned.append(
                PlannedDelivery(
                    key=key,
                    channel=channel,
                    recipient=address,
                    contact=contact_key(contact),
                    language=language,
                    due_at=due,
                    held_reason=reason,
                    digest=digest,
                )
            )
    return planned


def throttle_key(notice: Notice, address: str, channel: NotificationChannel) -> str:
    return f"{notice.incident_id}|{address.strip().lower()}|{channel.value}"


def _when(
    notice: Notice,
    subscription: Subscription | None,
    now: datetime,
    last_progress_due: datetime | None,
    next_digest_at: datetime,
    policy: Policy,
) -> tuple[datetime, str | None, bool]:
    urgent = notice.kind in URGENT_KINDS or notice.priority is Priority.P1
    digest_priorities = subscription.digest_priorities if subscription else [Priority.P4]
    if (
        not urgent
        and notice.priority is not None
        and notice.priority in digest_priorities
        and notice.kind is not NoticeKind.ADVISORY
    ):
        return next_digest_at, "digest", True
    due, reason = now, None
    if notice.kind in THROTTLED_KINDS and last_progress_due is not None:
        minutes = subscription.throttle_minutes if subscription and subscription.throttle_minutes is not None else None
        window = timedelta(minutes=policy.throttle_minutes if minutes is None else minutes)
        if last_progress_due + window > due:
            due, reason = last_progress_due + window, "throttled"
    quiet = subscription.quiet_hours if subscription else None
    if not urgent and quiet is not None and quiet.contains(due):
        due, reason = quiet.ends_after(due), "quiet-hours"
    return due, reason, False
