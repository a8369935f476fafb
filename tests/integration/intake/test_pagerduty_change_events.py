"""PagerDuty change events (``POST /v2/change/enqueue``, what the official client's
``send_change_event`` posts) and PagerDuty-format answers for the rest of /v2/, against a real
intake process, Kafka and store."""

from __future__ import annotations

import uuid
from typing import Any

import httpx
import pytest
from pymongo import AsyncMongoClient

from .conftest import IntakeUnderTest
from .incident_events import incident_events
from .test_pagerduty import ENQUEUE, trigger

pytestmark = pytest.mark.integration

CHANGE = "/v2/change/enqueue"


def change(routing_key: str, summary: str, source: str | None, **extra: Any) -> dict[str, Any]:
    """A change event as PagerDuty documents it (routing_key, payload, links)."""
    payload: dict[str, Any] = {
        "summary": summary,
        "timestamp": "2026-11-30T08:42:58.315+0000",
        "custom_details": {"build_state": "passed", "build_number": "2", "run_time": "1236s"},
    }
    if source is not None:
        payload["source"] = source
    return {
        "routing_key": routing_key,
        "payload": payload,
        "links": [{"href": "https://ci.example.com/builds/2", "text": "Build 2"}],
    } | extra


async def test_a_change_event_is_noted_on_the_open_incident_of_its_source_and_kept(
    intake: IntakeUnderTest, client: httpx.AsyncClient
) -> None:
    routing_key = intake.tenants["tenant-a"].routing_key
    source = f"build-{uuid.uuid4().hex[:8]}.example.com"
    event = trigger(routing_key, None, "Checkout slow")
    event["payload"]["source"] = source
    opened = await client.post(ENQUEUE, json=event)
    assert opened.status_code == 202, opened.text
    incident_id = opened.headers["X-Aftercare-Incident-Id"]

    answer = await client.post(CHANGE, json=change(routing_key, "Deployed checkout v2.3.1", source))

    assert answer.status_code == 202, answer.text
    assert answer.json() == {"status": "success", "message": "Change event processed"}
    assert answer.headers["X-Aftercare-Incidents"] == "1"
    incident = (await client.get(f"/v1/incidents/{incident_id}", headers=intake.auth("tenant-a"))).json()
    noted = [entry for entry in incident["timeline"] if entry["kind"] == "change"]
    assert len(noted) == 1 and "Deployed checkout v2.3.1" in noted[0]["summary"], incident["timeline"]
    events = await incident_events(intake, incident_id)
    assert [(e["type"], e["data"].get("kind")) for e in events][-1] == ("incident.updated", "change")
    assert "https://ci.example.com/builds/2" in events[-1]["data"]["message"]

    # Without an open incident for its source it is still kept, in the tenant's change log.
    elsewhere = await client.post(CHANGE, json=change(routing_key, "Rotated TLS certificates", "nowhere.example"))
    assert elsewhere.status_code == 202 and elsewhere.headers["X-Aftercare-Incidents"] == "0"
    mongo: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(intake.infrastructure.mongo_url)
    try:
        kept = await mongo[intake.database]["changes"].find_one({"_id": elsewhere.headers["X-Aftercare-Change-Id"]})
    finally:
        await mongo.close()
    assert kept is not None
    assert (kept["tenant_id"], kept["summary"], kept["source"]) == (
        "tenant-a",
        "Rotated TLS certificates",
        "nowhere.example",
    )
    assert kept["custom_details"]["build_number"] == "2" and kept["incident_ids"] == []


async def test_an_invalid_change_event_gets_pagerdutys_400(intake: IntakeUnderTest, client: httpx.AsyncClient) -> None:
    event = change(intake.tenants["tenant-a"].routing_key, "", None)

    answer = await client.post(CHANGE, json=event)

    assert answer.status_code == 400, answer.text
    assert answer.json()["status"] == "invalid event"
    assert any("payload.summary" in error for error in answer.json()["errors"])
    unknown = await client.post(CHANGE, json=change("0" * 32, "Deployed", None))
    assert unknown.status_code == 400 and "not registered" in unknown.json()["errors"][0]


async def test_other_paths_under_v2_answer_in_pagerdutys_format(client: httpx.AsyncClient) -> None:
    missing = await client.post("/v2/enqueu", json={})
    wrong_method = await client.get(ENQUEUE)

    assert missing.status_code == 404, missing.text
    assert missing.headers["content-type"].startswith("application/json")
    assert missing.json()["status"] == "not found" and "/v2/change/enqueue" in missing.json()["errors"][0]
    assert wrong_method.status_code == 405 and wrong_method.headers["Allow"] == "POST"
    assert wrong_method.json()["message"] == "Method Not Allowed"
