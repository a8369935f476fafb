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
