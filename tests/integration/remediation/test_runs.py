"""Runs against the real customer system: a verified fix, a failed fix rolled back and escalated,
one run per incident, and approvals granted, rejected and timed out."""

from __future__ import annotations

import pytest

from .conftest import Scenario, as_role, of_type, restart_runbook
from kafka_helpers import unique_name, wait_until

pytestmark = pytest.mark.integration


async def test_a_fix_that_works_is_verified_and_announced_once_per_incident(scenario: Scenario) -> None:
    runbook = await scenario.put_runbook(restart_runbook(unique_name("restart")))
    scenario.customer.break_it("soft")

    incident_id = await scenario.incident(runbook)
    run = await scenario.run_ends(incident_id)

    assert run["status"] == "succeeded", run
    assert scenario.customer.count("restart-service") == 1
    assert scenario.customer.calls()["mode"] == "healthy"
    # A redelivered (or repeated) triage decision never starts a second run.
    await scenario.triage(incident_id, runbook)
    await scenario.triage(incident_id, runbook)
    events = await scenario.events_until(incident_id, "remediation.succeeded")
    assert [e["data"]["run_id"] for e in of_type(events, "remediation.started")] == [run["run_id"]]
    timeline = scenario.about_this_incident(await scenario.events(incident_id), incident_id)
    steps = of_type(timeline, "remediation.step_completed")
    assert [(s["data"]["phase"], s["data"]["step"], s["data"]["outcome"]) for s in steps] == [
        ("fix", "note", "succeeded"),
        ("fix", "restart the service", "succeeded"),
        ("verification", "verify", "succeeded"),
    ]
    [note] = of_type(timeline, "remediation.note_added")
    assert note["data"]["note"] == f"restarting for INC-{incident_id[-6:]}"
    succeeded = of_type(await scenario.events(incident_id), "remediation.succeeded")
    assert len(succeeded) == 1 and "HTTP 200" in succeeded[0]["data"]["verification"]
    assert scenario.customer.count("restart-service") == 1
    # The audit shows what each step sent and got back, and when.
    audit = await scenario.audit(incident_id)
    restart = next(r for r in audit["run"]["records"] if r["name"] == "restart the service")
    assert restart["target"] == scenario.customer.base_url + "/admin/restart-service"
    assert "HTTP 200" in restart["output"] and restart["finished_at"] >= restart["started_at"]


async def test_a_fix_that_does_not_work_is_rolled_back_and_escalated_with_what_was_tried(scenario: Scenario) -> None:
    runbook = await scenario.put_runbook(restart_runbook(unique_name("restart")))
    scenario.customer.break_it("hard")

    incident_id = await scenario.incident(runbook)
    run = await scenario.run_ends(incident_id)

    assert run["status"] == "escalated"
    assert "verification failed after 2 probe(s)" in run["outcome"]
    assert scenario.customer.count("restart-service") == 1
    assert scenario.customer.count("restore-backup") == 1
    events = await scenario.events_until(incident_id, "incident.escalated")
    [escalated] = of_type(events, "incident.escalated")
    data = escalated["data"]
    assert data["level"] == 1 and data["run_id"] == run["run_id"]
    assert data["rollback_outcome"] == "succeeded"
    assert [(t["phase"], t["step"], t["outcome"]) for t in data["tried"]] == [
        ("fix", "note", "succeeded"),
        ("fix", "restart the service", "succeeded"),
        ("verification", "verify", "failed"),
        ("rollback", "restore the backup", "succeeded"),
    ]
    assert "HTTP 503" in data["tried"][2]["output"]
    assert data["acknowledge_url"].startswith(scenario.remediation.base_url)
    assert len(of_type(events, "remediation.failed")) == 1
    assert not of_type(events, "remediation.succeeded")


async def test_a_run_without_the_tenants_credential_is_refused_by_the_system_and_escalated(scenario: Scenario) -> None:
    runbook = await scenario.put_runbook(restart_runbook(unique_name("restart"), rollback=[]))
    await scenario.api.delete(f"/v1/tenants/{scenario.tenant_id}/systems/shop-web/credential", headers=as_role("admin"))
    scenario.customer.break_it("soft")

    run = await scenario.run_ends(await scenario.incident(runbook))

    assert run["status"] == "escalated"
    assert "HTTP 401" in run["outcome"]
    assert scenario.customer.calls()["mode"] == "soft"


async def test_approval_granted_runs_the_fix_and_records_who_and_when(scenario: Scenario) -> None:
    runbook = await scenario.put_runbook(
        restart_runbook(unique_name("risky"), approval={"required": True, "timeout_seconds": 300})
    )
    scenario.customer.break_it("soft")
    incident_id = await scenario.incident(runbook)

    async def awaiting() -> dict[str, object] | None:
        run = (await scenario.audit(incident_id)).get("run")
        return run if run and run["status"] == "awaiting_approval" else None

    run = await wait_until(awaiting, timeout=60, message="approval requested")
    assert scenario.customer.count("restart-service") == 0
    refused = await scenario.api.post(f"/v1/runs/{run['run_id']}/approve", headers=as_role("viewer"))
    assert refused.status_code == 403 and refused.headers["content-type"] == "application/problem+json"

    answer = await scenario.api.post(
        f"/v1/runs/{run['run_id']}/approve", json={"note": "go ahead"}, headers=as_role("responder")
    )
    assert answer.status_code == 200, answer.text
    again = await scenario.api.post(f"/v1/runs/{run['run_id']}/approve", headers=as_role("responder"))
    assert again.status_code == 409

    ended = await scenario.run_ends(incident_id)
    assert ended["status"] == "succeeded"
    assert ended["approval"]["decision"] == "approved" and ended["approval"]["decided_by"] == "op-responder"
    assert ended["approval"]["decided_at"] is not None
    assert scenario.customer.count("restart-service") == 1
    events = scenario.about_this_incident(
        await scenario.events_until(incident_id, "remediation.succeeded"), incident_id
    )
    [requested] = of_type(events, "remediation.approval_requested")
    assert requested["data"]["run_id"] == run["run_id"] and requested["data"]["runbook"] == runbook
    [granted] = of_type(events, "remediation.approval_granted")
    assert granted["data"]["by"] == "op-responder" and granted["data"]["note"] == "go ahead"


async def test_approval_rejected_never_touches_the_system(scenario: Scenario) -> None:
    runbook = await scenario.put_runbook(restart_runbook(unique_name("risky"), approval={"required": True}))
    scenario.customer.break_it("soft")
    incident_id = await scenario.incident(runbook)
    run = await wait_until(lambda: _awaiting(scenario, incident_id), timeout=60, message="approval requested")

    answer = await scenario.api.post(
        f"/v1/runs/{run['run_id']}/reject", json={"note": "customer freeze"}, headers=as_role("responder")
    )
    assert answer.status_code == 200

    ended = await scenario.run_ends(incident_id)
    assert ended["status"] == "rejected" and "customer freeze" in ended["outcome"]
    assert scenario.customer.count("restart-service") == 0
    events = scenario.about_this_incident(
        await scenario.events_until(incident_id, "remediation.approval_rejected"), incident_id
    )
    [rejected] = of_type(events, "remediation.approval_rejected")
    assert rejected["data"]["by"] == "op-responder" and rejected["data"]["reason"] == "customer freeze"
    assert len(of_type(events, "remediation.approval_requested")) == 1


async def test_approval_not_given_in_time_escalates(scenario: Scenario) -> None:
    runbook = await scenario.put_runbook(
        restart_runbook(unique_name("risky"), approval={"required": True, "timeout_seconds": 2})
    )
    scenario.customer.break_it("soft")
    incident_id = await scenario.incident(runbook)

    ended = await scenario.run_ends(incident_id)

    assert ended["status"] == "escalated" and "nobody approved" in ended["outcome"]
    assert ended["approval"]["decision"] == "expired"
    assert scenario.customer.count("restart-service") == 0
    events = await scenario.events_until(incident_id, "incident.escalated")
    assert "nobody approved" in of_type(events, "incident.escalated")[0]["data"]["reason"]


async def _awaiting(scenario: Scenario, incident_id: str) -> dict[str, object] | None:
    run = (await scenario.audit(incident_id)).get("run")
    return run if run and run["status"] == "awaiting_approval" else None


async def test_the_kill_switch_stops_automation_for_the_tenant(scenario: Scenario) -> None:
    runbook = await scenario.put_runbook(restart_runbook(unique_name("restart")))
    switched = await scenario.api.put(
        f"/v1/tenants/{scenario.tenant_id}/kill-switch",
        json={"paused": True, "reason": "migration tonight"},
        headers=as_role("admin"),
    )
    assert switched.status_code == 200
    scenario.customer.break_it("soft")

    ended = await scenario.run_ends(await scenario.incident(runbook))

    assert ended["status"] == "escalated" and "migration tonight" in ended["outcome"]
    assert scenario.customer.count("restart-service") == 0


async def test_runbooks_are_versioned_and_invalid_ones_refused_saying_what_is_wrong(scenario: Scenario) -> None:
    name = unique_name("api")
    api = scenario.api
    assert (await api.put(f"/v1/runbooks/{name}", json=restart_runbook(name))).status_code == 401
    viewer = await api.put(f"/v1/runbooks/{name}", json=restart_runbook(name), headers=as_role("viewer"))
    assert viewer.status_code == 403 and viewer.headers["content-type"] == "application/problem+json"

    yaml_text = f"""
name: {name}
steps:
  - name: restart
    action: shell
    params: {{command: "systemctl restart {{incident.title}}"}}
  - name: clear
    action: http_admin
    params: {{path: /clear-cache}}
verification: {{expect_status: [200]}}
"""
    refused = await api.put(
        f"/v1/runbooks/{name}", content=yaml_text, headers=as_role("admin") | {"Content-Type": "application/yaml"}
    )
    assert refused.status_code == 422 and refused.headers["content-type"] == "application/problem+json"
    problem = refused.json()
    assert problem["type"].endswith("/invalid-runbook")
    assert {"field": "steps.1.timeout_seconds", "message": "every step needs a timeout_seconds"} in problem["errors"]
    assert any(e["field"] == "steps.0.action" and "unknown action 'shell'" in e["message"] for e in problem["errors"])
    assert (await api.get(f"/v1/runbooks/{name}", headers=as_role("viewer"))).status_code == 404

    first = await api.put(f"/v1/runbooks/{name}", json=restart_runbook(name), headers=as_role("admin"))
    same = await api.put(f"/v1/runbooks/{name}", json=restart_runbook(name), headers=as_role("admin"))
    changed = await api.put(
        f"/v1/runbooks/{name}", json=restart_runbook(name, description="v2"), headers=as_role("admin")
    )
    assert (first.status_code, first.json()["version"]) == (201, 1)
    assert (same.status_code, same.json()["version"]) == (200, 1)
    assert (changed.status_code, changed.json()["version"]) == (201, 2)
    versions = (await api.get(f"/v1/runbooks/{name}/versions", headers=as_role("viewer"))).json()["versions"]
    assert [(v["version"], v["created_by"]) for v in versions] == [(1, "op-admin"), (2, "op-admin")]

    async def planned() -> list[dict[str, object]] | None:
        # The tenant's systems arrive on their own topic: wait until remediation knows them.
        plan = await api.post(
            f"/v1/runbooks/{name}/dry-run",
            json={"tenant_id": scenario.tenant_id, "system": "shop-web", "number": "INC-9"},
            headers=as_role("viewer"),
        )
        steps: list[dict[str, object]] = plan.json()["steps"]
        return steps if steps[1]["target"] else None

    steps = await wait_until(planned, timeout=60, message="dry run with the system's admin endpoint")
    assert steps[0]["params"] == {"text": "restarting for INC-9"}
    assert steps[1]["target"] == scenario.customer.base_url + "/admin/restart-service"
    assert scenario.customer.count("restart-service") == 0  # a dry run touches nothing


async def test_make_runs_demo_seeds_give_acme_a_policy_and_its_system_a_credential(scenario: Scenario) -> None:
    policy = await scenario.api.get("/v1/tenants/acme/escalation-policy", headers=as_role("viewer"))
    assert policy.status_code == 200, policy.text
    first = policy.json()["policy"]["levels"][0]
    assert first["contacts"] == [{"name": "Sam On-Call", "email": "sam.oncall@support.example", "phone": None}]
    credential = await scenario.api.get("/v1/tenants/acme/systems/billing-api/credential", headers=as_role("admin"))
    assert credential.status_code == 200, credential.text
    assert credential.json()["set_by"] == "seed:system-credentials.json"
    assert "bearer_token" not in credential.json()
