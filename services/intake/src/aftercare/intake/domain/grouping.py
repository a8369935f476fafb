"""Two incidents, one problem: what triage's grouping does to each of them.

Triage finds that a later incident reports the same problem as an earlier open one
(IncidentGrouped, keyed by the later one). The later one, the duplicate, shows a link to the
first (``duplicate_of``); the first counts its duplicates (``duplicate_count``) and lists each
on its timeline, so the people working on it see how many reports they answer.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from aftercare.events.envelope import Envelope
from aftercare.events.triage import IncidentGrouped
from aftercare.intake.domain.changes import IncidentChange, timeline_entry
from aftercare.intake.domain.moves import IncidentState

_REASONS = {
    "dedup_key": "same dedup key",
    "fingerprint": "same system and category",
    "same_system": "a report about the same system",
}


def duplicate_counted(
    first: IncidentState, cause: Envelope[IncidentGrouped], *, now: datetime
) -> IncidentChange | None:
    """The first incident counts one more duplicate, once per grouping event; None for another tenant's."""
    if cause.tenant_id != first.tenant_id or cause.data.duplicate_of != first.incident_id:
        return None
    event = cause.data
    reason = _REASONS.get(event.reason, event.reason)
    channel = f" by {event.channel}" if event.channel else ""
    fields: dict[str, Any] = {"updated_at": now}
    return IncidentChange(
        first.incident_id,
        first.tenant_id,
        set_fields=fields,
        increments={"duplicate_count": 1},
        timeline=timeline_entry(
            "duplicate",
            f"{event.number} reported the same problem{channel} ({reason})",
            at=now,
            by=cause.source,
            event_id=cause.id,
        ),
        applied_event_id=cause.id,
    )
