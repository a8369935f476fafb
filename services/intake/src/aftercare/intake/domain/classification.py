"""How urgent an incident is and what kind of problem it is: triage decides, a person may overrule.

Triage publishes its decision (IncidentTriaged); an operator may set the priority or the
category by hand (``reclassify``), which intake records and announces as IncidentReclassified.
From then on the person's choice stands: triage keeps it in every later decision (issue 9), and
intake never lets a triage result overwrite it, even one decided before triage heard of the
person's choice (``triage_fields``).
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Any

from aftercare.events.incidents import IncidentReclassified
from aftercare.events.incidents import IncidentStatus as Status
from aftercare.events.tenants import Priority
from aftercare.events.triage import IncidentTriaged
from aftercare.intake.domain.changes import IncidentChange, announce, timeline_entry
from aftercare.intake.domain.incident import Incident
from aftercare.intake.domain.moves import IncidentState

# The kinds of problem triage sorts incidents into (issue 9); a person picks from the same list.
CATEGORIES = ("database", "network", "application", "hardware", "security", "performance", "access", "other")

# Triage's deadlines follow from its priority: stale once a person chose another priority.
_FOLLOWS_PRIORITY = ("response_due_at", "resolution_due_at")


class ReclassifyRefused(ValueError):
    """The incident cannot be reclassified now; the message says why."""


def reclassify(
    incident: Incident,
    *,
    priority: Priority | None,
    category: str | None,
    by: str,
    reason: str,
    now: datetime,
) -> IncidentChange | None:
    """A person's priority and/or category for ``incident``; None when both are already set so by hand.

    Raises ``ReclassifyRefused`` for a closed incident (its record is final) and ``ValueError``
    for a category that is not one of ``CATEGORIES`` or a call that names neither.
    """
    if priority is None and category is None:
        raise ValueError("name a priority, a category or both")
    if category is not None and category not in CATEGORIES:
        raise ValueError(f"unknown category {category!r}; use one of: {', '.join(CATEGORIES)}")
    if incident.status == Status.CLOSED:
        raise ReclassifyRefused(f"{incident.number} is closed; reopen a new incident instead of reclassifying it")
    manual = set(incident.manual_fields)
    changes: list[str] = []
    fields: dict[str, Any] = {}
    chosen: list[str] = []
    if priority is not None and not (incident.priority == priority and "priority" in manual):
        was = f" (was {incident.priority.value})" if incident.priority and incident.priority != priority else ""
        changes.append(f"priority {priority.value}{was}")
        fields["priority"] = priority.value
        chosen.append("priority")
    if category is not None and not (incident.category == category and "category" in manual):
        was = f" (was {incident.category})" if incident.category and incident.category != category else ""
        changes.append(f"category {category}{was}")
        fields["category"] = category
        chosen.append("category")
    if not chosen:
        return None
    event = announce(
        IncidentReclassified(
            incident_id=incident.incident_id,
            number=incident.number,
            by=by,
            priority=priority if "priority" in chosen else None,
            category=category if "category" in chosen else None,
            reason=reason,
        ),
        tenant_id=incident.tenant_id,
        incident_id=incident.incident_id,
        now=now,
    )
    because = f": {reason}" if reason else ""
    return IncidentChange(
        incident.incident_id,
        incident.tenant_id,
        set_fields=fields | {"updated_at": now, "classified_by": by, "classified_at": now},
        add_to_set={"manual_fields": chosen},
        timeline=timeline_entry(
            "reclassified", f"Set by hand to {' and '.join(changes)} by {by}{because}", at=now, by=by, event_id=event.id
        ),
        events=[event],
    )


def triage_fields(event: IncidentTriaged) -> Callable[[IncidentState], dict[str, Any]]:
    """What a triage result sets on the incident as it is when the result arrives.

    Fields a person set by hand are left out (``moves.move_by_event`` drops them), and so are
    the deadlines when the person chose the priority and this result does not say it kept that
    choice (decided before triage heard of it, so its deadlines belong to another priority).
    """

    def fields(incident: IncidentState) -> dict[str, Any]:
        chosen: dict[str, Any] = {
            "priority": event.priority.value,
            "category": event.category,
            "response_due_at": event.response_due_at,
            "resolution_due_at": event.resolution_due_at,
        }
        if "priority" in incident.manual_fields and "priority" not in event.manual_fields:
            for name in _FOLLOWS_PRIORITY:
                chosen.pop(name)
        return chosen

    return fields
