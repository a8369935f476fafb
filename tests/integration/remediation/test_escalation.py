"""Escalation to people: level 2 is paged when level 1 does not acknowledge in time; the page's
link, the API or the incident acknowledged in intake stops it."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest

from aftercare.events.envelope import envelope_for
from aftercare.events.incidents import Channel, IncidentAcknowledged

from .conftest import Scenario, as_role, of_type
from kafka_helpers import wait_until

pytestmark = pytest.mark.integration


def policy(first_ack_s: float, second_ack_s: float) -> dict[str, Any]:
    return {
        "levels": [
            {
                "name": "primary",
                "contacts": [{"name": "Ann", "email": "ann@msp.example"}],
                "ack_timeout_seconds": first_ack_s,
            },
            {
                "name": "secondary",
                "contacts": [{"name": "Bob", "phone": "+15550100"}],
                "ack_timeout_seconds": second_ack_s,
            },
            {"name": "manager", "contacts": [{"name": "Cy"}], "ack_timeout_seconds": 60},
        ]
    }


async def escalation_of(scenario: Scenario, incident_id: str) -> dict[str, Any]:
    escalations = (await scenario.audit(incident_id)).get("escalations") or []
    return dict(escalations[0]) if escalations else {}


async def test_an_unacknowledged_escalation_reaches_level_2_and_stops_when_acknowledged_by_link(
    scenario: Scenario,
) -> None:
    answer = await scenario.api.put(
        f"/v1/tenants/{scenario.tenant_id}/escalation-policy", json=policy(1.5, 3), headers=as_role("admin")
    )
    assert answer.status_code == 200, answer.text
    # Triage names a runbook that does not exist: straight to people.
    incident_id = await scenario.incident("no-such-runbook")

    async def level_2_paged() -> list[dict[str, Any]] | None:
        pages = of_type(await scenario.events(incident_id), "incident.escalated")
        return pages if any(page["data"]["level"] == 2 for page in pages) else None

    pages = await wait_until(level_2_paged, timeout=60, interval=0.3, message="level 2 paged")
    first, second = sorted(pages, key=lambda page: page["data"]["level"])
    assert "does not exist" in first["data"]["reason"]
    assert [c["name"] for c in first["data"]["contacts"]] == ["Ann"]
    assert [c["name"] for c in second["data"]["contacts"]] == ["Bob"]
    assert second["data"]["escalation_id"] == first["data"]["escalation_id"]

    link = second["data"]["acknowledge_url"]
    async with httpx.AsyncClient(timeout=30) as browser:
        page = await browser.get(link)  # what a person sees: a button, nothing acknowledged yet
        assert page.status_code == 200 and "acknowledge" in page.text
        assert (await escalation_of(scenario, incident_id))["status"] == "paging"
        forged = await browser.post(link.split("?")[0], params={"token": "0" * 40})
        assert forged.status_code == 404 and forged.headers["content-type"] == "application/problem+json"
        acknowledged = await browser.post(link)
        assert acknowledged.status_code == 200 and acknowledged.json()["status"] == "acknowledged"

    stored = await escalation_of(scenario, incident_id)
    assert stored["status"] == "acknowledged" and stored["next_at"] is None
    assert stored["acknowledged_via"] == "link"
    # Level 2's deadline passes: nobody else is paged.
    await asyncio.sleep(4)
    events = scenario.about_this_incident(await scenario.events(incident_id), incident_id)
    assert sorted(page["data"]["level"] for page in of_type(events, "incident.escalated")) == [1, 2]
    [acknowledged_event] = of_type(events, "escalation.acknowledged")
    assert acknowledged_event["data"]["via"] == "link" and acknowledged_event["data"]["level"] == 2


async def test_acknowledging_the_incident_in_intake_stops_the_escalation(scenario: Scenario) -> None:
    await scenario.api.put(
        f"/v1/tenants/{scenario.tenant_id}/escalation-policy", json=policy(30, 30), headers=as_role("admin")
    )
    incident_id = await scenario.incident("no-such-runbook")
    await wait_until(lambda: escalation_of(scenario, incident_id), timeout=60, message="escalated")

    await scenario.producer.publish(
        envelope_for(
            IncidentAcknowledged(
                incident_id=incident_id, number="INC-1", by="dana@acme.example", channel=Channel.OPERATOR
            ),
            source="intake",
            tenant_id=scenario.tenant_id,
            incident_id=incident_id,
        )
    )

    async def acknowledged() -> dict[str, Any] | None:
        escalation = await escalation_of(scenario, incident_id)
        return escalation if escalation.get("status") == "acknowledged" else None

    stored = await wait_until(acknowledged, timeout=60, message="acknowledged from the incident")
    assert stored["acknowledged_by"] == "dana@acme.example" and stored["acknowledged_via"] == "incident"


async def test_a_responder_acknowledges_through_the_api(scenario: Scenario) -> None:
    incident_id = await scenario.incident("no-such-runbook", incident_id=f"inc-{uuid.uuid4()}")
    await wait_until(lambda: escalation_of(scenario, incident_id), timeout=60, message="escalated")
    viewer = await scenario.api.post(f"/v1/incidents/{incident_id}/acknowledge", headers=as_role("viewer"))
    assert viewer.status_code == 403
    answer = await scenario.api.post(f"/v1/incidents/{incident_id}/acknowledge", headers=as_role("responder"))
    assert answer.json() == {"incident_id": incident_id, "acknowledged": 1}
    stored = await escalation_of(scenario, incident_id)
    assert stored["acknowledged_by"] == "op-responder"
    assert datetime.fromisoformat(stored["acknowledged_at"]) <= datetime.now(UTC)
