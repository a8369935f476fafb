"""Kafka topic names, in one place.

Topics are named by what they carry. Every topic a service consumes has a dead-letter twin
(``<topic>.dead-letter``) where messages that could not be handled are kept with the error.
Tenants travel on a compacted topic keyed by tenant id, so a service that starts from nothing
can rebuild its copy of every tenant by reading the topic from the beginning.

What the topics keep is chosen for rebuilds (docs/operations.md, "Rebuilding from the log"):
the incident flow (incidents, triage, remediation, notifications) is kept forever
(``retention.ms=-1``): the notifier's read model (timelines, the 90-day status pages) and
triage's grouping state are folds over it, and a fold needs every event since the oldest thing
it shows. Tenants and operators are compacted: the latest record per key, forever. Dead letters
are kept forever too, until a person has read them. A broker's default (7 days here) would
quietly make a rebuild forget older incidents.
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


KEEP_FOREVER = -1


@dataclass(frozen=True)
class TopicSpec:
    """How a topic is created: compacted topics keep the latest record per key forever; the
    others keep every record for ``retention_ms`` (-1: forever)."""

    name: str
    compacted: bool = False
    retention_ms: int = KEEP_FOREVER

    def configs(self) -> dict[str, str]:
        """The topic-level settings given to the broker at creation."""
        if self.compacted:
            return {"cleanup.policy": "compact"}
        return {"cleanup.policy": "delete", "retention.ms": str(self.retention_ms)}


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
