"""A deactivated tenant (``PUT /admin/tenants/{id}`` with ``"active": false``) opens nothing through
any door, and each door says so in its own kind of answer (issue 8, item 1)."""

from __future__ import annotations

import smtplib
import uuid
from typing import Any

import httpx
import pytest

from .answers import assert_problem
from .conftest import IntakeUnderTest
from .test_admin_api import PROFILE, unique_tenant
from .test_email_channel import plain_email, sendmail
from .test_phone_channel import VOICE, new_caller, twilio_sign

pytestmark = pytest.mark.integration


async def test_every_door_refuses_a_deactivated_tenant_in_its_own_way(
    client: httpx.AsyncClient, intake: IntakeUnderTest
) -> None:
    admin = intake.admin()
    tenant_id = unique_tenant()
    base = f"/admin/tenants/{tenant_id}"
    assert (await client.put(base, headers=admin, json=PROFILE)).status_code == 201
    api_key = (await client.post(f"{base}/api-keys", headers=admin, json={"name": "ci"})).json()["secret"]
    routing_key = (await client.post(f"{base}/pagerduty-routing-keys", headers=admin, json={"name": "pd"})).json()[
        "secret"
    ]
    token = (await client.put(f"{base}/alertmanager-token", headers=admin, json={})).json()["secret"]
    address = f"support@{tenant_id}.example.net"
    assert (await client.put(f"{base}/inbound-emails", headers=admin, json={"addresses": [address]})).is_success
    line = {"number": "+1555" + str(uuid.uuid4().int)[:7], "auth_token": uuid.uuid4().hex}
    assert (await client.put(f"{base}/phone-line", headers=admin, json=line)).status_code == 204
    slug = (await client.get(base, headers=admin)).json()["portal_slug"]

    # Working while active (the API key), then deactivated.
    auth = {"Authorization": f"Bearer {api_key}"}
    assert (await client.post("/v1/incidents", headers=auth, json={"title": "Before"})).status_code == 202
    assert (await client.put(base, headers=admin, json=PROFILE | {"active": False})).status_code == 200

    refused = await client.post("/v1/incidents", headers=auth, json={"title": "After"})
    assert assert_problem(refused, 403)["type"].endswith("/tenant-inactive")

    pagerduty = await client.post(
        "/v2/enqueue",
        json={
            "routing_key": routing_key,
            "event_action": "trigger",
            "payload": {"summary": "Disk full", "source": "db-1", "severity": "critical"},
        },
    )
    assert pagerduty.status_code == 400 and "deactivated" in pagerduty.json()["errors"][0]

    alert: dict[str, Any] = {
        "version": "4",
        "status": "firing",
        "receiver": "aftercare",
        "groupKey": "{}:{}",
        "groupLabels": {},
        "commonLabels": {},
        "commonAnnotations": {},
        "externalURL": "http://alertmanager:9093",
        "truncatedAlerts": 0,
        "alerts": [
            {
                "status": "firing",
                "labels": {"alertname": "DiskFull"},
                "annotations": {},
                "startsAt": "2026-03-01T09:00:00Z",
                "endsAt": "0001-01-01T00:00:00Z",
                "generatorURL": "http://prometheus/graph",
                "fingerprint": "abc123",
            }
        ],
    }
    alerts = await client.post("/v1/alertmanager", headers={"Authorization": f"Bearer {token}"}, json=alert)
    assert_problem(alerts, 403)

    with pytest.raises(smtplib.SMTPRecipientsRefused) as mail:
        await sendmail(intake, plain_email("Printer down", "It is down.", to=address), to=[address])
    code, text = mail.value.recipients[address]
    assert code == 550 and text.decode().startswith("5.2.1") and b"deactivated" in text

    params = {"CallSid": "CA" + uuid.uuid4().hex, "From": new_caller(), "To": line["number"], "CallStatus": "ringing"}
    signature = twilio_sign(line["auth_token"], intake.base_url + VOICE, params)
    call = await client.post(VOICE, data=params, headers={"X-Twilio-Signature": signature})
    assert call.status_code == 200 and call.headers["content-type"].startswith("text/xml")
    assert "no longer in service" in call.text and "<Hangup/>" in call.text and "I N C" not in call.text

    portal = await client.get(f"/portal/{slug}")
    assert portal.status_code == 404

    # Nothing was opened after the deactivation: the tenant has the one incident from before.
    listed = await client.get("/admin/tenants", headers=admin)
    assert listed.status_code == 200
    reactivated = await client.put(base, headers=admin, json=PROFILE)
    assert reactivated.status_code == 200
    incidents = (await client.get("/v1/incidents", headers=auth)).json()
    assert [item["title"] for item in incidents["items"]] == ["Before"]
