"""The envelope every Aftercare event travels in, and the base class of event payloads.

Attribute names follow CloudEvents where one exists (id, type, source, time); the rest are the
support business's: the tenant (a customer of the support company) and the incident, whose id
is also the Kafka key so that one incident's events stay in order on one partition.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any, ClassVar, Generic, TypeVar

from opentelemetry import propagate, trace
from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, field_validator

from aftercare.events.tracing import incident_traceparent


def new_event_id() -> str:
    return str(uuid.uuid4())


def utc_now() -> datetime:
    return datetime.now(UTC)


class Event(BaseModel):
    """Base of every event payload: a fact that happened, named in the past tense.

    Subclasses set ``TYPE`` (dotted name, stable forever), ``VERSION`` (bumped on a breaking
    change, with an upcaster from the previous version in ``aftercare.events.catalog``) and
    ``TOPIC`` (where it is published). Adding an optional field keeps the version.

    Building an event is strict (``extra="forbid"``: an unknown field is a mistake of the code
    building it); reading one from Kafka is tolerant (``catalog.parse_envelope`` validates with
    ``extra="ignore"``, so fields added by newer publishers are skipped, not fatal).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    TYPE: ClassVar[str]
    VERSION: ClassVar[int] = 1
    TOPIC: ClassVar[str]

    def partition_key(self) -> str | None:
        """The Kafka key of an event that concerns neither one incident nor one tenant (e.g. an
        operator, keyed per operator on the compacted tenants topic); None for all others."""
        return None


EventT = TypeVar("EventT", bound=Event)


class Envelope(BaseModel, Generic[EventT]):
    """One event with everything needed to route, order, deduplicate and trace it.

    Strict when built, tolerant when read (see ``Event``).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str = Field(default_factory=new_event_id, description="Unique event id; consumers deduplicate on it.")
    type: str = Field(description="Event type, e.g. 'incident.reported'.")
    version: int = Field(ge=1, description="Version of the payload schema for this type.")
    time: AwareDatetime = Field(default_factory=utc_now, description="When it happened (UTC).")
    source: str = Field(description="The service that published it, e.g. 'intake'.")
    tenant_id: str = Field(min_length=1, description="The support company's customer it concerns.")
    incident_id: str | None = Field(
        default=None, description="The incident it concerns; also the Kafka key when present."
    )
    correlation_id: str = Field(default_factory=new_event_id, description="Shared by every event of one chain of work.")
    causation_id: str | None = Field(default=None, description="Id of the event that caused this one.")
    traceparent: str | None = Field(default=None, description="W3C trace context of the publisher.")
    tracestate: str | None = Field(default=None, description="W3C trace state of the publisher.")
    data: EventT

    @field_validator("time")
    @classmethod
    def _in_utc(cls, value: datetime) -> datetime:
        return value.astimezone(UTC)

    @property
    def key(self) -> str:
        """The Kafka key: the incident id, else the event's own key (operators), else the tenant id."""
        return self.incident_id or self.data.partition_key() or self.tenant_id


def envelope_for(
    data: EventT,
    *,
    source: str,
    tenant_id: str,
    incident_id: str | None = None,
    caused_by: Envelope[Any] | None = None,
    event_id: str | None = None,
    time: datetime | None = None,
) -> Envelope[EventT]:
    """Wrap a payload in a new envelope.

    ``caused_by`` links the new event to the one being handled: it inherits its correlation id
    and names it as the cause, so an incident's whole story can be followed across services.
    An event about an incident is in the incident's own trace (``tracing.incident_trace_id``),
    child of the current span when that span is in the same trace (the message being handled),
    so an event published later from an outbox still continues it. Other events take the trace
    context current where they are made.
    """
    extra: dict[str, Any] = {}
    if incident_id is not None:
        # An event about an incident is always in the incident's own trace, whatever is current
        # (a request, a timer, a long-lived task, another incident's message): one trace per incident.
        extra["traceparent"] = incident_traceparent(incident_id, trace.get_current_span().get_span_context())
    else:
        carrier: dict[str, str] = {}
        propagate.inject(carrier)
        if "traceparent" in carrier:
            extra["traceparent"] = carrier["traceparent"]
            extra["tracestate"] = carrier.get("tracestate")
    if event_id is not None:
        extra["id"] = event_id
    if time is not None:
        extra["time"] = time
    if caused_by is not None:
        extra["correlation_id"] = caused_by.correlation_id
        extra["causation_id"] = caused_by.id
    return Envelope[type(data)](  # type: ignore[misc,operator,no-any-return]
        type=data.TYPE,
        version=data.VERSION,
        source=source,
        tenant_id=tenant_id,
        incident_id=incident_id,
        data=data,
        **extra,
    )
