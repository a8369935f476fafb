"""The closed loop of issue 12, through the public edges only: the demo customer system is broken
through its HTTP break endpoint (what ``make demo-break`` and ``make demo-break-hard`` call), and
with nobody touching anything the stack notices, fixes or escalates, and tells people.

Observed at the edges: intake's public API (the customer's API key), the customer system's own
count of admin calls, Mailpit's API (the customer's and the on-call people's mail), remediation's
operator API, and the Kafka topics read as an observer (no consumer group)."""

from __future__ import annotations

import json
import re
from typing import Any

import httpx
import pytest
import yaml

from aftercare.events import topics

from .conftest import DEMO_TENANT, ROOT, DemoStack, Operator
from kafka_helpers import Infrastructure, read_all, wait_until

# The first e2e test also waits for the session's broker and store and for the stack (see conftest).
pytestmark = [pytest.mark.e2e, pytest.mark.timeout(600)]

SYSTEM = "billing-api"
# infra/seed/escalation-policies/acme.yaml, which make run stores for the demo tenant.
POLICY_SEED = ROOT / "infra/seed/escalation-policies" / f"{DEMO_TENANT}.yaml"


async def events(infrastructure: Infrastructure, topic: str, incident_id: str | None = None) -> list[dict[str, Any]]:
    """Every event on ``topic`` once (the outbox publishes at least once), optionally of one incident."""
    unique: dict[str, dict[str, Any]] = {}
    for record in await read_all(infrastructure.bootstrap_servers, topic, timeout=30):
        event = json.loads(record.value)
        if incident_id is None or event.get("incident_id") == incident_id:
            unique.setdefault(event["id"], event)
    return list(unique.values())


def diagnostic_incidents(stack: DemoStack) -> dict[str, dict[str, Any]]:
    answer = httpx.get(
        stack.url("intake", "/v1/incidents"),
        headers=stack.customer_api(),
        params={"channel": "diagnostic", "limit": 200},
        timeout=10,
    )
    assert answer.status_code == 200, answer.text
    return {item["incident_id"]: item for item in answer.json()["items"] if item["system"] == SYSTEM}


def incident(stack: DemoStack, incident_id: str) -> dict[str, Any]:
    answer = httpx.get(stack.url("intake", f"/v1/incidents/{incident_id}"), headers=stack.customer_api(), timeout=10)
    assert answer.status_code == 200, answer.text
    result: dict[str, Any] = answer.json()
    return result


async def no_problem_open(stack: DemoStack, infrastructure: Infrastructure) -> None:
    """Regular diagnostics have cleared every problem they opened on the system (two good answers
    after the fix): only then does a new break open a new incident."""

    async def quiet() -> bool:
        on_triage = [
            e for e in await events(infrastructure, topics.TRIAGE) if e["tenant_id"] == stack.tenant["tenant_id"]
        ]
        detected = {e["incident_id"] for e in on_triage if e["type"] == "problem.detected"}
        cleared = {e["incident_id"] for e in on_triage if e["type"] == "problem.cleared"}
        return detected <= cleared

    await wait_until(quiet, timeout=60, interval=1, message="regular diagnostics cleared every problem they opened")


async def break_and_wait_for_incident(stack: DemoStack, mode: str) -> dict[str, Any]:
    before = set(diagnostic_incidents(stack))
    async with httpx.AsyncClient(timeout=10) as client:
        answer = await client.post(f"{stack.customer_system.base_url}/admin/break", params={"mode": mode})
        answer.raise_for_status()

    def opened() -> dict[str, Any] | None:
        new = [item for incident_id, item in diagnostic_incidents(stack).items() if incident_id not in before]
        return new[0] if new else None

    found: dict[str, Any] = await wait_until(
        opened, timeout=90, interval=1, message=f"an incident opened by regular diagnostics for {SYSTEM}"
    )
    return found


async def wait_for_status(stack: DemoStack, incident_id: str, status: str, timeout: float = 120) -> dict[str, Any]:  # noqa: ASYNC109
    def reached() -> dict[str, Any] | None:
        current = incident(stack, incident_id)
        return current if current["status"] == status else None

    try:
        found: dict[str, Any] = await wait_until(reached, timeout=timeout, interval=1, message=f"status {status}")
    except AssertionError as error:
        raise AssertionError(f"{error}\nnow: {incident(stack, incident_id)['timeline']}\n{stack.logs()}") from None
    return found


def thread_of(stack: DemoStack, number: str, address: str) -> list[tuple[dict[str, Any], dict[str, list[str]]]]:
    """The messages about one incident to one address with their headers, oldest first."""
    return [(message, stack.mailbox.headers(message["ID"])) for message in stack.mailbox.to(address, f"[{number}]")]


async def test_a_broken_system_is_noticed_fixed_verified_resolved_and_explained_in_one_thread(
    demo_stack: DemoStack, infrastructure: Infrastructure
) -> None:
    stack = demo_stack
    system = stack.customer_system
    restarts_before = system.count("restart-service")
    await no_problem_open(stack, infrastructure)

    opened = await break_and_wait_for_incident(stack, "soft")
    incident_id, number = opened["incident_id"], opened["number"]
    assert opened["channel"] == "diagnostic"
    assert opened["source"] == "diagnostics"

    resolved = await wait_for_status(stack, incident_id, "resolved")
    assert resolved["priority"] == "P1"

    # Remediation called the admin endpoint exactly once, and the system is healthy again.
    assert system.count("restart-service") == restarts_before + 1
    async with httpx.AsyncClient(timeout=10) as client:
        health = await client.get(system.health_url)
    assert (health.status_code, health.json()["status"]) == (200, "healthy")

    # Opened by regular diagnostics, triaged with the runbook, fixed, verified: as the services announced it.
    on_triage = await events(infrastructure, topics.TRIAGE, incident_id)
    assert [e["data"]["system"] for e in on_triage if e["type"] == "problem.detected"] == [SYSTEM]
    (triaged,) = [e["data"] for e in on_triage if e["type"] == "incident.triaged"]
    assert (triaged["runbook"], triaged["system"]) == ("restart-service", SYSTEM)
    on_remediation = await events(infrastructure, topics.REMEDIATION, incident_id)
    steps = [
        (e["data"]["phase"], e["data"]["step"], e["data"]["outcome"])
        for e in on_remediation
        if e["type"] == "remediation.step_completed"
    ]
    assert ("fix", "restart the service", "succeeded") in steps
    assert not [step for step in steps if step[0] == "rollback"], steps
    (succeeded,) = [e["data"] for e in on_remediation if e["type"] == "remediation.succeeded"]
    assert succeeded["runbook"] == "restart-service"
    assert "HTTP 200" in succeeded["verification"]

    # The contact's mail: noticed, fixing, resolved, in one thread.
    def resolved_mail_arrived() -> bool:
        return bool(stack.mailbox.to(stack.contact_email, f"[{number}] Resolved:"))

    await wait_until(
        resolved_mail_arrived, timeout=60, interval=1, message=f"the 'resolved' email of {number} at Mailpit"
    )
    thread = thread_of(stack, number, stack.contact_email)
    subjects = [message["Subject"] for message, _ in thread]
    for expected in ("We received your report:", "We are fixing it:", "Resolved:"):
        assert sum(expected in subject for subject in subjects) == 1, subjects
    root = next(headers for message, headers in thread if "We received your report:" in message["Subject"])
    assert "In-Reply-To" not in root and "References" not in root, root
    (root_id,) = root["Message-Id"]
    assert len({headers["Message-Id"][0] for _, headers in thread}) == len(thread)
    for message, headers in thread:
        if headers is root:
            continue
        assert headers["In-Reply-To"] == [root_id], (message["Subject"], headers.get("In-Reply-To"))
        assert root_id in headers["References"][0].split(), (message["Subject"], headers.get("References"))
        assert headers["X-Aftercare-Incident"] == [incident_id]

    # The incident's timeline through the customer's API, in the order it happened.
    kinds = [entry["kind"] for entry in resolved["timeline"]]
    firsts = [kinds.index(kind) for kind in ("reported", "triaged", "remediating", "resolved")]
    assert firsts == sorted(firsts), kinds
    assert resolved["timeline"][0]["channel"] == "diagnostic"
    # Resolved by remediation's verification or, when two good probes (2 s apart here) come first,
    # by regular diagnostics clearing the problem: either way after the one restart above.
    resolutions = [entry["by"] for entry in resolved["timeline"] if entry["kind"] == "resolved"]
    assert resolutions and set(resolutions) <= {"remediation", "triage"}, resolved["timeline"]


async def seeded_escalation_policy(stack: DemoStack, operator: Operator) -> dict[str, Any]:
    """The demo tenant's policy as remediation stored it from the seed (no API call sets it).

    The operator was just registered at intake: remediation knows it once the operator event has
    reached its directory (401 until then), so the first answers may be refusals."""
    async with httpx.AsyncClient(timeout=10) as client:

        async def answered() -> httpx.Response | None:
            answer = await client.get(
                stack.url("remediation", f"/v1/tenants/{DEMO_TENANT}/escalation-policy"), headers=operator.auth()
            )
            return None if answer.status_code == 401 else answer

        answer = await wait_until(answered, timeout=60, interval=0.5, message="remediation to know the operator")
    assert answer.status_code == 200, answer.text
    policy: dict[str, Any] = answer.json()["policy"]
    return policy


async def test_a_fault_the_runbook_cannot_fix_is_rolled_back_escalated_and_acknowledged_from_the_page(
    demo_stack: DemoStack, infrastructure: Infrastructure, demo_operator: Operator
) -> None:
    stack = demo_stack
    system = stack.customer_system
    policy = await seeded_escalation_policy(stack, demo_operator)
    seeded = yaml.safe_load(POLICY_SEED.read_text())
    on_call = seeded["levels"][0]["contacts"][0]["email"]
    assert [level["name"] for level in policy["levels"]] == [level["name"] for level in seeded["levels"]]
    await no_problem_open(stack, infrastructure)
    restarts, restores = system.count("restart-service"), system.count("restore-backup")
    client = httpx.AsyncClient(timeout=10)
    try:
        opened = await break_and_wait_for_incident(stack, "hard")
        incident_id, number = opened["incident_id"], opened["number"]
        escalated = await wait_for_status(stack, incident_id, "escalated")

        # Tried once, verification failed, rolled back once.
        assert system.count("restart-service") == restarts + 1
        assert system.count("restore-backup") == restores + 1
        on_remediation = await events(infrastructure, topics.REMEDIATION, incident_id)
        steps = [
            (e["data"]["phase"], e["data"]["outcome"])
            for e in on_remediation
            if e["type"] == "remediation.step_completed"
        ]
        assert ("verification", "failed") in steps and ("rollback", "succeeded") in steps, steps
        (announced,) = [e["data"] for e in on_remediation if e["type"] == "incident.escalated"]
        assert announced["level"] == 1
        assert [contact["email"] for contact in announced["contacts"]] == [on_call]
        assert [entry["kind"] for entry in escalated["timeline"]].count("escalated") == 1

        # The page reaches the on-call person at Mailpit with the acknowledge link.
        page = (
            await wait_until(
                lambda: stack.mailbox.to(on_call, f"[{number}] PAGE level 1"),
                timeout=60,
                interval=1,
                message=f"the page for {number} at Mailpit",
            )
        )[0]
        text = stack.mailbox.message(page["ID"])["Text"]
        link = re.search(r"(http://\S+/v1/escalations/\S+/acknowledge\?token=\S+)", text)
        assert link, text
        assert link.group(1).startswith(stack.url("remediation"))

        # Following the link shows a button (a GET changes nothing); pressing it acknowledges.
        page_answer = await client.get(link.group(1))
        assert page_answer.status_code == 200 and "<form method='post'>" in page_answer.text, page_answer.text
        form_token = re.search(r"name='token' value='([^']+)'", page_answer.text)
        assert form_token
        pressed = await client.post(
            link.group(1).split("?")[0], data={"token": form_token.group(1)}, headers={"Accept": "text/html"}
        )
        assert pressed.status_code == 200 and "Acknowledged" in pressed.text, pressed.text

        audit = await client.get(
            stack.url("remediation", f"/v1/incidents/{incident_id}/audit"), headers=demo_operator.auth()
        )
        assert audit.status_code == 200, audit.text
        (escalation,) = audit.json()["escalations"]
        assert (escalation["status"], escalation["acknowledged_via"]) == ("acknowledged", "link")
        assert escalation["rollback_outcome"] == "succeeded"
        # The customer's API shows the incident taken by a person.
        await wait_for_status(stack, incident_id, "acknowledged", timeout=60)

        # The customer heard that people took over, in the incident's thread.
        await wait_until(
            lambda: stack.mailbox.to(stack.contact_email, f"[{number}] Our engineers are on it:"),
            timeout=60,
            interval=1,
            message=f"the customer's 'engineers are on it' email of {number}",
        )
    finally:
        (await client.post(f"{system.base_url}/admin/heal")).raise_for_status()
        await client.aclose()
