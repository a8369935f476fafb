"""Notification events: what the notifier told whom, and what it could not deliver."""

from __future__ import annotations

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
