"""Notification events: what the notifier told whom, and what it could not deliver."""

from __future__ import annotations

from datetime import datetime

from pydantic import Field

from aftercare.events import topics
from aftercare.events.envelope import Event
from aftercare.events.tenants import NotificationChannel


class NotificationSent(Event):
    TYPE = "notification.sent"
    VERSION = 1
    TOPIC = topics.NOTIFICATIONS

    notification_id: str
    incident_id: str | None = None
    channel: NotificationChannel
    recipient: str
    template: str
    about_event_id: str = Field(description="The event the customer was told about.")


class NotificationFailed(Event):
    TYPE = "notification.failed"
    VERSION = 1
    TOPIC = topics.NOTIFICATIONS

    notification_id: str
    incident_id: str | None = None
    channel: NotificationChannel
    recipient: str
    template: str
    about_event_id: str
    error: str
    attempts: int = Field(ge=1)
    will_retry: bool = False
    next_attempt_at: datetime | None = Field(default=None, description="When the next attempt is due, if any.")


class NotificationRequested(Event):
    """A service asks the notifier to send a customer a specific message (e.g. the
    acknowledgement with the incident number that intake owes the sender of an email)."""

    TYPE = "notification.requested"
    VERSION = 1
    TOPIC = topics.NOTIFICATIONS

    notification_id: str = Field(description="Unique per message; the notifier sends each id once.")
    incident_id: str | None = None
    channel: NotificationChannel
    recipient: str
    template: str = Field(description="e.g. 'incident-received'")
    language: str = "en"
    subject: str | None = None
    in_reply_to: str | None = Field(default=None, description="Email Message-ID this answers, to keep the thread.")
    context: dict[str, str] = Field(default_factory=dict, description="Values the template needs.")


class AdvisoryPublished(Event):
    """An operator published a known-error or vulnerability advisory; tenants whose systems run the
    product at a matching version hear about it and see it on their status page."""

    TYPE = "advisory.published"
    VERSION = 1
    TOPIC = topics.NOTIFICATIONS

    advisory_id: str
    title: str
    product: str = Field(description="Product name, compared case-insensitively with a system's product.")
    affected_versions: str = Field(description="PEP 440 specifier set, e.g. '>=2.0,<2.4.3'.")
    severity: str = Field(description="'critical', 'high', 'medium' or 'low'.")
    kind: str = Field(default="vulnerability", description="'vulnerability' or 'known-error'.")
    text: str = ""
    cve: str | None = None
    published_by: str
    affected_tenants: list[str] = Field(default_factory=list, description="Tenants whose systems matched.")
