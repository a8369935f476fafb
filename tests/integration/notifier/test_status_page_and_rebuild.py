"""The customer's status page and advisories matched by version range; the dashboard's read model
dropped and rebuilt from Kafka equals what it was."""

from __future__ import annotations

import secrets
import uuid
from datetime import UTC, datetime

import httpx
import pytest

from aftercare.events.envelope import envelope_for
from aftercare.events.incidents import Channel, IncidentReported, IncidentResolved
from aftercare.events.operators import OPERATOR_EVENTS_TENANT, OperatorUpserted, Role, token_digest
from aftercare.events.producer import EventProducer
from aftercare.events.tenants import SupportedSystem
from aftercare.events.triage import IncidentTriaged

from .conftest import NotifierUnderTest, SmtpCapture, new_tenant, wait_for

pytestmark = pytest.mark.integration


async def test_status_page_advisory_and_read_model_rebuild(
    notifier: NotifierUnderTest, smtp_capture: SmtpCapture, publisher: EventProducer
) -> None:
    affected, unaffected = new_tenant(), new_tenant()
    await publisher.publish(affected.tenant_event())  # PostgreSQL 15.3 on billing-db
    await publisher.publish(
        unaffected.tenant_event(systems=[SupportedSystem(name="ledger", product="PostgreSQL", version="16.1")])
    )
    open_id, closed_id = str(uuid.uuid4()), str(uuid.uuid4())
    for incident_id, number in ((open_id, "INC-7301"), (closed_id, "INC-7302")):
        await publisher.publish(
            affected.event(
                IncidentReported(
                    incident_id=incident_id,
                    number=number,
                    title=f"billing-db slow ({number})",
                    channel=Channel.DIAGNOSTIC,
                    system="billing-db",
                    reported_at=datetime.now(UTC),
                ),
                incident_id,
            )
        )
        await publisher.publish(
            affected.event(
                IncidentTriaged(incident_id=incident_id, number=number, priority="P2", category="database"),
                incident_id,
                source="triage",
            )
        )
    await publisher.publish(
        affected.event(IncidentResolved(incident_id=closed_id, number="INC-7302", by="ops"), closed_id)
    )

    token = "op_" + secrets.token_urlsafe(24)
    operator_id = "op-" + secrets.token_hex(4)
    await publisher.publish(
        envelope_for(
            OperatorUpserted(
                operator_id=operator_id,
                name="Alex Advisor",
                email=f"{operator_id}@support.example",
                role=Role.RESPONDER,
                token_digests=[token_digest(token)],
            ),
            source="intake",
            tenant_id=OPERATOR_EVENTS_TENANT,
        )
    )
    async with httpx.AsyncClient(base_url=notifier.base_url, timeout=60) as http:

        async def read_model_has_both() -> bool:
            views = [
                await http.get(f"/admin/read-model/incidents/{i}", headers=notifier.admin())
                for i in (open_id, closed_id)
            ]
            return all(v.status_code == 200 for v in views) and views[1].json()["status"] == "resolved"

        await wait_for("the read model to know both incidents", read_model_has_both)

        async def tenants_known() -> bool:
            pages = [await http.get(f"/status/{customer.slug}") for customer in (affected, unaffected)]
            return all(page.status_code == 200 for page in pages)

        await wait_for("both tenants to be known", tenants_known)

        advisory = {
            "title": "PostgreSQL connection storm",
            "product": "postgresql",
            "affected_versions": ">=15.0,<15.6",
            "severity": "high",
            "text": "Upgrade to 15.6.",
            "cve": "CVE-2026-12345",
        }

        async def published() -> httpx.Response | None:
            answer = await http.post("/v1/advisories", json=advisory, headers={"Authorization": f"Bearer {token}"})
            return answer if answer.status_code == 201 else None  # 401 until the operator event arrived

        answer = await wait_for("the advisory to be accepted", published)
        body = answer.json()
        assert affected.tenant_id in body["affected_tenants"]
        assert unaffected.tenant_id not in body["affected_tenants"]  # 16.1 is outside the range
        assert body["affected_systems"][affected.tenant_id] == ["billing-db"]

        bad = await http.post(
            "/v1/advisories",
            json=advisory | {"affected_versions": "15 or so"},
            headers={"Authorization": f"Bearer {token}"},
        )
        assert bad.status_code == 422 and bad.headers["content-type"] == "application/problem+json"

        mails = await wait_for(
            "the advisory email",
            lambda: [m for m in smtp_capture.to(affected.contact_email) if "[Advisory]" in m["Subject"]],
        )
        assert "CVE-2026-12345" in mails[0].get_body(("plain",)).get_content()
        assert not [m for m in smtp_capture.to(unaffected.contact_email) if "[Advisory]" in m["Subject"]]

        page = await http.get(f"/status/{affected.slug}")
        assert page.status_code == 200
        assert "INC-7301" in page.text and "PostgreSQL connection storm" in page.text
        assert "billing-db" in page.text and "%" in page.text and "<script" not in page.text
        assert (await http.get("/status/not-a-real-link")).status_code == 404

        before = {
            i: (await http.get(f"/admin/read-model/incidents/{i}", headers=notifier.admin())).json()
            for i in (open_id, closed_id)
        }
        rebuilt = await http.post("/admin/read-model/rebuild", headers=notifier.admin(), timeout=600)
        assert rebuilt.status_code == 200 and rebuilt.json()["events_applied"] > 0
        after = {
            i: (await http.get(f"/admin/read-model/incidents/{i}", headers=notifier.admin())).json()
            for i in (open_id, closed_id)
        }
    assert after == before
