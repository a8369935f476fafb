"""Every event type the system knows, how to read old versions, and how to parse a message.

A breaking change to a payload bumps its ``VERSION`` and adds an upcaster here from the old
version's dict to the new one (``UPCASTERS[("incident.reported", 1)] = upcast_v1_v2``), so
events already on Kafka stay readable. Consumers always see the latest version.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from pydantic import ValidationError

from aftercare.events.envelope import Envelope, Event
from aftercare.events.incidents import (
    IncidentAcknowledged,
    IncidentClosed,
    IncidentReopened,
    IncidentReported,
    IncidentResolved,
    IncidentUpdated,
)
from aftercare.events.notifications import (
    AdvisoryPublished,
    NotificationFailed,
    NotificationRequested,
    NotificationSent,
)
from aftercare.events.remediation import (
    ApprovalGranted,
    ApprovalRejected,
    ApprovalRequested,
    IncidentEscalated,
    RemediationFailed,
    RemediationStarted,
    RemediationStepCompleted,
    RemediationSucceeded,
)
from aftercare.events.tenants import TenantUpserted
from aftercare.events.triage import DiagnosisCompleted, IncidentTriaged

EVENT_MODELS: tuple[type[Event], ...] = (
    TenantUpserted,
    IncidentReported,
    IncidentUpdated,
    IncidentAcknowledged,
    IncidentResolved,
    IncidentReopened,
    IncidentClosed,
    IncidentTriaged,
    DiagnosisCompleted,
    RemediationStarted,
    RemediationStepCompleted,
    ApprovalRequested,
    ApprovalGranted,
    ApprovalRejected,
    RemediationSucceeded,
    RemediationFailed,
    IncidentEscalated,
    NotificationRequested,
    NotificationSent,
    NotificationFailed,
    AdvisoryPublished,
)

EVENT_TYPES: dict[str, type[Event]] = {model.TYPE: model for model in EVENT_MODELS}

Upcaster = Callable[[dict[str, Any]], dict[str, Any]]

# (type, from_version) -> function turning that version's payload into the next version's.
UPCASTERS: dict[tuple[str, int], Upcaster] = {}


class EventRejected(ValueError):
    """A message that can never be handled as it is; it belongs on the dead-letter topic."""


class UnknownEventType(EventRejected):
    pass


class InvalidEvent(EventRejected):
    pass


def upcast(event_type: str, version: int, payload: dict[str, Any]) -> dict[str, Any]:
    """Bring an old payload up to the current version of its type."""
    model = EVENT_TYPES[event_type]
    while version < model.VERSION:
        step = UPCASTERS.get((event_type, version))
        if step is None:
            raise InvalidEvent(f"no upcaster from {event_type} v{version} to v{version + 1}")
        payload = step(payload)
        version += 1
    return payload


def parse_envelope(raw: bytes | str) -> Envelope[Event]:
    """Parse a Kafka message value into an envelope holding the latest version of its event.

    Raises ``UnknownEventType`` or ``InvalidEvent`` (both ``EventRejected``) with a message that
    says what is wrong; such a message is dead-lettered, never retried.
    """
    try:
        document = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise InvalidEvent(f"message value is not JSON: {error}") from None
    if not isinstance(document, dict):
        raise InvalidEvent("message value must be a JSON object (an event envelope)")
    event_type = document.get("type")
    if not isinstance(event_type, str) or event_type not in EVENT_TYPES:
        raise UnknownEventType(f"unknown event type {event_type!r}")
    model = EVENT_TYPES[event_type]
    version = document.get("version")
    if not isinstance(version, int) or version < 1:
        raise InvalidEvent(f"{event_type}: 'version' must be a positive integer, got {version!r}")
    if version > model.VERSION:
        raise InvalidEvent(
            f"{event_type} v{version} is newer than this service knows (v{model.VERSION}); "
            "deploy the newer aftercare-events"
        )
    data = document.get("data")
    if not isinstance(data, dict):
        raise InvalidEvent(f"{event_type}: 'data' must be a JSON object")
    if version < model.VERSION:
        document = {**document, "data": upcast(event_type, version, data), "version": model.VERSION}
    try:
        return Envelope[model].model_validate(document)  # type: ignore[valid-type]
    except ValidationError as error:
        raise InvalidEvent(f"{event_type} v{version} failed validation: {error}") from None


def serialize(envelope: Envelope[Any]) -> bytes:
    """The bytes put on Kafka for an envelope."""
    return envelope.model_dump_json().encode()
