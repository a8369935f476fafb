"""The dashboard's latency sparkline per diagnostic target: triage's ``target.probed`` events,
kept by the shared notifier, drawn for the operators who may see the target's tenant."""

from __future__ import annotations

import re
import secrets
from datetime import UTC, datetime, timedelta

import httpx
import pytest

from aftercare.events.envelope import envelope_for
from aftercare.events.operators import OPERATOR_EVENTS_TENANT, OperatorUpserted, Role, hash_password
from aftercare.events.producer import EventProducer
from aftercare.events.triage import TargetProbed

from .conftest import NotifierUnderTest, new_tenant, wait_for

pytestmark = pytest.mark.integration


async def _signed_in(http: httpx.AsyncClient, email: str, password: str) -> bool:
    form = await http.get("/dashboard/login")
    csrf = re.search(r"name='csrf' value='([^']+)'", form.text)
    assert csrf is not None, form.text
    answer = await http.post("/dashboard/login", data={"email": email, "password": password, "csrf": csrf.group(1)})
    return answer.status_code == 303  # 401 until the operator event has reached the notifier


async def test_operator_sees_each_targets_probe_latency_of_own_tenants_only(
    notifier: NotifierUnderTest, publisher: EventProducer
) -> None:
    watched, other = new_tenant(), new_tenant()
    start = datetime.now(UTC) - timedelta(minutes=3)
    probes = [
        envelope_for(
            TargetProbed(
                system="billing-db",
                target="http://127.0.0.1:9/health",
                probe="http",
                status=status,
                latency_ms=latency,
                probed_at=start + timedelta(minutes=i),
            ),
            source="triage",
            tenant_id=watched.tenant_id,
        )
        for i, (status, latency) in enumerate((("up", 40.0), ("up", 95.0), ("down", None)))
    ]
    for probe in probes:
        await publisher.publish(probe)
    await publisher.publish(probes[1])  # redelivered: still one sample
    await publisher.publish(
        envelope_for(
            TargetProbed(
                system="ledger",
                target="tcp://127.0.0.1:9",
                probe="tcp",
                status="up",
                latency_ms=3.0,
                probed_at=datetime.now(UTC),
            ),
            source="triage",
            tenant_id=other.tenant_id,
        )
    )

    operator_id = "op-" + secrets.token_hex(4)
    email, password = f"{operator_id}@support.example", secrets.token_urlsafe(12)
    await publisher.publish(
        envelope_for(
            OperatorUpserted(
                operator_id=operator_id,
                name="Vic Viewer",
                email=email,
                role=Role.VIEWER,
                password_hash=hash_password(password),
                all_tenants=False,
                tenants=[watched.tenant_id],
            ),
            source="intake",
            tenant_id=OPERATOR_EVENTS_TENANT,
        )
    )
    async with httpx.AsyncClient(base_url=notifier.base_url, timeout=60) as http:
        await wait_for("the operator to sign in", lambda: _signed_in(http, email, password))

        async def dashboard_with_all_three() -> str | None:
            page = await http.get("/dashboard")
            assert page.status_code == 200, page.text
            return page.text if "last 3 probes" in page.text else None

        page = await wait_for("the three probes on the dashboard", dashboard_with_all_three)
    line = re.search(rf"<svg class='latency' id='latency-{watched.tenant_id}-billing-db'[^>]*>(.*?)</svg>", page)
    assert line is not None, page
    assert "latest no answer, peak 95 ms, 1 without an answer" in line.group(1)
    points = re.search(r"points='([^']+)'", line.group(1))
    assert points is not None and len(points.group(1).split()) == 3  # the redelivered probe counted once
    assert "#c0392b" in line.group(1)  # the target is down now: drawn red
    assert other.tenant_id not in page  # another tenant's target is not this operator's business
