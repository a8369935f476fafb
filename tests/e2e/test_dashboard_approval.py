"""The approval path driven from the operators' dashboard in a real browser (Debian's headless
chromium, Playwright): a runbook that asks a person first, the admin breaks the demo system with
the dashboard's demo button, the pending approval appears on the dashboard without a reload, the
operator presses Approve, remediation restarts the system once, and the incident resolves."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest

from .conftest import ROOT, DemoStack, Operator
from .test_closed_loop import diagnostic_incidents, no_problem_open, wait_for_status
from kafka_helpers import Infrastructure, wait_until

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(600)]

CHROMIUM = "/usr/bin/chromium"
RUNBOOK = "restart-service"
RUNBOOK_SEED = ROOT / "infra/seed/runbooks" / f"{RUNBOOK}.yaml"


async def put_runbook(stack: DemoStack, operator: Operator, source: str) -> None:
    async with httpx.AsyncClient(timeout=10) as client:
        answer = await client.put(
            stack.url("remediation", f"/v1/runbooks/{RUNBOOK}"),
            content=source,
            headers=operator.auth() | {"Content-Type": "application/yaml"},
        )
    assert answer.status_code in (200, 201), answer.text


@pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="Debian's chromium is not installed (make test installs it)")
async def test_an_operator_approves_a_risky_fix_from_the_dashboard_and_the_incident_resolves(
    demo_stack: DemoStack, infrastructure: Infrastructure, demo_operator: Operator
) -> None:
    from playwright.async_api import async_playwright, expect

    stack, operator = demo_stack, demo_operator
    seed = RUNBOOK_SEED.read_text()
    asking = seed.replace("approval:\n  required: false", "approval:\n  required: true\n  timeout_seconds: 600")
    assert asking != seed, "the seeded runbook no longer says 'approval: required: false'"
    restarts = stack.customer_system.count("restart-service")
    await no_problem_open(stack, infrastructure)
    await put_runbook(stack, operator, asking)
    try:
        async with async_playwright() as playwright:
            browser = await playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
            page = await browser.new_page()
            try:
                await page.goto(stack.url("notifier", "/dashboard/login"))
                await page.fill("input[name=email]", operator.email)
                await page.fill("input[name=password]", operator.password)
                await page.fill("input[name=api_token]", operator.token)
                await page.click("button[type=submit]")
                assert page.url.endswith("/dashboard"), await page.content()

                # The dashboard's demo button breaks the system (admins, demo mode), as make demo-break does.
                before = set(diagnostic_incidents(stack))
                await page.click("#demo-break-soft")
                await expect(page.locator("body")).to_contain_text("The demo system is broken (soft)")
                await page.goto(stack.url("notifier", "/dashboard"))
                await page.evaluate("window.stillTheSamePage = true")

                def opened() -> str | None:
                    new = [incident_id for incident_id in diagnostic_incidents(stack) if incident_id not in before]
                    return new[0] if new else None

                incident_id: str = await wait_until(
                    opened, timeout=90, interval=1, message="an incident opened by regular diagnostics"
                )
                pending = page.locator(f"#approvals li[data-incident='{incident_id}']")
                await expect(pending).to_have_count(1, timeout=120_000)
                # Nothing was restarted while the run waits for a person.
                assert stack.customer_system.count("restart-service") == restarts
                await pending.get_by_role("button", name="Approve").click()
                await expect(page.locator("#notice")).to_contain_text("approve: remediation answered 200")
                await expect(pending).to_have_count(0, timeout=60_000)
                assert await page.evaluate("window.stillTheSamePage") is True  # all live, no reload
            finally:
                await browser.close()

        resolved = await wait_for_status(stack, incident_id, "resolved")
        assert stack.customer_system.count("restart-service") == restarts + 1
        async with httpx.AsyncClient(timeout=10) as client:
            audit = await client.get(
                stack.url("remediation", f"/v1/incidents/{incident_id}/audit"), headers=operator.auth()
            )
        assert audit.status_code == 200, audit.text
        run: dict[str, Any] = audit.json()["run"]
        assert run["approval"]["decision"] == "approved", run
        assert run["approval"]["decided_by"] == operator.operator_id
        assert any(entry["kind"] == "resolved" for entry in resolved["timeline"])
    finally:
        await put_runbook(stack, operator, seed)
        async with httpx.AsyncClient(timeout=10) as client:
            (await client.post(f"{stack.customer_system.base_url}/admin/heal")).raise_for_status()
