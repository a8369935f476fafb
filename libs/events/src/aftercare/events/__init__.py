"""Aftercare's event contract (envelope, versioned event models, topics) and the shared
plumbing every service uses to publish and consume them."""

from aftercare.events.catalog import EVENT_MODELS, EVENT_TYPES, EventRejected, parse_envelope, serialize
from aftercare.events.envelope import Envelope, Event, envelope_for

__all__ = [
    "EVENT_MODELS",
    "EVENT_TYPES",
    "Envelope",
    "Event",
    "EventRejected",
    "envelope_for",
    "parse_envelope",
    "serialize",
]
