"""Which service-level deadlines of an incident are watched, and what ends each watch.

Triage decides the deadlines (``response_due_at``, ``resolution_due_at``, from the tenant's tier)
when it triages. A deadline is *breached* when its time passes while the incident still waits:
for the response, nobody acknowledged or resolved it; for the resolution, it is not resolved.
A duplicate (grouped into another incident) is not watched: its head carries the clock.
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Any


class Deadline(StrEnum):
    RESPONSE = "response"
    RESOLUTION = "resolution"


def watch_key(incident_id: str, deadline: Deadline) -> str:
    """The stored due time's key: one per incident and deadline, so a re-triage moves it."""
    return f"sla:{deadline.value}:{incident_id}"


def deadlines_to_watch(incident: dict[str, Any]) -> list[tuple[Deadline, datetime]]:
    """The deadlines of a triaged incident (triage's stored document) that are still running."""
    decision = incident.get("decision") or {}
    if incident.get("duplicate_of") or incident.get("status", "open") != "open":
        return []
    watched = []
    for deadline, field in ((Deadline.RESPONSE, "response_due_at"), (Deadline.RESOLUTION, "resolution_due_at")):
        due = decision.get(field)
        if isinstance(due, datetime):
            watched.append((deadline, due))
    return watched


def deadlines_met_by(event_type: str) -> list[Deadline]:
    """The deadlines an incident event satisfies: acknowledging is a response; resolving (or
    closing) is both."""
    if event_type == "incident.acknowledged":
        return [Deadline.RESPONSE]
    if event_type in ("incident.resolved", "incident.closed"):
        return [Deadline.RESPONSE, Deadline.RESOLUTION]
    return []
