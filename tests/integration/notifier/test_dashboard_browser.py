"""The operators' dashboard in a real headless browser (Debian's chromium driven by Playwright):
sign in, report an incident through intake's API and see its row appear without a reload.
Approving and rejecting against the real remediation service: ``test_dashboard_approvals.py``."""

from __future__ import annotations

import os
import secrets
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from .conftest import NotifierUnderTest, SmtpCapture, make_notifier
from kafka_helpers import Infrastructure

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from intake.conftest import IntakeUnderTest, start_intake, stop_intake

# Starts intake and a notifier (minutes on the loaded shared machine).
pytestmark = [pytest.mark.integration, pytest.mark.timeout(900)]

CHROMIUM = "/usr/bin/chromium"
SCREENSHOT_DIR = Path(os.environ.get("AFTERCARE_SCREENSHOT_DIR", "/tmp/aftercare-screenshots"))


@pytest.fixture
def stack(
    infrastructure: Infrastructure, tmp_path: Path, smtp_capture: SmtpCapture
) -> Iterator[tuple[IntakeUnderTest, NotifierUnderTest]]:
    SCREENSHOT_DIR.mkdir(parents=True, exist_ok=True)
    intake = start_intake(infrastructure, tmp_path / "intake")
    notifier = make_notifier(infrastructure, tmp_path / "notifier", smtp_capture)
    try:
        notifier.start()
        yield intake, notifier
    finally:
        notifier.stop()
        stop_intake(intake)


@pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="Debian's chromium is not installed (make test installs it)")
async def test_operator_sees_a_new_incident_live(
    stack: tuple[IntakeUnderTest, NotifierUnderTest],
) -> None:
    from playwright.async_api import async_playwright, expect

    intake, notifier = stack
    operator_id = "op-" + secrets.token_hex(4)
    email, password = f"{operator_id}@support.example", "correct horse battery staple"
    async with httpx.AsyncClient(base_url=intake.base_url, timeout=30) as http:
        answer = await http.put(
            f"/admin/operators/{operator_id}",
            json={"name": "Robin Responder", "email": email, "role": "responder", "password": password},
            headers=intake.admin(),
        )
        assert answer.status_code in (200, 201), answer.text
        token = (
            await http.post(
                f"/admin/operators/{operator_id}/tokens", json={"name": "dashboard"}, headers=intake.admin()
            )
        ).json()["token"]

    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        page = await browser.new_page()
        try:
            # The operator directory reaches the notifier as events; retry sign-in until it has it.
            for _ in range(60):
                await page.goto(notifier.base_url + "/dashboard/login")
                await page.fill("input[name=email]", email)
                await page.fill("input[name=password]", password)
                await page.fill("input[name=api_token]", token)
                await page.click("button[type=submit]")
                if page.url.endswith("/dashboard"):
                    break
                await page.wait_for_timeout(500)
            assert page.url.endswith("/dashboard"), await page.content()
            await page.evaluate("window.stillTheSamePage = true")

            title = f"Checkout times out {uuid.uuid4().hex[:6]}"
            async with httpx.AsyncClient(base_url=intake.base_url, timeout=30) as http:
                reported = await http.post(
                    "/v1/incidents",
                    json={"title": title, "system": "billing-db", "severity": "critical"},
                    headers=intake.auth("tenant-a"),
                )
                assert reported.status_code == 202, reported.text
                incident_id = reported.json()["incident_id"]

            row = page.locator(f"#row-{incident_id}")
            await expect(row).to_contain_text(title, timeout=60_000)
            assert await page.evaluate("window.stillTheSamePage") is True  # no reload happened
            await page.screenshot(path=str(SCREENSHOT_DIR / "dashboard-live-row.png"), full_page=True)
        finally:
            await browser.close()
