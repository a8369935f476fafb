"""Kafka topic names, in one place.

Topics are named by what they carry. Every topic a service consumes has a dead-letter twin
(``<topic>.dead-letter``) where messages that could not be handled are kept with the error.
Tenants travel on a compacted topic keyed by tenant id, so a service that starts from nothing
can rebuild its copy of every tenant by reading the topic from the beginning.
"""

from __future__ import annotations

from dataclasses import dataclass

TENANTS = "aftercare.tenants"
INCIDENTS = "aftercare.incidents"
TRIAGE = "aftercare.triage"
REMEDIATION = "aftercare.remediation"
NOTIFICATIONS = "aftercare.notifications"

DEAD_LETTER_SUFFIX = ".dead-letter"


def dead_letter_topic(topic: str) -> str:
    """The topic where messages from ``topic`` go when they cannot be handled."""
    return topic + DEAD_LETTER_SUFFIX


@dataclass(frozen=True)
class TopicSpec:
    """How a topic is created: compacted topics keep the latest record per key forever."""

    name: str
    compacted: bool = False


def topic_specs(names: list[str] | None = None) -> list[TopicSpec]:
    """Every topic of the system (or of ``names``) with its dead-letter twin."""
    main = [
        TopicSpec(TENANTS, compacted=True),
        TopicSpec(INCIDENTS),
        TopicSpec(TRIAGE),
        TopicSpec(REMEDIATION),
        TopicSpec(NOTIFICATIONS),
    ]
    if names is not None:
        known = {spec.name: spec for spec in main}
        main = [known.get(name, TopicSpec(name)) for name in names]
    # Dead letters are never compacted: each failed message must be kept for a person to read.
    return main + [TopicSpec(dead_letter_topic(spec.name)) for spec in main]
