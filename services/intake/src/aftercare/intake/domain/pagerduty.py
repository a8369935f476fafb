"""PagerDuty Events API v2 alert events: what a sender may send, and the incident it becomes.

Senders that talk to PagerDuty today must work against intake by changing only the base URL, so
the rules and the error texts follow PagerDuty's documentation (developer.pagerduty.com, "Send
an Alert Event") and the answers it gives in practice: routing_key of 32 characters,
event_action trigger|acknowledge|resolve, dedup_key up to 255 characters (required unless
triggering), payload summary (up to 1024 characters), source and severity required on trigger,
the whole event at most 512 KB. Fields PagerDuty does not know are ignored, as PagerDuty does.

Pure: no I/O. The HTTP edge (``entrypoints/pagerduty_api.py``) looks the routing key up and
calls the incident desk with what this module decides.
"""

from __future__ import annotations

import json
import math
import re
import uuid
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

from aftercare.events.incidents import Channel, Reporter, Severity
from aftercare.intake.domain import field_limits as limits
from aftercare.intake.domain.incident import IncidentReport
from aftercare.intake.domain.moments import in_utc

MAX_EVENT_BYTES = 512 * 1024
MAX_SUMMARY_CHARS = limits.SUMMARY_CHARS
MAX_DEDUP_KEY_CHARS = limits.DEDUP_KEY_CHARS
ROUTING_KEY_CHARS = 32
# The description is what a customer and triage read; the full custom_details stay in details.
MAX_DESCRIPTION_CHARS = limits.DESCRIPTION_CHARS
# Deeper custom_details are kept as JSON text: the store refuses very deep documents.
MAX_DETAILS_DEPTH = 20
_INT64 = 2**63

ACTOR = "pagerduty"
_ALPHANUMERIC = re.compile(r"^[A-Za-z0-9]+$")


class EventAction(StrEnum):
    TRIGGER = "trigger"
    ACKNOWLEDGE = "acknowledge"
    RESOLVE = "resolve"


class InvalidEvent(ValueError):
    """The event is not one PagerDuty would accept; ``errors`` say what to change, one per problem."""

    def __init__(self, errors: list[str]) -> None:
        super().__init__("; ".join(errors))
        self.errors = errors


class UnrecognizedBody(ValueError):
    """The body is not a JSON object at all (PagerDuty: "Event object format is unrecognized")."""


# --- the shapes PagerDuty documents ------------------------------------------------------------


class Link(BaseModel):
    model_config = ConfigDict(extra="ignore")

    href: str = Field(min_length=1, max_length=limits.URL_CHARS, description="URL of the link.")
    text: str | None = Field(default=None, max_length=limits.PAGERDUTY_FIELD_CHARS, description="What the link is for.")


class Image(BaseModel):
    model_config = ConfigDict(extra="ignore")

    src: str = Field(min_length=1, max_length=limits.URL_CHARS, description="URL of the image (PagerDuty wants HTTPS).")
    href: str | None = Field(default=None, max_length=limits.URL_CHARS, description="Where a click on the image leads.")
    alt: str | None = Field(default=None, max_length=limits.PAGERDUTY_FIELD_CHARS, description="Alternative text.")


class AlertPayload(BaseModel):
    """PagerDuty Common Event Format: what is wrong, where, and how badly."""

    model_config = ConfigDict(extra="ignore", populate_by_name=True, str_strip_whitespace=True)

    summary: str = Field(
        min_length=1, max_length=MAX_SUMMARY_CHARS, description="One line: what is wrong. Becomes the incident title."
    )
    source: str = Field(
        min_length=1,
        max_length=limits.PAGERDUTY_FIELD_CHARS,
        description="The affected system, preferably a hostname or FQDN.",
    )
    severity: Severity = Field(description="critical, error, warning or info.")
    timestamp: str | None = Field(default=None, description="When the problem was detected (ISO 8601).")
    component: str | None = Field(
        default=None,
        max_length=limits.PAGERDUTY_FIELD_CHARS,
        description="Part of the source that is broken, e.g. mysql.",
    )
    group: str | None = Field(
        default=None,
        max_length=limits.PAGERDUTY_FIELD_CHARS,
        description="Logical group of components, e.g. app-stack.",
    )
    class_: str | None = Field(
        default=None, alias="class", max_length=limits.PAGERDUTY_FIELD_CHARS, description="Type of problem, e.g. disk."
    )
    custom_details: Any = Field(default=None, description="Free-form details (usually a JSON object).")


class _Routing(BaseModel):
    """The fields every action has."""

    model_config = ConfigDict(extra="ignore")

    routing_key: str = Field(description="The 32-character integration key of the tenant's PagerDuty integration.")
    event_action: EventAction = Field(description="trigger, acknowledge or resolve.")
    dedup_key: str | None = Field(
        default=None,
        max_length=MAX_DEDUP_KEY_CHARS,
        description="Identifies the alert; required for acknowledge and resolve.",
    )


class _TriggerContext(BaseModel):
    """What only trigger events carry (PagerDuty ignores these on acknowledge and resolve)."""

    model_config = ConfigDict(extra="ignore")

    payload: AlertPayload
    client: str | None = Field(
        default=None, max_length=limits.PAGERDUTY_FIELD_CHARS, description="Name of the monitoring client."
    )
    client_url: str | None = Field(
        default=None, max_length=limits.URL_CHARS, description="URL of the monitoring client."
    )
    links: list[Link] | None = Field(
        default=None, max_length=limits.PAGERDUTY_LINKS, description="Links to show on the incident."
    )
    images: list[Image] | None = Field(
        default=None, max_length=limits.PAGERDUTY_LINKS, description="Images to show on the incident."
    )


class EnqueueRequest(_Routing):
    """A PagerDuty Events API v2 alert event, as POSTed to /v2/enqueue (documentation only)."""

    payload: AlertPayload | None = Field(default=None, description="Required for trigger events.")
    client: str | None = None
    client_url: str | None = None
    links: list[Link] | None = None
    images: list[Image] | None = None


# --- reading an event ---------------------------------------------------------------------------


@dataclass(frozen=True)
class AlertEvent:
    """A valid event. ``dedup_key`` is None only for a trigger that did not send one."""

    action: EventAction
    dedup_key: str | None
    payload: AlertPayload | None = None
    client: str | None = None
    client_url: str | None = None
    links: list[Link] = field(default_factory=list)
    images: list[Image] = field(default_factory=list)
    # Who acknowledges or resolves: PagerDuty events name no person, so the payload's source if sent.
    actor: str = ACTOR


def parse_body(raw: bytes, charset: str | None = None) -> dict[str, Any]:
    """The JSON object in a request body, or ``UnrecognizedBody`` saying what is wrong with it."""
    try:
        # Without a charset json detects UTF-8/16/32 (and a BOM) by itself.
        text: str | bytes = (
            raw.decode("utf-8-sig" if charset.lower() in ("utf-8", "utf8") else charset) if charset else raw
        )
        document = json.loads(text, parse_constant=_no_constants)
    except LookupError:
        raise UnrecognizedBody(f"JSON parse error: unknown charset {charset!r}; send UTF-8") from None
    except (ValueError, RecursionError) as error:
        reason = str(error) if not isinstance(error, RecursionError) else "nested too deeply"
        raise UnrecognizedBody(
            f"JSON parse error: {reason}. Send one JSON object with Content-Type: application/json"
        ) from None
    if not isinstance(document, dict):
        raise UnrecognizedBody(
            f"The event must be a JSON object with routing_key, event_action and payload; "
            f"got a JSON {_json_kind(document)}"
        )
    return document


def read_event(document: dict[str, Any], *, routing_key_registered: bool) -> AlertEvent:
    """Validate an event as PagerDuty does; ``InvalidEvent`` lists every problem at once.

    ``routing_key_registered`` is whether the key belongs to a tenant here: a registered key is
    accepted whatever its length (an admin may have issued a non-PagerDuty-shaped one), an
    unregistered one gets PagerDuty's format errors or "not registered".
    """
    errors: list[str] = []
    routing: _Routing | None = None
    try:
        routing = _Routing.model_validate(document)
    except ValidationError as invalid:
        errors.extend(
            _describe(error)
            for error in invalid.errors()
            if not (error["loc"] == ("routing_key",) and error["type"] != "missing")
        )
    if "routing_key" in document and not routing_key_registered:
        errors.extend(routing_key_errors(document["routing_key"]))

    action = document.get("event_action")
    raw_dedup_key = document.get("dedup_key")
    dedup_key = raw_dedup_key.strip() if isinstance(raw_dedup_key, str) and raw_dedup_key.strip() else None
    context: _TriggerContext | None = None
    if action == EventAction.TRIGGER:
        try:
            context = _TriggerContext.model_validate(document)
        except ValidationError as invalid:
            errors.extend(_describe(error) for error in invalid.errors())
    elif (
        action in (EventAction.ACKNOWLEDGE, EventAction.RESOLVE)
        and dedup_key is None
        and (raw_dedup_key is None or isinstance(raw_dedup_key, str))
    ):  # a non-string is reported above
        errors.append(
            f"'dedup_key' is required for {action} events: send the dedup_key of the alert to "
            f"{action} (the one returned when it was triggered)"
        )
    if errors or routing is None:
        raise InvalidEvent(errors or ["Event object is invalid"])

    if context is None:
        return AlertEvent(action=routing.event_action, dedup_key=dedup_key, actor=_actor(document))
    return AlertEvent(
        action=routing.event_action,
        dedup_key=dedup_key,
        payload=context.payload,
        client=context.client,
        client_url=context.client_url,
        links=context.links or [],
        images=context.images or [],
        actor=context.payload.source or ACTOR,
    )


def routing_key_errors(routing_key: object) -> list[str]:
    """Why a routing key that is not registered here is refused, in PagerDuty's words where it has them."""
    if not isinstance(routing_key, str):
        return ["'routing_key' must be a string: the 32-character Integration Key of your Events API v2 integration"]
    if not routing_key.strip():
        return ["'routing_key' is blank: send the 32-character Integration Key of your Events API v2 integration"]
    errors = []
    if len(routing_key) != ROUTING_KEY_CHARS:
        errors.append(f"Length of 'routing_key' is incorrect (should be {ROUTING_KEY_CHARS} characters)")
    if not _ALPHANUMERIC.match(routing_key):
        errors.append("'routing_key' cannot contain non-alphanumeric characters.")
    if not errors:
        errors.append(
            "'routing_key' is not registered here: no integration has this key. Use the Integration "
            "Key your support provider issued for your account (check for a mistyped or revoked key)"
        )
    return errors


def generated_dedup_key() -> str:
    """What PagerDuty does for a trigger without a dedup_key: a random UUID, returned to the sender."""
    return uuid.uuid4().hex


# --- change events (POST /v2/change/enqueue) ----------------------------------------------------


class ChangePayload(BaseModel):
    """What changed (a deploy, a configuration change): context for the incidents around it."""

    model_config = ConfigDict(extra="ignore", str_strip_whitespace=True)

    summary: str = Field(min_length=1, max_length=MAX_SUMMARY_CHARS, description="One line: what changed.")
    timestamp: str | None = Field(default=None, description="When the change happened (ISO 8601).")
    source: str | None = Field(
        default=None, max_length=limits.PAGERDUTY_FIELD_CHARS, description="The system that changed."
    )
    custom_details: Any = Field(default=None, description="Free-form details (usually a JSON object).")


class ChangeEnqueueRequest(BaseModel):
    """A PagerDuty Events API v2 change event, as POSTed to /v2/change/enqueue."""

    model_config = ConfigDict(extra="ignore")

    routing_key: str = Field(description="The 32-character integration key (the same as for alert events).")
    payload: ChangePayload
    links: list[Link] | None = Field(default=None, max_length=limits.PAGERDUTY_LINKS)
    images: list[Image] | None = Field(default=None, max_length=limits.PAGERDUTY_LINKS)


@dataclass(frozen=True)
class ChangeEvent:
    payload: ChangePayload
    links: list[Link] = field(default_factory=list)
    images: list[Image] = field(default_factory=list)


def read_change_event(document: dict[str, Any], *, routing_key_registered: bool) -> ChangeEvent:
    """Validate a change event as PagerDuty does; ``InvalidEvent`` lists every problem at once."""
    errors: list[str] = []
    request: ChangeEnqueueRequest | None = None
    try:
        request = ChangeEnqueueRequest.model_validate(document)
    except ValidationError as invalid:
        errors.extend(
            _describe(error)
            for error in invalid.errors()
            if not (error["loc"] == ("routing_key",) and error["type"] != "missing")
        )
    if "routing_key" in document and not routing_key_registered:
        errors.extend(routing_key_errors(document["routing_key"]))
    if errors or request is None:
        raise InvalidEvent(errors or ["Event object is invalid"])
    return ChangeEvent(payload=request.payload, links=request.links or [], images=request.images or [])


def change_record(event: ChangeEvent, *, routing_key_id: str) -> dict[str, Any]:
    """The change as the tenant's change log keeps it (storable, bounded by the 512 KB event limit)."""
    payload = event.payload
    record: dict[str, Any] = storable(
        {
            "summary": payload.summary,
            "source": payload.source,
            "timestamp": payload.timestamp,
            "happened_at": event_time(payload.timestamp),
            "custom_details": payload.custom_details,
            "links": [link.model_dump(exclude_none=True) for link in event.links],
            "images": [image.model_dump(exclude_none=True) for image in event.images],
            "routing_key_id": routing_key_id,
        }
    )
    return record


def change_note(event: ChangeEvent) -> str:
    """What an incident's timeline says about a change to its source."""
    payload = event.payload
    lines = [f"Change reported through PagerDuty: {payload.summary}"]
    if payload.source:
        lines.append(f"Source: {payload.source}")
    if payload.timestamp:
        lines.append(f"At: {payload.timestamp}")
    lines += [f"{link.text}: {link.href}" if link.text else link.href for link in event.links]
    return clean_text(limits.cut("\n".join(lines), MAX_DESCRIPTION_CHARS))


# --- the incident a trigger opens --------------------------------------------------------------


def incident_report(event: AlertEvent, *, dedup_key: str, routing_key_id: str) -> IncidentReport:
    """The incident a trigger event reports: summary is the title, the PD-CEF fields its context."""
    payload = event.payload
    if payload is None:
        raise ValueError("only trigger events report incidents")
    labels = {
        name: clean_text(value)
        for name, value in (("component", payload.component), ("group", payload.group), ("class", payload.class_))
        if value
    }
    details: dict[str, Any] = {
        "routing_key_id": routing_key_id,
        "client": event.client,
        "client_url": event.client_url,
        "links": [link.model_dump(exclude_none=True) for link in event.links],
        "images": [image.model_dump(exclude_none=True) for image in event.images],
        "timestamp": payload.timestamp,
        "custom_details": payload.custom_details,
    }
    return IncidentReport(
        title=clean_text(payload.summary),
        description=clean_text(describe_event(event)),
        channel=Channel.PAGERDUTY,
        severity=payload.severity,
        reporter=Reporter(system=clean_text(event.client) if event.client else ACTOR),
        source=clean_text(payload.source),
        dedup_key=clean_text(dedup_key),
        labels=labels,
        occurred_at=event_time(payload.timestamp),
        details={"pagerduty": storable({key: value for key, value in details.items() if value not in (None, [])})},
    )


def describe_event(event: AlertEvent) -> str:
    """The event's context as text a person reads on the incident (the title is the summary)."""
    payload = event.payload
    if payload is None:
        return ""
    lines = [
        f"{label}: {value}"
        for label, value in (
            ("Source", payload.source),
            ("Component", payload.component),
            ("Group", payload.group),
            ("Class", payload.class_),
            (
                "Reported by",
                " ".join(part for part in (event.client, f"({event.client_url})" if event.client_url else None) if part)
                or None,
            ),
        )
        if value
    ]
    details = payload.custom_details
    if isinstance(details, dict) and details:
        lines += ["", "Details:"] + [f"  {name}: {_as_text(value)}" for name, value in details.items()]
    elif details not in (None, "", [], {}):
        lines += ["", "Details:", _as_text(details)]
    if event.links:
        lines += ["", "Links:"] + [
            f"  {link.text}: {link.href}" if link.text else f"  {link.href}" for link in event.links
        ]
    if event.images:
        lines += ["", "Images:"] + [
            f"  {image.alt}: {image.src}" if image.alt else f"  {image.src}" for image in event.images
        ]
    text = "\n".join(lines)
    if len(text) > MAX_DESCRIPTION_CHARS:
        text = text[: MAX_DESCRIPTION_CHARS - 60] + "\n... (cut here; the full details are kept with the incident)"
    return text


def event_time(timestamp: str | None) -> datetime | None:
    """The sender's timestamp, if it is one; PagerDuty uses the time of receipt otherwise, so do we."""
    if not timestamp:
        return None
    try:
        return in_utc(TypeAdapter(datetime).validate_python(timestamp))
    except ValueError:  # not a time, or one outside the calendar in UTC (ValidationError is one)
        return None


# --- keeping arbitrary JSON in the store --------------------------------------------------------


def storable(value: Any, depth: int = 0) -> Any:
    """``value`` in a form every MongoDB-compatible store keeps as is (custom_details are arbitrary JSON).

    Keys lose what the store forbids (a ``.`` becomes a full-width dot, a leading ``$`` a full-width
    dollar), NUL characters go, integers beyond 64 bits and arrays inside arrays become JSON text,
    and anything nested deeper than ``MAX_DETAILS_DEPTH`` is kept as JSON text.
    """
    if isinstance(value, dict):
        if depth >= MAX_DETAILS_DEPTH:
            return _as_text(value)
        return {storable_key(str(key)): storable(item, depth + 1) for key, item in value.items()}
    if isinstance(value, list):
        if depth >= MAX_DETAILS_DEPTH:
            return _as_text(value)
        return [clean_text(_as_text(item)) if isinstance(item, list) else storable(item, depth + 1) for item in value]
    if isinstance(value, str):
        return clean_text(value)
    if isinstance(value, bool | datetime) or value is None:
        return value
    if isinstance(value, int):
        return value if -_INT64 <= value < _INT64 else str(value)
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    return clean_text(str(value))


def storable_key(key: str) -> str:
    key = clean_text(key).replace(".", "\uff0e")
    if key.startswith("$"):
        key = "\uff04" + key[1:]
    return key or "(empty)"


def clean_text(text: str) -> str:
    """Text without NUL characters, which the store refuses in strings."""
    return text.replace("\x00", "")


# --- errors in PagerDuty's style ----------------------------------------------------------------

_HINTS = {
    "routing_key": "send the 32-character Integration Key of your Events API v2 integration",
    "event_action": "one of trigger, acknowledge, resolve",
    "payload": "trigger events need a payload object with summary, source and severity",
    "payload.summary": "a one-line text saying what is wrong",
    "payload.source": "the affected system, e.g. its hostname",
    "payload.severity": "one of critical, error, warning, info",
}


def _describe(error: Any) -> str:
    """One pydantic error as a sentence that names the field and says what to send instead."""
    path = _path(error["loc"])
    kind = error["type"]
    hint = _HINTS.get(re.sub(r"\[\d+\]", "", path))
    ctx = error.get("ctx") or {}
    if kind == "missing":
        return f"'{path}' is missing" + (f": {hint}" if hint else "")
    if kind == "string_too_long":
        return f"'{path}' is too long (maximum is {ctx.get('max_length')} characters)"
    if kind == "too_long":
        return f"'{path}' has too many entries (maximum is {ctx.get('max_length')})"
    if kind == "string_too_short":
        return f"'{path}' is blank" + (f": {hint}" if hint else "")
    if kind == "enum":
        return f"'{path}' must be {ctx.get('expected', hint)}, not {_shown(error.get('input'))}"
    if kind == "string_type":
        return f"'{path}' must be a string, not {_json_kind(error.get('input'))}"
    if kind == "list_type":
        return f"'{path}' must be a list of objects, not {_json_kind(error.get('input'))}"
    if kind in ("model_type", "model_attributes_type", "dict_type"):
        return (
            f"'{path}' must be a JSON object"
            + (f" ({hint})" if hint else "")
            + f", not {_json_kind(error.get('input'))}"
        )
    return f"'{path}' is invalid: {error.get('msg', 'not accepted')}"


def _path(location: tuple[Any, ...]) -> str:
    path = ""
    for part in location:
        if isinstance(part, int):
            path += f"[{part}]"
        else:
            path += ("." if path else "") + ("class" if part == "class_" else str(part))
    return path or "(event)"


def _shown(value: Any) -> str:
    text = json.dumps(value) if not isinstance(value, str) else repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _json_kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    return "object"


def _as_text(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False, default=str)


def _actor(document: dict[str, Any]) -> str:
    payload = document.get("payload")
    source = payload.get("source") if isinstance(payload, dict) else None
    if isinstance(source, str) and source.strip():
        return clean_text(source.strip())[:200]
    return ACTOR


def _no_constants(name: str) -> Any:
    # Python's json reads NaN and Infinity; JSON (and PagerDuty) does not.
    raise ValueError(f"{name} is not valid JSON")
