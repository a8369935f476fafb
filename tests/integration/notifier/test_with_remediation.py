"""The notifier beside the real remediation service: live approvals on the operators' dashboard,
and on-call pages whose acknowledge link works.

Remediation asks for an approval (ApprovalRequested on Kafka); the dashboard's live stream
(server-sent events) carries it to a signed-in responder without a reload; the responder's
CSRF-protected decision goes to remediation's approval API with the responder's own operator
token; remediation's ApprovalGranted/ApprovalRejected reaches the read model and the stream
takes the approval off the list. Driven over HTTP as a browser would, and once in real chromium.

In demo mode an admin (only) breaks the demo customer system from the dashboard, which also shows
per-tenant sparklines of incidents opened and each incident's trace id.

An escalation for a tenant with an escalation policy pages its on-call person by email (the real
SMTP server of the tests); the link in that email is remediation's, and following it acknowledges.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import secrets
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
import pytest_asyncio
from cryptography.fernet import Fernet

from aftercare.events.envelope import envelope_for
from aftercare.events.incidents import Channel, IncidentReported, Severity
from aftercare.events.operators import (
    OPERATOR_EVENTS_TENANT,
    OperatorUpserted,
    Role,
    hash_password,
    new_operator_token,
    token_digest,
)
from aftercare.events.producer import EventProducer
from aftercare.events.tenants import ContractTier, DiagnosticTarget, Priority, SupportedSystem, TenantUpserted
from aftercare.events.triage import IncidentTriaged

from .conftest import NotifierUnderTest, SmtpCapture, make_notifier, running_smtp_capture, wait_for
from customer_system_process import CustomerSystemUnderTest, start_customer_system
from kafka_helpers import Infrastructure, unique_name
from localinfra import free_port

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from remediation.conftest import RemediationUnderTest, restart_runbook, stop_remediation

# The module's first test also starts remediation and a notifier (minutes on a loaded machine).
pytestmark = [pytest.mark.integration, pytest.mark.timeout(900)]

CHROMIUM = "/usr/bin/chromium"
PASSWORD = "correct horse battery staple"
SYSTEM = "shop-web"


@dataclass
class DashboardOperator:
    operator_id: str
    email: str
    role: Role
    token: str = field(default_factory=new_operator_token)

    def event(self) -> Any:
        return envelope_for(
            OperatorUpserted(
                operator_id=self.operator_id,
                name=f"{self.role.value.title()} {self.operator_id[-4:]}",
                email=self.email,
                role=self.role,
                password_hash=hash_password(PASSWORD),
                token_digests=[token_digest(self.token)],
            ),
            source="intake",
            tenant_id=OPERATOR_EVENTS_TENANT,
        )


def new_operator(role: Role) -> DashboardOperator:
    operator_id = f"op-{role.value}-{secrets.token_hex(3)}"
    return DashboardOperator(operator_id, f"{operator_id}@support.example", role)


@dataclass
class ApprovalStack:
    notifier: NotifierUnderTest
    remediation: RemediationUnderTest
    customer: CustomerSystemUnderTest
    smtp: SmtpCapture
    tenant_id: str
    runbook: str
    admin: DashboardOperator
    responder: DashboardOperator
    viewer: DashboardOperator


@pytest.fixture(scope="module")
def approval_processes(
    infrastructure: Infrastructure, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[NotifierUnderTest, RemediationUnderTest, CustomerSystemUnderTest, SmtpCapture]]:
    # Its own SMTP server: the session's shared notifier reads the same topics and would page the
    # same on-call address into a shared capture (two deployments, two pages).
    with running_smtp_capture() as smtp_capture:
        yield from _approval_processes(infrastructure, tmp_path_factory, smtp_capture)


def _approval_processes(
    infrastructure: Infrastructure, tmp_path_factory: pytest.TempPathFactory, smtp_capture: SmtpCapture
) -> Iterator[tuple[NotifierUnderTest, RemediationUnderTest, CustomerSystemUnderTest, SmtpCapture]]:
    workdir = tmp_path_factory.mktemp("approvals")
    customer = start_customer_system(workdir / "customer", token="cust-" + secrets.token_hex(8), slow_seconds=0.5)
    # Both services start at once: most of their start-up is waiting for Kafka group joins.
    remediation_url = f"http://127.0.0.1:{free_port()}"
    remediation_env = {
        "AFTERCARE_REMEDIATION_HTTP_PORT": remediation_url.rsplit(":", 1)[1],
        "AFTERCARE_REMEDIATION_PUBLIC_BASE_URL": remediation_url,
        "PYTHONUNBUFFERED": "1",  # its log shows how far it got if it is slow to start
    }
    notifier = make_notifier(
        infrastructure,
        workdir / "notifier",
        smtp_capture,
        {
            "AFTERCARE_NOTIFIER_REMEDIATION_BASE_URL": remediation_url,
            "AFTERCARE_NOTIFIER_DEMO_SYSTEM_URL": customer.base_url,
            "AFTERCARE_NOTIFIER_TRACE_URL_TEMPLATE": "http://traces.example/trace/{trace_id}",
        },
    )
    with ThreadPoolExecutor(max_workers=1) as pool:
        starting = pool.submit(_remediation, infrastructure, workdir / "remediation", remediation_env)
        try:
            notifier.start()
            remediation = starting.result()
        except BaseException:
            notifier.stop()
            customer.stop()
            with contextlib.suppress(Exception):
                stop_remediation(starting.result())
            raise
    try:
        yield notifier, remediation, customer, smtp_capture
    finally:
        notifier.stop()
        stop_remediation(remediation)
        customer.stop()


def _remediation(infrastructure: Infrastructure, workdir: Path, extra_env: dict[str, str]) -> RemediationUnderTest:
    """``python -m aftercare.remediation`` configured as remediation's own tests configure it
    (``start_remediation``), given more time to become ready: two services starting at once on
    the shared 2-core machine under a full test run have needed more than its 120 s."""
    workdir.mkdir(parents=True, exist_ok=True)
    database = unique_name("remediation").replace("-", "_")
    env = {
        "AFTERCARE_KAFKA_BOOTSTRAP_SERVERS": infrastructure.bootstrap_servers,
        "AFTERCARE_MONGO_URL": infrastructure.mongo_url,
        "AFTERCARE_REMEDIATION_DATABASE": database,
        "AFTERCARE_REMEDIATION_CONSUMER_GROUP_PREFIX": f"{database}-",
        "AFTERCARE_REMEDIATION_CREDENTIAL_KEY": Fernet.generate_key().decode(),
        "AFTERCARE_REMEDIATION_POLL_INTERVAL_SECONDS": "0.5",
        "AFTERCARE_REMEDIATION_DUE_POLL_SECONDS": "0.3",
        "AFTERCARE_REMEDIATION_LEASE_MARGIN_SECONDS": "2",
        "AFTERCARE_STARTUP_TIMEOUT_SECONDS": "120",
    } | extra_env
    log_file = workdir / "remediation.log"
    with log_file.open("ab") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "aftercare.remediation"], env=dict(os.environ) | env, stdout=out, stderr=out
        )
    service = RemediationUnderTest(
        env["AFTERCARE_REMEDIATION_PUBLIC_BASE_URL"], database, infrastructure, log_file, env, process
    )
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"remediation exited with {process.returncode}; see {log_file}")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(service.base_url + "/readyz", timeout=2.0).status_code == 200:
                return service
        time.sleep(0.3)
    stop_remediation(service)
    raise RuntimeError(f"remediation not ready after 300 s; see {log_file}")


@pytest_asyncio.fixture(loop_scope="session", scope="module")
async def approvals(
    approval_processes: tuple[NotifierUnderTest, RemediationUnderTest, CustomerSystemUnderTest, SmtpCapture],
    infrastructure: Infrastructure,
) -> ApprovalStack:
    """Operators of each role (announced as intake announces them), a tenant whose system is the
    customer system, and a runbook that asks a person before it acts."""
    notifier, remediation, customer, smtp_capture = approval_processes
    admin, responder, viewer = new_operator(Role.ADMIN), new_operator(Role.RESPONDER), new_operator(Role.VIEWER)
    tenant_id = unique_name("appr")
    producer = EventProducer(infrastructure.bootstrap_servers, client_id="dashboard-approval-tests")
    await producer.start()
    try:
        for operator in (admin, responder, viewer):
            await producer.publish(operator.event())
        await producer.publish(
            envelope_for(
                TenantUpserted(
                    tenant_id=tenant_id,
                    name="Approvals Ltd",
                    tier=ContractTier(name="gold"),
                    systems=[
                        SupportedSystem(
                            name=SYSTEM,
                            diagnostic_target=DiagnosticTarget(kind="http", address=customer.health_url),
                            admin_endpoint=customer.base_url + "/admin",
                        )
                    ],
                ),
                source="intake",
                tenant_id=tenant_id,
            )
        )
    finally:
        await producer.stop()
    as_admin = {"Authorization": f"Bearer {admin.token}"}
    runbook = unique_name("risky-restart")
    async with httpx.AsyncClient(base_url=remediation.base_url, timeout=30) as http:

        async def admin_known() -> bool:
            return (await http.get("/v1/runbooks", headers=as_admin)).status_code == 200

        await wait_for("remediation knows the test operators", admin_known)

        async def credential_stored() -> bool:
            answer = await http.put(
                f"/v1/tenants/{tenant_id}/systems/{SYSTEM}/credential",
                json={"bearer_token": customer.token},
                headers=as_admin,
            )
            return answer.status_code == 204

        await wait_for("remediation knows the tenant", credential_stored)
        answer = await http.put(
            f"/v1/runbooks/{runbook}",
            json=restart_runbook(runbook, approval={"required": True, "timeout_seconds": 600}),
            headers=as_admin,
        )
        assert answer.status_code in (200, 201), answer.text
    return ApprovalStack(notifier, remediation, customer, smtp_capture, tenant_id, runbook, admin, responder, viewer)


async def reported_and_triaged(stack: ApprovalStack, producer: EventProducer, runbook: str | None = None) -> str:
    """Report and triage an incident naming the approval runbook (or ``runbook``), as intake and
    triage would."""
    incident_id = f"inc-{uuid.uuid4()}"
    number = f"INC-{incident_id[-5:]}"
    reported = envelope_for(
        IncidentReported(
            incident_id=incident_id,
            number=number,
            title="Shop is down",
            channel=Channel.API,
            severity=Severity.CRITICAL,
            system=SYSTEM,
            source="web-1",
            reported_at=datetime.now(UTC),
        ),
        source="intake",
        tenant_id=stack.tenant_id,
        incident_id=incident_id,
    )
    await producer.publish(reported)
    await producer.publish(
        envelope_for(
            IncidentTriaged(
                incident_id=incident_id,
                number=number,
                priority=Priority.P1,
                category="application",
                system=SYSTEM,
                runbook=runbook or stack.runbook,
            ),
            source="triage",
            tenant_id=stack.tenant_id,
            incident_id=incident_id,
            caused_by=reported,
        )
    )
    return incident_id


async def signed_in(http: httpx.AsyncClient, operator: DashboardOperator) -> str:
    """Sign in through the form (login CSRF cookie + field); returns the session's CSRF token.
    Retries while the notifier's operator directory has not read the operator yet."""

    async def attempt() -> str | None:
        form = await http.get("/dashboard/login")
        login_csrf = re.search(r"name='csrf' value='([^']+)'", form.text)
        assert login_csrf, form.text
        answer = await http.post(
            "/dashboard/login",
            data={"email": operator.email, "password": PASSWORD, "csrf": login_csrf[1], "api_token": operator.token},
        )
        if answer.status_code != 303:
            return None
        page = await http.get("/dashboard")
        found = re.search(r"const CSRF=\"([^\"]+)\"", page.text)
        return found[1] if found else None

    return str(await wait_for(f"{operator.role.value} signs in", attempt, timeout_s=120))


@contextlib.asynccontextmanager
async def live_rows(http: httpx.AsyncClient) -> AsyncIterator[list[dict[str, Any]]]:
    """The dashboard's server-sent incident rows, collected while the block runs."""
    rows: list[dict[str, Any]] = []
    connected = asyncio.Event()

    async def read() -> None:
        async with http.stream("GET", "/dashboard/events", timeout=httpx.Timeout(30, read=None)) as stream:
            assert stream.status_code == 200
            async for line in stream.aiter_lines():
                connected.set()
                if line.startswith("data: "):
                    rows.append(json.loads(line[6:]))

    task = asyncio.create_task(read())
    try:
        await asyncio.wait_for(connected.wait(), 30)
        yield rows
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def approvals_in(rows: list[dict[str, Any]], incident_id: str) -> list[dict[str, Any]] | None:
    """The approvals of the incident's latest live row (None: no row yet)."""
    mine = [row for row in rows if row["incident_id"] == incident_id]
    return mine[-1]["approvals"] if mine else None


async def run_of(stack: ApprovalStack, incident_id: str) -> dict[str, Any] | None:
    async with httpx.AsyncClient(base_url=stack.remediation.base_url, timeout=10) as http:
        answer = await http.get(
            f"/v1/incidents/{incident_id}/audit", headers={"Authorization": f"Bearer {stack.admin.token}"}
        )
        run = answer.json().get("run") if answer.status_code == 200 else None
        return dict(run) if run else None


async def test_responder_approves_a_pending_run_from_the_live_dashboard(
    approvals: ApprovalStack, publisher: EventProducer
) -> None:
    stack = approvals
    async with (
        httpx.AsyncClient(base_url=stack.notifier.base_url, timeout=30) as responder,
        httpx.AsyncClient(base_url=stack.notifier.base_url, timeout=30) as viewer,
    ):
        csrf = await signed_in(responder, stack.responder)
        viewer_csrf = await signed_in(viewer, stack.viewer)
        async with live_rows(responder) as rows:
            incident_id = await reported_and_triaged(stack, publisher)
            [pending] = await wait_for("the approval arrives live", lambda: approvals_in(rows, incident_id))
            run_id = pending["run_id"]
            listed = f"id='approval-{pending['approval_id']}'"

            async def on_the_page() -> bool:
                return listed in (await responder.get("/dashboard")).text

            # The live row goes out before the read model's write: the page follows within a write.
            await wait_for("the dashboard page to list the approval", on_the_page, timeout_s=30)

            # A viewer sees it but may not decide; a forged form (wrong CSRF token) is refused.
            refused = await viewer.post(
                f"/dashboard/runs/{run_id}/approve", data={"csrf": viewer_csrf}, headers={"Accept": "application/json"}
            )
            assert refused.status_code == 403 and "responder role" in refused.json()["outcome"]
            forged = await responder.post(
                f"/dashboard/runs/{run_id}/approve", data={"csrf": "forged"}, headers={"Accept": "application/json"}
            )
            assert forged.status_code == 403 and "CSRF" in forged.json()["outcome"]
            run = await run_of(stack, incident_id)
            assert run is not None and run["status"] == "awaiting_approval", run

            approved = await responder.post(
                f"/dashboard/runs/{run_id}/approve", data={"csrf": csrf}, headers={"Accept": "application/json"}
            )
            assert approved.status_code == 200, approved.text
            assert approved.json()["remediation_status"] == 200
            await wait_for("the approval leaves the live list", lambda: approvals_in(rows, incident_id) == [])

        run = await run_of(stack, incident_id)
        assert run is not None and run["approval"]["decision"] == "approved"
        assert run["approval"]["decided_by"] == stack.responder.operator_id
        # Deciding again: remediation's refusal is shown to the operator, not swallowed.
        again = await responder.post(f"/dashboard/runs/{run_id}/approve", data={"csrf": csrf})
        assert again.status_code == 303 and "remediation+answered+409" in again.headers["location"]


async def test_an_approval_asked_for_before_the_live_connection_opens_still_reaches_the_page(
    approvals: ApprovalStack, publisher: EventProducer
) -> None:
    """A loaded machine can open a page's live connection seconds after the page was drawn (CI
    did: the approval never appeared). The connection starts from the page's stamp."""
    stack = approvals
    async with httpx.AsyncClient(base_url=stack.notifier.base_url, timeout=30) as responder:
        await signed_in(responder, stack.responder)
        page = await responder.get("/dashboard")
        since = re.search(r"const SINCE=([0-9.]+);", page.text)
        assert since, page.text
        incident_id = await reported_and_triaged(stack, publisher)

        async def asked_for() -> bool:
            run = await run_of(stack, incident_id)
            return run is not None and run["status"] == "awaiting_approval"

        await wait_for("remediation asks for approval", asked_for)
        await asyncio.sleep(1)  # the notifier's tail has pushed the row by now, to nobody
        frames: list[str] = []
        async with responder.stream("GET", f"/dashboard/events?since={since[1]}") as stream:
            assert stream.status_code == 200
            async with asyncio.timeout(30):
                async for line in stream.aiter_lines():
                    frames.append(line)
                    if line.startswith("data: ") and approvals_in([json.loads(line[6:])], incident_id):
                        break
        ids = [line for line in frames if line.startswith("id: ")]
        assert ids, frames  # every row carries an id: the browser sends the last one when it reconnects

        # A Last-Event-ID this dashboard never sent is refused with what to change, not a 500.
        refused = await responder.get("/dashboard/events", headers={"Last-Event-ID": "yesterday"})
        assert refused.status_code == 400 and "Last-Event-ID" in refused.json()["detail"], refused.text


@pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="Debian's chromium is not installed (make test installs it)")
async def test_responder_rejects_in_the_browser_and_the_approval_leaves_without_a_reload(
    approvals: ApprovalStack, publisher: EventProducer
) -> None:
    from playwright.async_api import async_playwright, expect

    stack = approvals
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        page = await browser.new_page()
        try:
            for _ in range(120):  # until the notifier's operator directory has read the operator
                await page.goto(stack.notifier.base_url + "/dashboard/login")
                await page.fill("input[name=email]", stack.responder.email)
                await page.fill("input[name=password]", PASSWORD)
                await page.fill("input[name=api_token]", stack.responder.token)
                await page.click("button[type=submit]")
                if page.url.endswith("/dashboard"):
                    break
                await page.wait_for_timeout(500)
            assert page.url.endswith("/dashboard"), await page.content()
            await page.evaluate("window.stillTheSamePage = true")

            incident_id = await reported_and_triaged(stack, publisher)
            approval = page.locator(f"#approvals li[data-incident='{incident_id}']")
            await expect(approval).to_have_count(1, timeout=120_000)
            await approval.get_by_role("button", name="Reject").click()
            await expect(page.locator("#notice")).to_contain_text("reject: remediation answered 200")
            await expect(approval).to_have_count(0, timeout=60_000)
            assert await page.evaluate("window.stillTheSamePage") is True  # no reload happened
        finally:
            await browser.close()

    run = await wait_for(
        "the run ends rejected",
        lambda: _ended(stack, incident_id),
        timeout_s=60,
    )
    assert run["approval"]["decided_by"] == stack.responder.operator_id


async def _ended(stack: ApprovalStack, incident_id: str) -> dict[str, Any] | None:
    run = await run_of(stack, incident_id)
    return run if run and run["status"] == "rejected" else None


async def test_an_escalation_pages_the_on_call_person_by_email_and_the_link_acknowledges(
    approvals: ApprovalStack, publisher: EventProducer
) -> None:
    stack = approvals
    smtp_capture = stack.smtp
    on_call = f"oncall-{secrets.token_hex(4)}@support.example"
    async with httpx.AsyncClient(base_url=stack.remediation.base_url, timeout=30) as http:
        answer = await http.put(
            f"/v1/tenants/{stack.tenant_id}/escalation-policy",
            json={
                "levels": [
                    {
                        "name": "primary",
                        "contacts": [{"name": "Olga On-Call", "email": on_call}],
                        "ack_timeout_seconds": 600,
                    },
                    {"name": "manager", "contacts": [{"name": "Max"}], "ack_timeout_seconds": 600},
                ]
            },
            headers={"Authorization": f"Bearer {stack.admin.token}"},
        )
        assert answer.status_code == 200, answer.text
    # Triage names a runbook that does not exist: remediation goes straight to people.
    incident_id = await reported_and_triaged(stack, publisher, runbook="no-such-runbook")

    [page] = await wait_for("the page email", lambda: smtp_capture.to(on_call))
    text = page.get_body(preferencelist=("plain",)).get_content()
    assert "PAGE level 1" in page["Subject"] and "Olga On-Call" in text and "does not exist" in text
    link = re.search(r"(http://\S+/acknowledge\?token=\S+)", text)
    assert link and link[1].startswith(stack.remediation.base_url), text

    async with httpx.AsyncClient(timeout=30) as browser:
        opened = await browser.get(link[1])  # opening the link shows a button and changes nothing
        assert opened.status_code == 200 and "acknowledge" in opened.text
        acknowledged = await browser.post(link[1], headers={"Accept": "text/html"})
        assert acknowledged.status_code == 200 and "Acknowledged" in acknowledged.text

    async with httpx.AsyncClient(base_url=stack.remediation.base_url, timeout=10) as http:
        audit = await http.get(
            f"/v1/incidents/{incident_id}/audit", headers={"Authorization": f"Bearer {stack.admin.token}"}
        )
    [escalation] = audit.json()["escalations"]
    assert escalation["status"] == "acknowledged" and escalation["acknowledged_via"] == "link"
    assert len(smtp_capture.to(on_call)) == 1  # paged once


async def test_demo_mode_lets_an_admin_break_the_demo_system_and_shows_sparklines_and_the_trace(
    approvals: ApprovalStack, publisher: EventProducer
) -> None:
    stack = approvals
    trace_id = secrets.token_hex(16)
    incident_id = f"inc-{uuid.uuid4()}"
    await publisher.publish(
        envelope_for(
            IncidentReported(
                incident_id=incident_id,
                number="INC-TRACE",
                title="Traced report",
                channel=Channel.API,
                reported_at=datetime.now(UTC),
            ),
            source="intake",
            tenant_id=stack.tenant_id,
            incident_id=incident_id,
        ).model_copy(update={"traceparent": f"00-{trace_id}-00f067aa0ba902b7-01"})
    )
    async with (
        httpx.AsyncClient(base_url=stack.notifier.base_url, timeout=30) as admin,
        httpx.AsyncClient(base_url=stack.notifier.base_url, timeout=30) as responder,
    ):
        csrf = await signed_in(admin, stack.admin)
        responder_csrf = await signed_in(responder, stack.responder)

        async def timeline_with_trace() -> str | None:
            page = await admin.get(f"/dashboard/incidents/{incident_id}")
            return page.text if page.status_code == 200 and trace_id in page.text else None

        timeline = await wait_for("the incident's trace id on its page", timeline_with_trace)
        assert f"href='http://traces.example/trace/{trace_id}'" in timeline

        page = (await admin.get("/dashboard")).text
        spark = re.search(rf"id='spark-{re.escape(stack.tenant_id)}'[^>]*data-counts='([0-9,]+)'", page)
        assert spark and sum(int(n) for n in spark[1].split(",")) >= 1
        assert "id='demo-break-soft'" in page
        assert "demo-break" not in (await responder.get("/dashboard")).text  # admins only

        refused = await responder.post("/dashboard/demo/break", data={"csrf": responder_csrf, "mode": "soft"})
        forged = await admin.post("/dashboard/demo/break", data={"csrf": "forged", "mode": "soft"})
        assert refused.status_code == 403 and forged.status_code == 403
        assert stack.customer.calls()["mode"] != "soft"

        broken = await admin.post("/dashboard/demo/break", data={"csrf": csrf, "mode": "soft"})
        assert broken.status_code == 303 and "broken" in broken.headers["location"]
    try:
        assert stack.customer.calls()["mode"] == "soft"
    finally:
        stack.customer.reset()
