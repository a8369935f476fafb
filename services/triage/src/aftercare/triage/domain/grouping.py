"""One problem, one incident: when a new incident repeats an open one, and when a source flaps.

* Same dedup key as an open incident of the tenant, or the same fingerprint (tenant + system +
  category) inside the window: a duplicate of the earliest such incident.
* A person (email, phone, web) reporting about a system on which an incident is open inside
  the window joins it, whatever category their words suggest: "billing is down" after an alert
  on billing-db is the same outage.
* A source that opened and resolved ``FLAP_TRANSITIONS`` times inside ``FLAP_WINDOW`` flaps:
  its incidents are flagged, and paging is held for them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Literal

GROUP_WINDOW = timedelta(minutes=30)
FLAP_WINDOW = timedelta(hours=1)
FLAP_TRANSITIONS = 3  # this many earlier opens within the window (each followed by a resolve)

PEOPLE_CHANNELS = frozenset({"email", "phone", "web"})


def fingerprint(tenant_id: str, system: str | None, category: str) -> str:
    return f"{tenant_id}|{system or '-'}|{category}"


@dataclass(frozen=True)
class GroupKey:
    """A key under which the first open incident is remembered (and claimed, one holder at a time)."""

    kind: Literal["dedup_key", "fingerprint", "same_system"]
    id: str

    @property
    def lasts_until_resolved(self) -> bool:
        """A dedup key groups for as long as its first incident is open; the others only inside
        the window, after which a new incident may take the key over."""
        return self.kind == "dedup_key"


def group_keys(tenant_id: str, *, dedup_key: str | None, system: str | None, category: str) -> list[GroupKey]:
    """The keys an incident is grouped by, in the order ``find_group`` prefers them."""
    keys = []
    if dedup_key:
        keys.append(GroupKey("dedup_key", f"dedup|{tenant_id}|{dedup_key}"))
    if system:
        keys.append(GroupKey("fingerprint", f"fingerprint|{fingerprint(tenant_id, system, category)}"))
        keys.append(GroupKey("same_system", f"system|{tenant_id}|{system}"))
    return keys


@dataclass(frozen=True)
class OpenIncident:
    """What grouping needs to know of an incident already open."""

    incident_id: str
    number: str
    reported_at: datetime
    system: str | None
    category: str
    dedup_key: str | None


@dataclass(frozen=True)
class Grouping:
    duplicate_of: OpenIncident
    reason: Literal["dedup_key", "fingerprint", "same_system"]
    detail: str


def find_group(
    *,
    incident_id: str,
    channel: str,
    dedup_key: str | None,
    system: str | None,
    category: str,
    reported_at: datetime,
    open_incidents: Sequence[OpenIncident],
    window: timedelta = GROUP_WINDOW,
) -> Grouping | None:
    """The open incident this one repeats, if any (the earliest, if several).

    ``open_incidents`` are the holders of this incident's group keys. A holder may have been
    reported a moment later than this one: it claimed the key first, so it is the first incident.
    """
    earlier = sorted(
        (other for other in open_incidents if other.incident_id != incident_id),
        key=lambda other: other.reported_at,
    )
    if dedup_key:
        for other in earlier:
            if other.dedup_key == dedup_key:
                return Grouping(other, "dedup_key", f"same dedup key {dedup_key!r} as {other.number}")
    recent = [other for other in earlier if abs(reported_at - other.reported_at) <= window]
    if system is not None:
        for other in recent:
            if other.system == system and other.category == category:
                minutes = max(0, int((reported_at - other.reported_at).total_seconds() // 60))
                return Grouping(
                    other,
                    "fingerprint",
                    f"same system {system} and category {category} as {other.number}, {minutes} min earlier",
                )
        if channel in PEOPLE_CHANNELS:
            for other in recent:
                if other.system == system:
                    minutes = max(0, int((reported_at - other.reported_at).total_seconds() // 60))
                    return Grouping(
                        other,
                        "same_system",
                        f"a person reports about {system}, on which {other.number} is open since {minutes} min",
                    )
    return None


@dataclass(frozen=True)
class Flapping:
    flapping: bool
    detail: str


def flapping(opened_before: Sequence[datetime], resolved_before: Sequence[datetime], now: datetime) -> Flapping:
    """Whether a source that opens again now has been opening and resolving over and over."""
    since = now - FLAP_WINDOW
    opens = [moment for moment in opened_before if moment >= since]
    resolves = [moment for moment in resolved_before if moment >= since]
    cycles = min(len(opens), len(resolves))
    if cycles >= FLAP_TRANSITIONS:
        return Flapping(
            True, f"opened and resolved {cycles} times in the last {int(FLAP_WINDOW.total_seconds() // 60)} min"
        )
    return Flapping(False, "")
