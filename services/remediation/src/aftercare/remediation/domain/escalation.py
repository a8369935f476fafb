"""Escalation policies: who is paged when automation hands an incident to people, and who next
when nobody acknowledges in time. An escalation steps up one level per missed acknowledgement
deadline (a stored due time) until someone acknowledges or the levels run out."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from aftercare.events.remediation import EscalationContact, StepReport

EscalationStatus = Literal["paging", "acknowledged", "exhausted"]


class EscalationLevel(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(default="on-call", min_length=1, max_length=80)
    contacts: list[EscalationContact] = Field(min_length=1)
    ack_timeout_seconds: float = Field(gt=0, le=86400)


class EscalationPolicy(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    levels: list[EscalationLevel] = Field(min_length=1, max_length=10)


# Without a policy the incident still goes to people: the tenant's on-call rota, named generically.
DEFAULT_POLICY = EscalationPolicy(
    levels=[EscalationLevel(name="on-call", contacts=[EscalationContact(name="on-call")], ack_timeout_seconds=900)]
)


class Page(BaseModel):
    level: int
    level_name: str
    contacts: list[EscalationContact]
    paged_at: datetime
    acknowledge_by: datetime


class Escalation(BaseModel):
    model_config = ConfigDict(extra="ignore")

    escalation_id: str
    key: str = Field(description="What it escalates: 'run' (a run's end), 'page:<step>' or 'triage' per incident.")
    incident_id: str
    tenant_id: str
    reason: str
    run_id: str | None = None
    runbook: str | None = None
    tried: list[StepReport] = Field(default_factory=list)
    rollback_outcome: str | None = None
    policy: EscalationPolicy
    status: EscalationStatus = "paging"
    pages: list[Page] = Field(default_factory=list)
    next_at: datetime | None = None
    acknowledged_by: str | None = None
    acknowledged_at: datetime | None = None
    acknowledged_via: str | None = None

    @property
    def level(self) -> int:
        return self.pages[-1].level if self.pages else 0


def page_level(escalation: Escalation, level: int, now: datetime) -> tuple[Escalation, Page]:
    spec = escalation.policy.levels[level - 1]
    page = Page(
        level=level,
        level_name=spec.name,
        contacts=list(spec.contacts),
        paged_at=now,
        acknowledge_by=now + timedelta(seconds=spec.ack_timeout_seconds),
    )
    changed = escalation.model_copy(update={"pages": [*escalation.pages, page], "next_at": page.acknowledge_by})
    return changed, page


@dataclass(frozen=True)
class NextLevel:
    escalation: Escalation
    page: Page


@dataclass(frozen=True)
class Exhausted:
    escalation: Escalation


@dataclass(frozen=True)
class NotYet:
    until: datetime | None


def on_deadline(escalation: Escalation, now: datetime) -> NextLevel | Exhausted | NotYet:
    """The acknowledgement deadline of the current level: page the next level, if any."""
    if escalation.status != "paging" or escalation.next_at is None:
        return NotYet(None)
    if now < escalation.next_at:
        return NotYet(escalation.next_at)
    if escalation.level >= len(escalation.policy.levels):
        return Exhausted(escalation.model_copy(update={"status": "exhausted", "next_at": None}))
    changed, page = page_level(escalation, escalation.level + 1, now)
    return NextLevel(changed, page)


def acknowledge(escalation: Escalation, by: str, via: str, now: datetime) -> Escalation | None:
    """The escalation acknowledged (no further pages); None when it was already."""
    if escalation.status == "acknowledged":
        return None
    return escalation.model_copy(
        update={
            "status": "acknowledged",
            "next_at": None,
            "acknowledged_by": by,
            "acknowledged_at": now,
            "acknowledged_via": via,
        }
    )
