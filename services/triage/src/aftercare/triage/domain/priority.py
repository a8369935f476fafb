"""Where the priority is decided: impact x urgency, the ITIL matrix, and the contract's SLA.

Impact says how much of the customer's business is hit: the affected system's criticality,
raised or lowered by the tenant's contract tier (a platinum customer's medium system matters
more than a basic customer's). Urgency says how fast it gets worse: the reported severity,
raised by words like "down" or "all users" and lowered by "question" or "when you can".
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import IntEnum

from aftercare.events.incidents import Severity
from aftercare.events.tenants import ContractTier, Criticality, Priority


class Level(IntEnum):
    LOW = 1
    MEDIUM = 2
    HIGH = 3

    @property
    def label(self) -> str:
        return self.name.lower()

    @classmethod
    def parse(cls, value: str) -> Level:
        return cls[value.upper()]


# impact (rows) x urgency (columns) -> priority; the usual ITIL 3x3, P1 to P5.
MATRIX: dict[tuple[Level, Level], Priority] = {
    (Level.HIGH, Level.HIGH): Priority.P1,
    (Level.HIGH, Level.MEDIUM): Priority.P2,
    (Level.HIGH, Level.LOW): Priority.P3,
    (Level.MEDIUM, Level.HIGH): Priority.P2,
    (Level.MEDIUM, Level.MEDIUM): Priority.P3,
    (Level.MEDIUM, Level.LOW): Priority.P4,
    (Level.LOW, Level.HIGH): Priority.P3,
    (Level.LOW, Level.MEDIUM): Priority.P4,
    (Level.LOW, Level.LOW): Priority.P5,
}

CRITICALITY_IMPACT = {
    Criticality.CRITICAL: Level.HIGH,
    Criticality.HIGH: Level.HIGH,
    Criticality.MEDIUM: Level.MEDIUM,
    Criticality.LOW: Level.LOW,
}

# Tier names customers are sold; anything else counts as a standard contract.
TIER_SHIFT = {"platinum": 1, "gold": 1, "premium": 1, "enterprise": 1, "bronze": -1, "basic": -1, "community": -1}

SEVERITY_URGENCY = {
    Severity.CRITICAL: Level.HIGH,
    Severity.ERROR: Level.MEDIUM,
    Severity.WARNING: Level.LOW,
    Severity.INFO: Level.LOW,
}

# Words that say "it hurts right now" or "it can wait", in the languages tenants write in.
URGENT_WORDS = (
    "down",
    "outage",
    "not working",
    "cannot",
    "can't",
    "unable",
    "all users",
    "everyone",
    "stopped",
    "urgent",
    "asap",
    "emergency",
    "production",
    "breach",
    "ausgefallen",
    "dringend",
    "geht nicht",
    "en panne",
    "urgence",
    "bloqué",
)
CALM_WORDS = (
    "question",
    "how do i",
    "when you can",
    "no rush",
    "not urgent",
    "feature request",
    "cosmetic",
    "typo",
    "nice to have",
    "frage",
    "nicht dringend",
)


def clamp(value: int) -> Level:
    return Level(max(Level.LOW, min(Level.HIGH, value)))


@dataclass(frozen=True)
class Assessment:
    """A level and the reasons behind it, in words."""

    level: Level
    reasons: tuple[str, ...]


def assess_impact(criticality: Criticality | None, tier: ContractTier) -> Assessment:
    reasons: list[str] = []
    if criticality is None:
        base = Level.MEDIUM
        reasons.append("no known system affected: impact medium")
    else:
        base = CRITICALITY_IMPACT[criticality]
        reasons.append(f"system criticality {criticality.value}: impact {base.label}")
    shift = TIER_SHIFT.get(tier.name.strip().lower(), 0)
    level = clamp(base + shift)
    if shift and level != base:
        reasons.append(f"{tier.name} contract: impact {'raised' if shift > 0 else 'lowered'} to {level.label}")
    return Assessment(level, tuple(reasons))


def assess_urgency(severity: Severity, text: str) -> Assessment:
    base = SEVERITY_URGENCY[severity]
    reasons = [f"severity {severity.value}: urgency {base.label}"]
    lowered = text.lower()
    urgent = [word for word in URGENT_WORDS if word in lowered]
    calm = [word for word in CALM_WORDS if word in lowered]
    level = base
    if urgent and not calm and base < Level.HIGH:
        level = clamp(base + 1)
        reasons.append(f"text says {', '.join(repr(word) for word in urgent[:3])}: urgency raised to {level.label}")
    elif calm and not urgent and base > Level.LOW:
        level = clamp(base - 1)
        reasons.append(f"text says {', '.join(repr(word) for word in calm[:3])}: urgency lowered to {level.label}")
    return Assessment(level, tuple(reasons))


def priority_for(impact: Level, urgency: Level) -> Priority:
    return MATRIX[(impact, urgency)]


@dataclass(frozen=True)
class SlaDeadlines:
    response_due_at: datetime | None
    resolution_due_at: datetime | None
    note: str


def sla_deadlines(tier: ContractTier, priority: Priority, reported_at: datetime) -> SlaDeadlines:
    """The contract's deadlines for ``priority``, counted from when the incident was reported.

    A contract without a target for this priority uses the nearest less urgent one it has
    (most contracts list P1-P4 only; P5 then gets P4's times), and says so.
    """
    targets = {target.priority: target for target in tier.sla}
    order = list(Priority)
    start = order.index(priority)
    # Look at the priority itself, then less urgent ones, then more urgent ones.
    candidates = order[start:] + list(reversed(order[:start]))
    for candidate in candidates:
        target = targets.get(candidate)
        if target is None:
            continue
        note = (
            f"{tier.name} contract {candidate.value}: respond within {target.response_minutes} min, "
            f"resolve within {target.resolution_minutes} min"
        )
        if candidate != priority:
            note += f" (the contract names no {priority.value} target; {candidate.value}'s apply)"
        return SlaDeadlines(
            reported_at + timedelta(minutes=target.response_minutes),
            reported_at + timedelta(minutes=target.resolution_minutes),
            note,
        )
    return SlaDeadlines(None, None, f"{tier.name} contract names no SLA targets: no deadlines")
