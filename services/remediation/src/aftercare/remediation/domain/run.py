"""A runbook run as a state machine: what happens next, decided from the stored run and ``now``.

The run is stored after every transition, so any process can pick it up where the last one
stopped. The cursor (``phase``, ``index``) always points at what is to do next; the records are
the history, one per attempt. Rules that keep it trustworthy:

* an action with an effect outside (an HTTP call to the customer's system) is recorded as
  ``started`` before it runs; finding such a record without an end means a process died during
  it. If the step is safe to repeat it runs again; if not, the run stops and escalates, saying
  the step may have run — it is never run a second time;
* a step that failed with a clear answer may be retried (``retries``); a step whose outcome is
  unclear (timed out, connection lost) is retried only if it is safe to repeat;
* a failed fix step or a failed verification leads to the rollback steps, then to escalation
  carrying what was tried; a verified fix ends the run as succeeded.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from aftercare.events.remediation import StepPhase, StepReport
from aftercare.remediation.domain.runbook import IncidentFacts, Runbook, Step

RunStatus = Literal["awaiting_approval", "queued", "active", "succeeded", "escalated", "rejected"]
FINAL: frozenset[str] = frozenset({"succeeded", "escalated", "rejected"})
StepOutcome = Literal["succeeded", "failed", "unclear"]
RecordStatus = Literal["started", "succeeded", "failed", "unclear", "not_run"]

# Actions whose effect is outside our store: recorded as started before they run.
EXTERNAL_EFFECT = frozenset({"http_admin"})


class StepRecord(BaseModel):
    model_config = ConfigDict(extra="ignore")

    phase: StepPhase
    index: int
    name: str
    action: str
    attempt: int = 1
    status: RecordStatus
    params: dict[str, str | int | float] = Field(default_factory=dict)
    target: str | None = None
    started_at: datetime
    finished_at: datetime | None = None
    output: str = ""

    @property
    def duration_ms(self) -> float | None:
        if self.finished_at is None:
            return None
        return (self.finished_at - self.started_at).total_seconds() * 1000


class ApprovalState(BaseModel):
    model_config = ConfigDict(extra="ignore")

    approval_id: str
    requested_at: datetime
    expires_at: datetime
    approvers: list[str] = Field(default_factory=list)
    decision: Literal["approved", "rejected", "expired"] | None = None
    decided_by: str | None = None
    decided_at: datetime | None = None
    note: str = ""


class Run(BaseModel):
    model_config = ConfigDict(extra="ignore")

    run_id: str
    incident: IncidentFacts
    runbook: Runbook
    runbook_version: int
    status: RunStatus
    phase: StepPhase = "fix"
    index: int = 0
    records: list[StepRecord] = Field(default_factory=list)
    approval: ApprovalState | None = None
    created_at: datetime
    queued_at: datetime | None = None
    admitted_at: datetime | None = None
    finished_at: datetime | None = None
    resume_at: datetime | None = Field(default=None, description="Sleep until then (wait step, retry, probe interval).")
    failure: str | None = Field(default=None, description="Why the run went to rollback.")
    outcome: str | None = Field(default=None, description="How it ended, for people.")
    rolled_back: bool = False

    @property
    def tenant_id(self) -> str:
        return self.incident.tenant_id

    @property
    def system(self) -> str | None:
        return self.incident.system

    def steps_of(self, phase: StepPhase) -> list[Step]:
        return list(self.runbook.steps) if phase == "fix" else list(self.runbook.rollback)

    def current_step(self) -> Step | None:
        if self.phase == "verification":
            return None
        steps = self.steps_of(self.phase)
        return steps[self.index] if self.index < len(steps) else None

    def latest(self, phase: StepPhase, index: int) -> StepRecord | None:
        for record in reversed(self.records):
            if record.phase == phase and record.index == index:
                return record
        return None

    def rollback_outcome(self) -> str:
        if not self.rolled_back:
            return "not_needed"
        if not self.runbook.rollback:
            return "none_defined"
        ended = [record for record in self.records if record.phase == "rollback"]
        if any(record.status != "succeeded" for record in ended) or len(
            {record.index for record in ended if record.status == "succeeded"}
        ) < len(self.runbook.rollback):
            return "failed"
        return "succeeded"

    def reports(self) -> list[StepReport]:
        """Each step's last attempt, as people read them in an escalation."""
        last: dict[tuple[str, int], StepRecord] = {}
        attempts: dict[tuple[str, int], int] = {}
        for record in self.records:
            key = (record.phase, record.index)
            last[key] = record
            attempts[key] = attempts.get(key, 0) + 1
        return [
            StepReport(
                phase=record.phase,
                index=record.index,
                step=record.name,
                action=record.action,
                outcome="not_run" if record.status == "not_run" else record.status,
                output=record.output[:2000],
                attempts=attempts[key],
                duration_ms=record.duration_ms,
            )
            for key, record in last.items()
        ]


# --- what to do next -----------------------------------------------------------------------


@dataclass(frozen=True)
class Sleep:
    until: datetime


@dataclass(frozen=True)
class Admit:
    """Queued: ask the blast-radius limits for a slot."""


@dataclass(frozen=True)
class Execute:
    phase: StepPhase
    index: int
    step: Step
    attempt: int


@dataclass(frozen=True)
class Probe:
    attempt: int


@dataclass(frozen=True)
class Succeed:
    pass


@dataclass(frozen=True)
class Escalate:
    reason: str
    interrupted: StepRecord | None = None


@dataclass(frozen=True)
class Done:
    pass


Move = Sleep | Admit | Execute | Probe | Succeed | Escalate | Done


def decide(run: Run, now: datetime) -> Move:
    """The next move of ``run`` at ``now``."""
    if run.status in FINAL:
        return Done()
    if run.status == "awaiting_approval":
        assert run.approval is not None
        if now >= run.approval.expires_at:
            return Escalate(f"nobody approved runbook {run.runbook.name} before {run.approval.expires_at.isoformat()}")
        return Sleep(run.approval.expires_at)
    if run.status == "queued":
        since = run.queued_at or run.created_at
        if now >= since + timedelta(seconds=run.runbook.blast_radius.queue_timeout_seconds):
            return Escalate(
                f"no free slot for system {run.system} within "
                f"{run.runbook.blast_radius.queue_timeout_seconds:.0f}s (blast-radius limit)"
            )
        return Admit()
    if run.resume_at is not None and now < run.resume_at:
        return Sleep(run.resume_at)
    if run.phase == "verification":
        done = [record for record in run.records if record.phase == "verification"]
        return Probe(attempt=len(done) + 1)
    step = run.current_step()
    if step is None:
        if run.phase == "rollback":
            return Escalate(f"{run.failure or 'the fix failed'}; rollback {run.rollback_outcome().replace('_', ' ')}")
        raise AssertionError("a fix phase past its last step must have moved to verification")
    last = run.latest(run.phase, run.index)
    if last is not None and last.status == "started":
        if not step.safe_to_repeat:
            return Escalate(
                f"step '{step.name}' ({step.action}) was started at {last.started_at.isoformat()} and its result "
                "is unknown: the remediation process stopped during it. It is not safe to repeat, so it was not "
                "run again; check the system by hand",
                interrupted=last,
            )
        return Execute(run.phase, run.index, step, attempt=last.attempt + 1)
    attempt = 1 if last is None else last.attempt + 1
    return Execute(run.phase, run.index, step, attempt=attempt)


# --- transitions (each returns the changed run; the caller stores it) ----------------------


def request_approval(run: Run, approval_id: str, now: datetime) -> Run:
    approval = run.runbook.approval
    return run.model_copy(
        update={
            "status": "awaiting_approval",
            "approval": ApprovalState(
                approval_id=approval_id,
                requested_at=now,
                expires_at=now + timedelta(seconds=approval.timeout_seconds),
                approvers=list(approval.approvers),
            ),
        }
    )


class DecisionRefused(ValueError):
    pass


def may_decide(run: Run, operator_id: str, operator_email: str | None) -> str | None:
    """None when this operator may approve or reject the run; otherwise why not."""
    if run.status != "awaiting_approval" or run.approval is None or run.approval.decision is not None:
        return f"run {run.run_id} is not waiting for an approval (it is {run.status})"
    allowed = run.approval.approvers
    if allowed and operator_id not in allowed and (operator_email or "") not in allowed:
        return f"runbook {run.runbook.name} may be approved only by {', '.join(allowed)}"
    return None


def decide_approval(run: Run, approved: bool, by: str, note: str, now: datetime) -> Run:
    """Record a person's decision; approved runs queue for a slot, rejected ones end."""
    assert run.approval is not None
    approval = run.approval.model_copy(
        update={"decision": "approved" if approved else "rejected", "decided_by": by, "decided_at": now, "note": note}
    )
    if approved:
        return run.model_copy(update={"approval": approval, "status": "queued", "queued_at": now})
    return run.model_copy(
        update={
            "approval": approval,
            "status": "rejected",
            "finished_at": now,
            "outcome": f"rejected by {by}" + (f": {note}" if note else ""),
        }
    )


def admit(run: Run, now: datetime) -> Run:
    return run.model_copy(update={"status": "active", "admitted_at": now})


def start_step(run: Run, move: Execute, params: dict[str, str | int | float], target: str | None, now: datetime) -> Run:
    record = StepRecord(
        phase=move.phase,
        index=move.index,
        name=move.step.name,
        action=move.step.action,
        attempt=move.attempt,
        status="started",
        params=params,
        target=target,
        started_at=now,
    )
    return run.model_copy(update={"records": [*run.records, record]})


def finish_step(
    run: Run,
    move: Execute,
    outcome: StepOutcome,
    output: str,
    started_at: datetime,
    now: datetime,
    params: dict[str, str | int | float] | None = None,
    target: str | None = None,
) -> Run:
    """Record a step's end and move the cursor: next step, retry, rollback or escalation."""
    records = list(run.records)
    last = run.latest(move.phase, move.index)
    record = StepRecord(
        phase=move.phase,
        index=move.index,
        name=move.step.name,
        action=move.step.action,
        attempt=move.attempt,
        status=outcome,
        params=params if params is not None else (last.params if last else {}),
        target=target if target is not None else (last.target if last else None),
        started_at=started_at,
        finished_at=now,
        output=output,
    )
    if last is not None and last.status == "started" and last.attempt == move.attempt:
        records[len(records) - 1 - records[::-1].index(last)] = record
    else:
        records.append(record)
    update: dict[str, object] = {"records": records, "resume_at": None}
    step = move.step
    if outcome == "succeeded":
        index = move.index + 1
        if step.action == "wait":
            update["resume_at"] = now + timedelta(seconds=float(step.params["seconds"]))
        if move.phase == "fix" and index >= len(run.runbook.steps):
            update |= {"phase": "verification", "index": 0}
        else:
            update["index"] = index
        return run.model_copy(update=update)
    retry_allowed = move.attempt <= step.retries and (outcome == "failed" or step.safe_to_repeat)
    if retry_allowed:
        update["resume_at"] = now + timedelta(seconds=min(2.0**move.attempt, 30.0))
        return run.model_copy(update=update)
    if move.phase == "fix":
        unclear = " (it may have run: its outcome is unclear)" if outcome == "unclear" else ""
        update |= {
            "phase": "rollback",
            "index": 0,
            "rolled_back": True,
            "failure": f"step '{step.name}' {outcome}{unclear}: {output[:300]}",
        }
        return run.model_copy(update=update)
    # A failed rollback step: the others still run, and the escalation says the rollback failed.
    update["index"] = move.index + 1
    return run.model_copy(update=update)


def finish_probe(run: Run, attempt: int, healthy: bool, output: str, started_at: datetime, now: datetime) -> Run:
    record = StepRecord(
        phase="verification",
        index=0,
        name="verify",
        action="probe",
        attempt=attempt,
        status="succeeded" if healthy else "failed",
        started_at=started_at,
        finished_at=now,
        output=output,
    )
    update: dict[str, object] = {"records": [*run.records, record], "resume_at": None}
    if healthy:
        update |= {"status": "succeeded", "finished_at": now, "outcome": f"verified: {output}"}
    elif attempt < run.runbook.verification.attempts:
        update["resume_at"] = now + timedelta(seconds=run.runbook.verification.interval_seconds)
    else:
        update |= {
            "phase": "rollback",
            "index": 0,
            "rolled_back": True,
            "failure": f"verification failed after {attempt} probe(s): {output[:300]}",
        }
    return run.model_copy(update=update)


def escalated(run: Run, move: Escalate, now: datetime) -> Run:
    records = list(run.records)
    if move.interrupted is not None:
        marked = move.interrupted.model_copy(
            update={"status": "not_run", "finished_at": now, "output": "result unknown; not repeated"}
        )
        records = [marked if record is move.interrupted else record for record in records]
    approval = run.approval
    if approval is not None and approval.decision is None:
        approval = approval.model_copy(update={"decision": "expired", "decided_at": now})
    return run.model_copy(
        update={
            "status": "escalated",
            "finished_at": now,
            "outcome": move.reason,
            "records": records,
            "approval": approval,
        }
    )
