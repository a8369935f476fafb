"""The operators' dashboard in a real headless browser (Debian's chromium driven by Playwright):
sign in, report an incident through intake's API and see its row appear without a reload, then
approve a pending remediation run as the signed-in operator.

Remediation's HTTP API is not on main yet, so the approve call goes to a real HTTP server standing
in for it that records the request (path and the operator's bearer token); the approval itself is
announced on Kafka as remediation announces it."""

from __future__ import annotations

import json
import os
import secrets
import sys
import threading
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import ClassVar

import httpx
import pytest

from aftercare.events.envelope import envelope_for
from aftercare.events.producer import EventProducer
from aftercare.events.remediation import ApprovalRequested

from .conftest import NotifierUnderTest, SmtpCapture, make_notifier
from kafka_helpers import Infrastructure
from localinfra import free_port

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from intake.conftest import IntakeUnderTest, start_intake, stop_intake

pytestmark = pytest.mark.integration

CHROMIUM = "/usr/bin/chromium"
SCREENSHOT_DIR = Path(os.environ.get("AFTERCARE_SCREENSHOT_DIR", "/tmp/aftercare-screenshots"))


class RemediationStandIn(BaseHTTPRequestHandler):
    calls: ClassVar[list[tuple[str, str | None, dict[str, object]]]] = []

    def do_POST(self) -> None:
        length = int(self.headers.get("content-length") or 0)
        body = json.loads(self.rfile.read(length) or b"{}")
        self.calls.append((self.path, self.headers.get("authorization"), body))
        answer = json.dumps({"status": "approved"}).encode()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(answer)))
        self.end_headers()
        self.wfile.write(answer)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def remediation_stand_in() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", free_port()), RemediationStandIn)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()


@pytest.fixture
def stack(
    infrastructure: Infrastructure, tmp_path: Path, smtp_capture: SmtpCapture, remediation_stand_in: str
) -> Iterator[tuple[IntakeUnderTest, NotifierUnderTest]]:
    SCREENSHOT_DIR.mkdir(parents=True, exist_ok=True)
    intake = start_intake(infrastructure, tmp_path / "intake")
    notifier = make_notifier(
        infrastructure,
        tmp_path / "notifier",
        smtp_capture,
        {"AFTERCARE_NOTIFIER_REMEDIATION_BASE_URL": remediation_stand_in},
    )
    try:
        notifier.start()
        yield intake, notifier
    finally:
        notifier.stop()
        stop_intake(intake)


@pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="Debian's chromium is not installed (make test installs it)")
async def test_operator_sees_a_new_incident_live_and_approves_a_run(
    stack: tuple[IntakeUnderTest, NotifierUnderTest], publisher: EventProducer
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

            run_id, approval_id = f"run-{uuid.uuid4().hex[:8]}", f"appr-{uuid.uuid4().hex[:8]}"
            await publisher.publish(
                envelope_for(
                    ApprovalRequested(
                        incident_id=incident_id,
                        run_id=run_id,
                        approval_id=approval_id,
                        step="restart-service",
                        reason="restarting billing-db interrupts open sessions",
                        expires_at=datetime.now(UTC),
                    ),
                    source="remediation",
                    tenant_id="tenant-a",
                    incident_id=incident_id,
                )
            )
            approval = page.locator(f"#approval-{approval_id}")
            for _ in range(60):
                await page.reload()
                if await approval.count():
                    break
                await page.wait_for_timeout(500)
            await approval.get_by_role("button", name="Approve").click()
            await expect(page.locator("#notice")).to_contain_text("approve: remediation answered 200")
            await page.screenshot(path=str(SCREENSHOT_DIR / "dashboard-approved.png"), full_page=True)
        finally:
            await browser.close()

    (path, authorization, body) = RemediationStandIn.calls[-1]
    assert path == f"/v1/runs/{run_id}/approve"
    assert authorization == f"Bearer {token}"
    assert "Robin Responder" in str(body["note"])
