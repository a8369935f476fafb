"""Blast-radius limits: how many runs may touch one customer system at once and per hour.

The slots of one system are one stored document; admission is decided here from what it holds
and written back guarded by its version, so two runs can never both take the last slot.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from pydantic import BaseModel, Field

from aftercare.remediation.domain.runbook import BlastRadius

HOUR_S = 3600.0


class SystemSlots(BaseModel):
    holders: list[str] = Field(default_factory=list, description="Runs holding a slot now.")
    starts: list[float] = Field(default_factory=list, description="When runs were admitted (epoch s), last hour.")
    version: int = 0


@dataclass(frozen=True)
class Admitted:
    slots: SystemSlots


@dataclass(frozen=True)
class Hold:
    reason: str


@dataclass(frozen=True)
class Refuse:
    reason: str


def admission(
    slots: SystemSlots, run_id: str, limits: BlastRadius, system: str, now: datetime
) -> Admitted | Hold | Refuse:
    """May ``run_id`` start on ``system`` now? Admitting twice is harmless (same slot)."""
    if run_id in slots.holders:
        return Admitted(slots)
    cutoff = now.timestamp() - HOUR_S
    recent = [started for started in slots.starts if started > cutoff]
    if len(recent) >= limits.max_runs_per_system_per_hour:
        return Refuse(
            f"{len(recent)} runs already touched system {system} in the last hour "
            f"(limit {limits.max_runs_per_system_per_hour}); a person should look before more automation"
        )
    if len(slots.holders) >= limits.max_concurrent_per_system:
        return Hold(
            f"{len(slots.holders)} run(s) already working on system {system} (limit {limits.max_concurrent_per_system})"
        )
    return Admitted(
        SystemSlots(holders=[*slots.holders, run_id], starts=[*recent, now.timestamp()], version=slots.version + 1)
    )


def release(slots: SystemSlots, run_id: str) -> SystemSlots | None:
    """The slots without ``run_id``; None when it held none (nothing to write)."""
    if run_id not in slots.holders:
        return None
    return SystemSlots(
        holders=[holder for holder in slots.holders if holder != run_id], starts=slots.starts, version=slots.version + 1
    )


def without_finished(slots: SystemSlots, finished: set[str]) -> SystemSlots | None:
    """The slots without the holders in ``finished`` (runs that ended, or no longer exist, but
    never gave their slot back: a crash, or a lost reply to their last write); None when none
    of them holds a slot."""
    kept = [holder for holder in slots.holders if holder not in finished]
    if len(kept) == len(slots.holders):
        return None
    return SystemSlots(holders=kept, starts=slots.starts, version=slots.version + 1)
