"""Every event type the system knows, how to read old versions, and how to parse a message.

How events evolve (the rule, also in ``libs/events/README.md``):

* **Additive changes keep the version**: a new optional field (with a default) may be added to a
  payload at any time. Reading tolerates fields it does not know (``parse_envelope`` validates
  with ``extra="ignore"``), so a consumer on older code reads events of newer publishers and
  simply does not see the new field. Building an event stays strict (the models forbid unknown
  fields), so a typo in a producer is an error, not a silently dropped field.
* **Anything else is a new version**: removing or renaming a field, making one required,
  changing its type or meaning. Bump the model's ``VERSION`` and register an upcaster here from
  the old version's payload dict to the new one (``UPCASTERS[("incident.reported", 1)] =
  upcast_v1_v2``), so events already on Kafka stay readable. Consumers always see the latest
  version.
* One frozen sample payload per event type and version lives under
  ``tests/unit/event_samples/``; a test parses (and upcasts) each one, so a change that breaks
  old events fails there first.

A consumer that meets a version newer than its code knows dead-letters it with a message that
names the version to deploy (``NewerVersionThanKnown``); after deploying, replay it with
``aftercare dead-letters replay``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from pydantic import ValidationError
from pydantic_core import from_json

from aftercare.events.envelope import Envelope, Event
from aftercare.events.incidents import (
    IncidentAcknowledged,
    IncidentClosed,
    IncidentReclassified,
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
from aftercare.events.operators import OperatorRemoved, OperatorUpserted
from aftercare.events.remediation import (
    ApprovalGranted,
    ApprovalRejected,
    ApprovalRequested,
    EscalationAcknowledged,
    IncidentEscalated,
    RemediationFailed,
    RemediationNoteAdded,
    RemediationStarted,
    RemediationStepCompleted,
    RemediationSucceeded,
)
from aftercare.events.tenants import TenantUpserted
from aftercare.events.triage import (
    DiagnosisCompleted,
    IncidentGrouped,
    IncidentTriaged,
    ProblemCleared,
    ProblemDetected,
    TargetProbed,
)

EVENT_MODELS: tuple[type[Event], ...] = (
    TenantUpserted,
    OperatorUpserted,
    OperatorRemoved,
    IncidentReported,
    IncidentUpdated,
    IncidentAcknowledged,
    IncidentResolved,
    IncidentReopened,
    IncidentClosed,
    IncidentReclassified,
    IncidentTriaged,
    IncidentGrouped,
    DiagnosisCompleted,
    ProblemDetected,
    ProblemCleared,
    TargetProbed,
    RemediationStarted,
    RemediationStepCompleted,
    ApprovalRequested,
    ApprovalGranted,
    ApprovalRejected,
    RemediationSucceeded,
    RemediationFailed,
    IncidentEscalated,
    EscalationAcknowledged,
    RemediationNoteAdded,
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


class NewerVersionThanKnown(InvalidEvent):
    """The event is of a version this code cannot read yet: deploy newer code, then replay it."""

    def __init__(self, event_type: str, version: int, known: int, source: object) -> None:
        publisher = f" (published by {source!r})" if isinstance(source, str) and source else ""
        super().__init__(
            f"{event_type} v{version}{publisher} is newer than this service knows (v{known}); "
            f"deploy this service with an aftercare-events that knows {event_type} v{version}, "
            "then replay this dead letter (aftercare dead-letters replay)"
        )
        self.event_type = event_type
        self.version = version
        self.known = known


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


_ENVELOPE_CLASSES: dict[type[Event], type[Envelope[Any]]] = {}


def _envelope_class(model: type[Event]) -> type[Envelope[Any]]:
    # ``Envelope[model]`` looks its class up in pydantic's generic cache on every call (a few
    # percent of a consumer's CPU per event); the parametrised class is the same every time.
    found = _ENVELOPE_CLASSES.get(model)
    if found is None:
        found = _ENVELOPE_CLASSES[model] = Envelope[model]  # type: ignore[valid-type]
    return found


def parse_envelope(raw: bytes | str) -> Envelope[Event]:
    """Parse a Kafka message value into an envelope holding the latest version of its event.

    Fields the models do not know are ignored (forward compatible: a newer publisher may have
    added optional fields); everything the models do know is validated as strictly as when the
    event was built. Raises ``UnknownEventType`` or ``InvalidEvent`` (both ``EventRejected``;
    ``NewerVersionThanKnown`` for a version from the future) with a message that says what is
    wrong; such a message is dead-lettered, never retried.
    """
    try:
        # pydantic-core's parser: the same documents as ``json.loads``, in half its time (the
        # consumer parses every message it fetches).
        document = from_json(raw)
    except ValueError as error:  # also bytes that are not UTF-8
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
        raise NewerVersionThanKnown(event_type, version, model.VERSION, document.get("source"))
    data = document.get("data")
    if not isinstance(data, dict):
        raise InvalidEvent(f"{event_type}: 'data' must be a JSON object")
    if version < model.VERSION:
        document = {**document, "data": upcast(event_type, version, data), "version": model.VERSION}
    try:
        # ``extra="ignore"`` overrides the models' ``extra="forbid"`` for this validation only,
        # nested parts included: reading is tolerant, building (the constructors) stays strict.
        return _envelope_class(model).model_validate(document, extra="ignore")
    except ValidationError as error:
        raise InvalidEvent(f"{event_type} v{version} failed validation: {error}") from None


def serialize(envelope: Envelope[Any]) -> bytes:
    """The bytes put on Kafka for an envelope."""
    return envelope.model_dump_json().encode()
