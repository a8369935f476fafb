"""The run's next move, decided from the stored run and now: retries, rollback, crash rules."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from aftercare.remediation.domain import run as machine
from aftercare.remediation.domain.run import Run
from aftercare.remediation.domain.runbook import IncidentFacts, parse_runbook

T0 = datetime(2026, 11, 30, 3, 0, tzinfo=UTC)


def a_run(**runbook_overrides: Any) -> Run:
    document: dict[str, Any] = {
        "name": "restart-service",
        "steps": [
            {"name": "restart", "action": "http_admin", "params": {"path": "/restart"}, "timeout_seconds": 10},
            {"name": "settle", "action": "wait", "params": {"seconds": 5}, "timeout_seconds": 10},
        ],
        "verification": {"attempts": 2, "interval_seconds": 3},
        "rollback": [
            {"name": "restore", "action": "http_admin", "params": {"path": "/restore"}, "timeout_seconds": 10}
        ],
    } | runbook_overrides
    return Run(
        run_id="run-1",
        incident=IncidentFacts(incident_id="i-1", tenant_id="acme", system="shop-web"),
        runbook=parse_runbook(document),
        runbook_version=1,
        status="active",
        created_at=T0,
    )


def execute(run: Run, now: datetime, outcome: machine.StepOutcome = "succeeded") -> Run:
    move = machine.decide(run, now)
    assert isinstance(move, machine.Execute), move
    started = machine.start_step(run, move, {}, None, now)
    return machine.finish_step(started, move, outcome, "out", now, now)


def test_steps_run_in_order_then_the_wait_is_a_due_time_then_verification() -> None:
    run = execute(a_run(), T0)
    run = execute(run, T0)  # the wait step
    assert machine.decide(run, T0) == machine.Sleep(T0 + timedelta(seconds=5))
    assert machine.decide(run, T0 + timedelta(seconds=5)) == machine.Probe(attempt=1)


def test_a_verified_fix_succeeds() -> None:
    run = execute(execute(a_run(), T0), T0)
    run = machine.finish_probe(run, 1, True, "HTTP 200", T0, T0 + timedelta(seconds=6))
    assert run.status == "succeeded"
    assert machine.decide(run, T0 + timedelta(seconds=7)) == machine.Done()


def test_failed_verification_is_retried_then_rolled_back_then_escalated() -> None:
    run = execute(execute(a_run(), T0), T0)
    now = T0 + timedelta(seconds=5)
    run = machine.finish_probe(run, 1, False, "HTTP 503", now, now)
    assert machine.decide(run, now) == machine.Sleep(now + timedelta(seconds=3))
    run = machine.finish_probe(run, 2, False, "HTTP 503", now, now + timedelta(seconds=3))
    assert run.phase == "rollback" and run.rolled_back
    run = execute(run, now + timedelta(seconds=4))
    move = machine.decide(run, now + timedelta(seconds=4))
    assert isinstance(move, machine.Escalate)
    assert "verification failed after 2 probe(s): HTTP 503" in move.reason
    assert run.rollback_outcome() == "succeeded"
    ended = machine.escalated(run, move, now)
    assert [(r.phase, r.step, r.outcome) for r in ended.reports()] == [
        ("fix", "restart", "succeeded"),
        ("fix", "settle", "succeeded"),
        ("verification", "verify", "failed"),
        ("rollback", "restore", "succeeded"),
    ]


def test_a_failed_rollback_is_reported_as_failed() -> None:
    run = execute(a_run(), T0, "failed")
    run = execute(run, T0, "failed")
    assert run.rollback_outcome() == "failed"
    assert isinstance(machine.decide(run, T0), machine.Escalate)


def test_a_clear_failure_is_retried_but_an_unclear_one_only_when_safe_to_repeat() -> None:
    steps = [{"name": "restart", "action": "http_admin", "params": {"path": "/r"}, "timeout_seconds": 5, "retries": 2}]
    run = execute(a_run(steps=steps), T0, "failed")
    assert run.phase == "fix"
    move = machine.decide(run, T0 + timedelta(seconds=2))
    assert isinstance(move, machine.Execute) and move.attempt == 2

    unclear = execute(a_run(steps=steps), T0, "unclear")
    assert unclear.phase == "rollback"
    assert "may have run" in (unclear.failure or "")

    safe = [dict(steps[0], safe_to_repeat=True)]
    assert execute(a_run(steps=safe), T0, "unclear").phase == "fix"


def test_a_started_step_found_after_a_crash_is_not_run_again_when_not_safe_to_repeat() -> None:
    run = a_run()
    move = machine.decide(run, T0)
    assert isinstance(move, machine.Execute)
    crashed = machine.start_step(run, move, {}, "http://x/restart", T0)  # stored; then the process died
    after = machine.decide(crashed, T0 + timedelta(minutes=1))
    assert isinstance(after, machine.Escalate)
    assert "not safe to repeat" in after.reason and after.interrupted is not None
    ended = machine.escalated(crashed, after, T0 + timedelta(minutes=1))
    assert ended.status == "escalated"
    assert ended.reports()[0].outcome == "not_run"


def test_a_started_step_that_is_safe_to_repeat_runs_again_after_a_crash() -> None:
    steps = [
        {
            "name": "clear",
            "action": "http_admin",
            "params": {"path": "/c"},
            "timeout_seconds": 5,
            "safe_to_repeat": True,
        }
    ]
    run = a_run(steps=steps)
    move = machine.decide(run, T0)
    assert isinstance(move, machine.Execute)
    crashed = machine.start_step(run, move, {}, None, T0)
    again = machine.decide(crashed, T0)
    assert isinstance(again, machine.Execute) and again.attempt == 2


def test_approval_waits_until_its_deadline_then_escalates() -> None:
    run = machine.request_approval(a_run(approval={"required": True, "timeout_seconds": 60}), "ap-1", T0)
    assert machine.decide(run, T0) == machine.Sleep(T0 + timedelta(seconds=60))
    move = machine.decide(run, T0 + timedelta(seconds=60))
    assert isinstance(move, machine.Escalate) and "nobody approved" in move.reason
    assert machine.escalated(run, move, T0).approval.decision == "expired"  # type: ignore[union-attr]


def test_only_named_approvers_may_decide_and_the_decision_is_recorded() -> None:
    run = machine.request_approval(a_run(approval={"required": True, "approvers": ["lead@acme.example"]}), "ap-1", T0)
    assert "only by lead@acme.example" in (machine.may_decide(run, "op-2", "other@acme.example") or "")
    assert machine.may_decide(run, "op-1", "lead@acme.example") is None
    approved = machine.decide_approval(run, True, "op-1", "go", T0)
    assert approved.status == "queued" and approved.approval and approved.approval.decided_by == "op-1"
    assert machine.may_decide(approved, "op-1", "lead@acme.example") is not None
    rejected = machine.decide_approval(run, False, "op-1", "not now", T0)
    assert rejected.status == "rejected" and machine.decide(rejected, T0) == machine.Done()
