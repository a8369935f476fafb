"""Closing: the last step of an incident's lifecycle, by the customer or after it stayed resolved."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from .conftest import IntakeUnderTest, start_intake, stop_intake
from .incident_events import incident_events, of_type
from kafka_helpers import wait_until

pytestmark = pytest.mark.integration


async def _open_and_resolve(client: httpx.AsyncClient, intake: IntakeUnderTest) -> str:
    accepted = await client.post(
        "/v1/incidents", headers=intake.auth("tenant-a"), json={"title": f"Printer queue stuck {uuid.uuid4().hex[:8]}"}
    )
    assert accepted.status_code == 202, accepted.text
    incident_id = accepted.json()["incident_id"]
    resolved = await client.post(
        f"/v1/incidents/{incident_id}/resolve",
        headers=intake.auth("tenant-a"),
        json={"by": "Dana", "resolution": "Queue restarted"},
    )
    assert resolved.status_code == 200, resolved.text
    return incident_id


async def test_a_resolved_incident_can_be_closed_and_says_so_on_kafka(intake: IntakeUnderTest) -> None:
    async with httpx.AsyncClient(base_url=intake.base_url, timeout=30) as client:
        incident_id = await _open_and_resolve(client, intake)
        closed = await client.post(
            f"/v1/incidents/{incident_id}/close",
            headers=intake.auth("tenant-a"),
            json={"by": "Dana", "reason": "customer confirmed"},
        )
        assert closed.status_code == 200, closed.text
        assert closed.json()["status"] == "closed"
        again = await client.post(
            f"/v1/incidents/{incident_id}/close", headers=intake.auth("tenant-a"), json={"by": "Dana"}
        )
        assert again.status_code == 200 and again.json()["status"] == "closed"
        reopened = await client.post(
            f"/v1/incidents/{incident_id}/reopen", headers=intake.auth("tenant-a"), json={"by": "Dana"}
        )
        assert reopened.status_code == 409
        assert reopened.headers["content-type"].startswith("application/problem+json")

    events = await incident_events(intake, incident_id)
    closings = of_type(events, "incident.closed")
    assert len(closings) == 1
    assert closings[0]["data"]["reason"] == "customer confirmed"


async def test_an_open_incident_cannot_be_closed_and_the_answer_says_why(intake: IntakeUnderTest) -> None:
    async with httpx.AsyncClient(base_url=intake.base_url, timeout=30) as client:
        accepted = await client.post("/v1/incidents", headers=intake.auth("tenant-a"), json={"title": "VPN flaps"})
        incident_id = accepted.json()["incident_id"]
        refused = await client.post(
            f"/v1/incidents/{incident_id}/close", headers=intake.auth("tenant-a"), json={"by": "Dana"}
        )
    assert refused.status_code == 409
    assert "cannot become closed" in refused.json()["detail"]


@pytest.fixture(scope="module")
def quickly_closing_intake(
    intake: IntakeUnderTest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[IntakeUnderTest]:
    """An intake of its own that closes incidents resolved for more than about a second."""
    service = start_intake(
        intake.infrastructure,
        Path(tmp_path_factory.mktemp("auto-close")),
        extra_env={
            "AFTERCARE_INTAKE_AUTO_CLOSE_AFTER_HOURS": "0.0003",
            "AFTERCARE_INTAKE_HOUSEKEEPING_INTERVAL_SECONDS": "0.5",
            "AFTERCARE_INTAKE_SMTP_ENABLED": "false",
        },
    )
    try:
        yield service
    finally:
        stop_intake(service)


async def test_an_incident_that_stays_resolved_is_closed_automatically(quickly_closing_intake: IntakeUnderTest) -> None:
    intake = quickly_closing_intake
    async with httpx.AsyncClient(base_url=intake.base_url, timeout=30) as client:
        incident_id = await _open_and_resolve(client, intake)

        async def status() -> str:
            answer = await client.get(f"/v1/incidents/{incident_id}", headers=intake.auth("tenant-a"))
            return str(answer.json()["status"])

        await wait_until(lambda: _is(status(), "closed"), timeout=30, message="auto-closed")
    closings = of_type(await incident_events(intake, incident_id), "incident.closed")
    assert [event["data"]["by"] for event in closings] == ["aftercare"]


async def _is(value: object, expected: str) -> bool:
    return await value == expected  # type: ignore[misc]
