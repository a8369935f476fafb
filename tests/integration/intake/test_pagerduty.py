"""PagerDuty Events API v2 compatibility, against a real intake process, Kafka broker and store.

A sender that talks to PagerDuty today points its base URL at intake: same path, same body,
same status codes and JSON answers. What it triggers must be readable through the JSON API and
announced on Kafka; what is refused must leave no trace on Kafka.
"""

from __future__ import annotations

import json
import uuid
from typing import Any

import httpx
import pytest

from aftercare.events import topics

from .conftest import IntakeUnderTest
from .incident_events import incident_events
from kafka_helpers import read_all

pytestmark = pytest.mark.integration

ENQUEUE = "/v2/enqueue"


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def trigger(routing_key: str, dedup_key: str | None, summary: str, **extra: Any) -> dict[str, Any]:
    event: dict[str, Any] = {
        "routing_key": routing_key,
        "event_action": "trigger",
        "payload": {
            "summary": summary,
            "source": "prod-datapipe03.example.com",
            "severity": "critical",
            "timestamp": "2015-07-17T08:42:58.315+0000",
            "component": "mysql",
            "group": "prod-datapipe",
            "class": "disk",
            "custom_details": {"free space": "1%", "load avg": 0.75},
        },
        "client": "Sample Monitoring Service",
        "client_url": "https://monitoring.example.com",
        "links": [{"href": "https://runbooks.example.com/disk", "text": "Disk runbook"}],
        "images": [
            {"src": "https://charts.example.com/disk.png", "href": "https://charts.example.com", "alt": "Disk usage"}
        ],
    }
    if dedup_key is not None:
        event["dedup_key"] = dedup_key
    return event | extra


def follow_up(routing_key: str, action: str, dedup_key: str) -> dict[str, Any]:
    return {"routing_key": routing_key, "event_action": action, "dedup_key": dedup_key}


async def topic_mentions(intake: IntakeUnderTest, marker: str) -> list[dict[str, Any]]:
    """Events anywhere on the incidents topic whose content contains ``marker``."""
    records = await read_all(intake.infrastructure.bootstrap_servers, topics.INCIDENTS)
    return [json.loads(r.value) for r in records if marker.encode() in r.value]


def assert_refused(
    answer: httpx.Response, *, status: str = "invalid event", message: str = "Event object is invalid"
) -> list[str]:
    """PagerDuty's error body (not problem+json: PagerDuty clients parse this shape)."""
    assert answer.status_code == 400, answer.text
    assert answer.headers["content-type"].startswith("application/json")
    body = answer.json()
    assert body["status"] == status
    assert body["message"] == message
    assert body["errors"] and all(isinstance(error, str) for error in body["errors"])
    return list(body["errors"])


async def test_trigger_opens_an_incident_readable_through_the_api_and_announced_on_kafka(
    intake: IntakeUnderTest, client: httpx.AsyncClient
) -> None:
    tenant = intake.tenants["tenant-a"]
    dedup_key, summary = unique("srv01/mysql"), unique("DISK at 99% on prod-datapipe03")

    answer = await client.post(ENQUEUE, json=trigger(tenant.routing_key, dedup_key, summary))

    assert answer.status_code == 202, answer.text
    assert answer.json() == {"status": "success", "message": "Event processed", "dedup_key": dedup_key}
    incident_id = answer.headers["X-Aftercare-Incident-Id"]
    incident = (await client.get(f"/v1/incidents/{incident_id}", headers=intake.auth("tenant-a"))).json()
    assert incident["number"] == answer.headers["X-Aftercare-Incident-Number"]
    assert incident["title"] == summary
    assert incident["channel"] == "pagerduty"
    assert incident["severity"] == "critical"
    assert incident["status"] == "reported"
    assert incident["source"] == "prod-datapipe03.example.com"
    assert incident["dedup_key"] == dedup_key
    assert incident["labels"] == {"component": "mysql", "group": "prod-datapipe", "class": "disk"}
    assert incident["first_seen_at"].startswith("2015-07-17T08:42:58.315")
    assert "free space: 1%" in incident["description"]
    assert incident["details"]["pagerduty"]["links"] == [
        {"href": "https://runbooks.example.com/disk", "text": "Disk runbook"}
    ]
    assert incident["details"]["pagerduty"]["custom_details"] == {"free space": "1%", "load avg": 0.75}

    listed = (
        await client.get(
            "/v1/incidents", params={"channel": "pagerduty", "limit": 200}, headers=intake.auth("tenant-a")
        )
    ).json()
    assert [item["incident_id"] for item in listed["items"] if item["dedup_key"] == dedup_key] == [incident_id]

    (reported,) = await incident_events(intake, incident_id)
    assert reported["type"] == "incident.reported"
    assert reported["tenant_id"] == "tenant-a"
    assert reported["data"]["channel"] == "pagerduty"
    assert reported["data"]["dedup_key"] == dedup_key
    assert reported["data"]["title"] == summary


async def test_trigger_without_dedup_key_gets_a_generated_one_that_resolves_it(
    intake: IntakeUnderTest, client: httpx.AsyncClient
) -> None:
    tenant = intake.tenants["tenant-a"]

    answer = await client.post(ENQUEUE, json=trigger(tenant.routing_key, None, unique("Queue backlog")))

    assert answer.status_code == 202, answer.text
    generated = answer.json()["dedup_key"]
    assert len(generated) == 32
    resolved = await client.post(ENQUEUE, json=follow_up(tenant.routing_key, "resolve", generated))
    assert resolved.status_code == 202
    assert resolved.json()["dedup_key"] == generated
    incident = (
        await client.get(f"/v1/incidents/{answer.headers['X-Aftercare-Incident-Id']}", headers=intake.auth("tenant-a"))
    ).json()
    assert incident["status"] == "resolved"


async def test_a_repeated_trigger_adds_an_occurrence_to_the_open_incident(
    intake: IntakeUnderTest, client: httpx.AsyncClient
) -> None:
    tenant = intake.tenants["tenant-a"]
    dedup_key, summary = unique("srv02/http"), unique("HTTP 500s on checkout")

    first = await client.post(ENQUEUE, json=trigger(tenant.routing_key, dedup_key, summary))
    second = await client.post(ENQUEUE, json=trigger(tenant.routing_key, dedup_key, summary + " (again)"))

    assert first.status_code == second.status_code == 202
    incident_id = first.headers["X-Aftercare-Incident-Id"]
    assert second.headers["X-Aftercare-Incident-Id"] == incident_id
    incident = (await client.get(f"/v1/incidents/{incident_id}", headers=intake.auth("tenant-a"))).json()
    assert incident["occurrence_count"] == 2
    assert incident["last_seen_at"] >= incident["first_seen_at"]
    assert [entry["kind"] for entry in incident["timeline"]] == ["reported", "occurrence"]
    listed = (
        await client.get(
            "/v1/incidents", params={"channel": "pagerduty", "limit": 200}, headers=intake.auth("tenant-a")
        )
    ).json()
    assert len([item for item in listed["items"] if item["dedup_key"] == dedup_key]) == 1

    events = await incident_events(intake, incident_id)
    assert [event["type"] for event in events] == ["incident.reported", "incident.updated"]
    assert events[1]["data"]["kind"] == "occurrence"
    assert events[1]["data"]["occurrence_count"] == 2


async def test_acknowledge_and_resolve_move_the_incident_and_a_later_trigger_opens_a_new_one(
    intake: IntakeUnderTest, client: httpx.AsyncClient
) -> None:
    tenant = intake.tenants["tenant-a"]
    dedup_key = unique("srv03/disk")
    opened = await client.post(ENQUEUE, json=trigger(tenant.routing_key, dedup_key, unique("Disk full")))
    incident_id = opened.headers["X-Aftercare-Incident-Id"]

    acknowledged = await client.post(ENQUEUE, json=follow_up(tenant.routing_key, "acknowledge", dedup_key))
    assert acknowledged.status_code == 202
    assert acknowledged.json() == {"status": "success", "message": "Event processed", "dedup_key": dedup_key}
    incident = (await client.get(f"/v1/incidents/{incident_id}", headers=intake.auth("tenant-a"))).json()
    assert incident["status"] == "acknowledged"

    resolve = follow_up(tenant.routing_key, "resolve", dedup_key) | {
        "payload": {"summary": "Disk cleaned", "source": "cleanup-bot", "severity": "info"}
    }
    resolved = await client.post(ENQUEUE, json=resolve)
    assert resolved.status_code == 202
    incident = (await client.get(f"/v1/incidents/{incident_id}", headers=intake.auth("tenant-a"))).json()
    assert incident["status"] == "resolved"
    assert incident["resolved_at"] is not None

    events = await incident_events(intake, incident_id)
    assert [event["type"] for event in events] == ["incident.reported", "incident.acknowledged", "incident.resolved"]
    assert events[1]["data"]["by"] == "pagerduty"
    assert events[1]["data"]["channel"] == "pagerduty"
    assert events[2]["data"]["by"] == "cleanup-bot"

    # As at PagerDuty: once resolved, the same dedup_key opens a new incident.
    again = await client.post(ENQUEUE, json=trigger(tenant.routing_key, dedup_key, unique("Disk full again")))
    assert again.status_code == 202
    assert again.headers["X-Aftercare-Incident-Id"] != incident_id


@pytest.mark.parametrize("action", ["acknowledge", "resolve"])
async def test_acknowledge_or_resolve_of_a_key_with_no_open_incident_is_accepted_and_changes_nothing(
    intake: IntakeUnderTest, client: httpx.AsyncClient, action: str
) -> None:
    dedup_key = unique("never-triggered")

    answer = await client.post(ENQUEUE, json=follow_up(intake.tenants["tenant-a"].routing_key, action, dedup_key))

    assert answer.status_code == 202
    assert answer.json() == {"status": "success", "message": "Event processed", "dedup_key": dedup_key}
    assert "X-Aftercare-Incident-Id" not in answer.headers
    assert await topic_mentions(intake, dedup_key) == []


@pytest.mark.parametrize(
    ("change", "expected_error"),
    [
        ({"payload": {"source": "db1", "severity": "critical"}}, "'payload.summary' is missing"),
        (
            {"payload": {"summary": "x" * 1025, "source": "db1", "severity": "critical"}},
            "'payload.summary' is too long (maximum is 1024 characters)",
        ),
        ({"payload": {"summary": "Disk full", "source": "db1", "severity": "sev1"}}, "'payload.severity' must be"),
        ({"payload": {"summary": "Disk full", "severity": "critical"}}, "'payload.source' is missing"),
        ({"event_action": "escalate"}, "'event_action' must be"),
        ({"event_action": "resolve", "dedup_key": None}, "'dedup_key' is required for resolve events"),
        ({"links": [{"text": "no href"}]}, "'links[0].href' is missing"),
        ({"dedup_key": "k" * 256}, "'dedup_key' is too long (maximum is 255 characters)"),
    ],
)
async def test_invalid_events_are_refused_in_pagerdutys_format_and_reach_no_topic(
    intake: IntakeUnderTest, client: httpx.AsyncClient, change: dict[str, Any], expected_error: str
) -> None:
    marker = unique("refused")
    event = trigger(intake.tenants["tenant-a"].routing_key, marker, marker) | change
    if event.get("dedup_key") is None:
        event.pop("dedup_key")

    errors = assert_refused(await client.post(ENQUEUE, json=event))

    assert any(error.startswith(expected_error) for error in errors), errors
    assert await topic_mentions(intake, marker) == []


async def test_a_body_that_is_not_json_is_refused_in_pagerdutys_format(client: httpx.AsyncClient) -> None:
    errors = assert_refused(
        await client.post(ENQUEUE, content=b'{"routing_key": "abc", ', headers={"Content-Type": "application/json"}),
        status="Unrecognized object",
        message="Event object format is unrecognized",
    )
    assert errors[0].startswith("JSON parse error")
    array = assert_refused(
        await client.post(ENQUEUE, json=[{"routing_key": "abc"}]),
        status="Unrecognized object",
        message="Event object format is unrecognized",
    )
    assert "JSON object" in array[0]


async def test_unknown_routing_keys_are_refused_with_what_is_wrong_with_them(
    intake: IntakeUnderTest, client: httpx.AsyncClient
) -> None:
    marker = unique("unknown-key")
    unknown = assert_refused(await client.post(ENQUEUE, json=trigger(uuid.uuid4().hex, marker, marker)))
    assert unknown == [e for e in unknown if "'routing_key' is not registered here" in e]
    malformed = assert_refused(await client.post(ENQUEUE, json=trigger("e+23rschqsESqk9Q6_-g", marker, marker)))
    assert malformed == [
        "Length of 'routing_key' is incorrect (should be 32 characters)",
        "'routing_key' cannot contain non-alphanumeric characters.",
    ]
    assert await topic_mentions(intake, marker) == []


async def test_an_event_over_pagerdutys_512_kb_limit_is_refused(
    intake: IntakeUnderTest, client: httpx.AsyncClient
) -> None:
    marker = unique("oversized")
    event = trigger(intake.tenants["tenant-a"].routing_key, marker, marker)
    event["payload"]["custom_details"] = {"log": "x" * (600 * 1024)}  # over 512 KB, under intake's 1 MiB

    errors = assert_refused(await client.post(ENQUEUE, json=event))

    assert "limited to 512 KB" in errors[0]
    assert await topic_mentions(intake, marker) == []


@pytest.mark.parametrize(
    "content_type", [None, "application/json; charset=utf-8", "text/plain", "application/x-www-form-urlencoded"]
)
async def test_the_body_is_read_as_json_whatever_the_content_type_says(
    intake: IntakeUnderTest, client: httpx.AsyncClient, content_type: str | None
) -> None:
    dedup_key = unique("content-type")
    body = json.dumps(trigger(intake.tenants["tenant-a"].routing_key, dedup_key, unique("Ping failed"))).encode()
    headers = {"Content-Type": content_type} if content_type else {}

    answer = await client.post(ENQUEUE, content=body, headers=headers)

    assert answer.status_code == 202, answer.text
    assert answer.json()["dedup_key"] == dedup_key


async def test_another_tenants_routing_key_cannot_touch_the_incident_of_a_dedup_key(
    intake: IntakeUnderTest, client: httpx.AsyncClient
) -> None:
    key_a, key_b = intake.tenants["tenant-a"].routing_key, intake.tenants["tenant-b"].routing_key
    dedup_key = unique("shared/name")
    opened = await client.post(ENQUEUE, json=trigger(key_a, dedup_key, unique("Tenant A's disk")))
    incident_id = opened.headers["X-Aftercare-Incident-Id"]

    for action in ("acknowledge", "resolve"):
        answer = await client.post(ENQUEUE, json=follow_up(key_b, action, dedup_key))
        assert answer.status_code == 202  # as PagerDuty: dropped, not an error that reveals anything
    b_trigger = await client.post(ENQUEUE, json=trigger(key_b, dedup_key, unique("Tenant B's disk")))

    incident = (await client.get(f"/v1/incidents/{incident_id}", headers=intake.auth("tenant-a"))).json()
    assert incident["status"] == "reported"
    assert incident["occurrence_count"] == 1
    assert [event["type"] for event in await incident_events(intake, incident_id)] == ["incident.reported"]
    assert b_trigger.headers["X-Aftercare-Incident-Id"] != incident_id
    hidden = await client.get(f"/v1/incidents/{incident_id}", headers=intake.auth("tenant-b"))
    assert hidden.status_code == 404


# --- rate limit: an intake of its own, with a limit a test can reach --------------------------

RATE_LIMIT = 3


async def test_over_the_rate_limit_events_get_429_with_retry_after_and_are_not_taken(
    limited_intake: IntakeUnderTest,
) -> None:
    routing_key = limited_intake.tenants["tenant-a"].routing_key
    answers: list[tuple[str, httpx.Response]] = []
    async with httpx.AsyncClient(base_url=limited_intake.base_url, timeout=30.0) as http:
        # The limit counts per minute; twice the limit and more gives one window over it even if a
        # minute turns during the loop.
        for _ in range(2 * RATE_LIMIT + 2):
            dedup_key = unique("throttled")
            answers.append((dedup_key, await http.post(ENQUEUE, json=trigger(routing_key, dedup_key, dedup_key))))

    refused = [(key, answer) for key, answer in answers if answer.status_code == 429]
    assert refused, [answer.status_code for _, answer in answers]
    assert {answer.status_code for _, answer in answers} == {202, 429}
    key, answer = refused[0]
    assert int(answer.headers["Retry-After"]) >= 1
    assert answer.headers["content-type"].startswith("application/json")
    body = answer.json()
    assert body["status"] == "throttle event"
    assert f"may send {RATE_LIMIT} events a minute" in body["errors"][0]
    assert await topic_mentions(limited_intake, key) == []
