"""The JSON API (`/v1/incidents`) against a real intake process, Kafka broker and store.

What a monitoring system or a customer's tool can rely on: a 202 with the incident's id, number
and status URL means the incident is stored and its event is on Kafka; what it reads back is
only its own; retries with an Idempotency-Key never open a second incident; and every mistake
it can make is answered with an RFC 9457 problem saying what to change, with nothing on Kafka.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from pymongo import AsyncMongoClient

from aftercare.events import topics

from .answers import assert_problem
from .conftest import IntakeUnderTest, start_intake, stop_intake
from .incident_events import distinct, incident_events, of_type
from kafka_helpers import read_all

pytestmark = pytest.mark.integration

INCIDENTS = "/v1/incidents"
TIER = {"name": "standard", "sla": [{"priority": "P2", "response_minutes": 60, "resolution_minutes": 480}]}


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


async def events_mentioning(intake: IntakeUnderTest, marker: str) -> list[dict[str, Any]]:
    records = await read_all(intake.infrastructure.bootstrap_servers, topics.INCIDENTS)
    return distinct([json.loads(r.value) for r in records if marker.encode() in r.value])


async def report(client: httpx.AsyncClient, headers: dict[str, str], **fields: Any) -> dict[str, Any]:
    answer = await client.post(INCIDENTS, json={"title": unique("Disk full on billing-db")} | fields, headers=headers)
    assert answer.status_code == 202, answer.text
    return dict(answer.json())


async def new_tenant_key(client: httpx.AsyncClient, intake: IntakeUnderTest) -> dict[str, str]:
    """A tenant of its own (through the admin API), so counts and pages are exactly this test's."""
    tenant_id = unique("shop")
    created = await client.put(
        f"/admin/tenants/{tenant_id}", headers=intake.admin(), json={"name": "Corner Shop", "tier": TIER}
    )
    assert created.status_code == 201, created.text
    issued = await client.post(f"/admin/tenants/{tenant_id}/api-keys", headers=intake.admin(), json={"name": "ci"})
    assert issued.status_code == 201, issued.text
    return {"Authorization": f"Bearer {issued.json()['secret']}"}


# --- reporting and reading back ------------------------------------------------------------


async def test_report_is_accepted_with_number_and_status_url_and_announced_on_kafka(
    client: httpx.AsyncClient, intake: IntakeUnderTest
) -> None:
    title = unique("Checkout returns 502")
    answer = await client.post(
        INCIDENTS,
        headers=intake.auth("tenant-a"),
        json={
            "title": title,
            "description": "Since 09:12, every third checkout fails.",
            "severity": "critical",
            "system": "billing-db",
            "source": "web-03",
            "labels": {"team": "payments"},
            "reporter": {"name": "Dana Ops", "email": "dana@tenant-a.example.net"},
        },
    )

    assert answer.status_code == 202, answer.text
    accepted = answer.json()
    incident_id = accepted["incident_id"]
    assert accepted["number"].startswith("INC-") and accepted["number"][4:].isdigit()
    assert accepted["status"] == "reported" and accepted["created"] is True
    assert accepted["status_url"].endswith(f"{INCIDENTS}/{incident_id}")
    assert answer.headers["location"] == accepted["status_url"]

    read = await client.get(accepted["status_url"], headers=intake.auth("tenant-a"))
    assert read.status_code == 200, read.text
    incident = read.json()
    assert incident["incident_id"] == incident_id and incident["tenant_id"] == "tenant-a"
    assert incident["number"] == accepted["number"] and incident["title"] == title
    assert incident["severity"] == "critical" and incident["channel"] == "api"
    assert incident["labels"] == {"team": "payments"} and incident["reporter"]["name"] == "Dana Ops"
    assert [entry["kind"] for entry in incident["timeline"]] == ["reported"]
    assert incident["timeline"][0]["by"] == "Dana Ops" and incident["timeline"][0]["event_id"]

    # 202 means the event is already durable in Kafka: no waiting needed.
    events = await incident_events(intake, incident_id)
    (reported,) = of_type(events, "incident.reported")
    assert reported["tenant_id"] == "tenant-a" and reported["incident_id"] == incident_id
    assert reported["source"] == "intake" and reported["correlation_id"]
    assert reported["id"] == incident["timeline"][0]["event_id"]
    assert reported["data"]["number"] == accepted["number"] and reported["data"]["title"] == title
    headers = reported["_headers"]
    assert headers["tenant_id"] == b"tenant-a" and headers["event_type"] == b"incident.reported"
    assert headers["traceparent"].startswith(b"00-")


async def test_unknown_incident_is_a_404_problem(client: httpx.AsyncClient, intake: IntakeUnderTest) -> None:
    answer = await client.get(f"{INCIDENTS}/{uuid.uuid4()}", headers=intake.auth("tenant-a"))
    assert_problem(answer, 404)


async def test_list_filters_by_status_channel_and_since_and_pages_newest_first(
    client: httpx.AsyncClient, intake: IntakeUnderTest
) -> None:
    key = await new_tenant_key(client, intake)
    first = await report(client, key)
    second = await report(client, key)
    third = await report(client, key)
    acknowledged = await client.post(
        f"{INCIDENTS}/{second['incident_id']}/acknowledge", headers=key, json={"by": "Sam at the support desk"}
    )
    assert acknowledged.status_code == 200, acknowledged.text

    everything = (await client.get(INCIDENTS, headers=key)).json()
    assert everything["total"] == 3
    assert [item["incident_id"] for item in everything["items"]] == [
        third["incident_id"],
        second["incident_id"],
        first["incident_id"],
    ]
    assert all(item["timeline"] == [] for item in everything["items"])  # timelines only on the incident itself

    page_one = (await client.get(INCIDENTS, headers=key, params={"limit": 2, "offset": 0})).json()
    page_two = (await client.get(INCIDENTS, headers=key, params={"limit": 2, "offset": 2})).json()
    assert (page_one["total"], page_one["limit"], page_one["offset"]) == (3, 2, 0)
    assert [i["incident_id"] for i in page_one["items"] + page_two["items"]] == [
        i["incident_id"] for i in everything["items"]
    ]
    assert page_two["offset"] == 2 and len(page_two["items"]) == 1

    only_acknowledged = (await client.get(INCIDENTS, headers=key, params={"status": "acknowledged"})).json()
    assert [i["incident_id"] for i in only_acknowledged["items"]] == [second["incident_id"]]
    both = (
        await client.get(INCIDENTS, headers=key, params=[("status", "acknowledged"), ("status", "reported")])
    ).json()
    assert both["total"] == 3

    assert (await client.get(INCIDENTS, headers=key, params={"channel": "api"})).json()["total"] == 3
    assert (await client.get(INCIDENTS, headers=key, params={"channel": "email"})).json()["total"] == 0

    second_created = (await client.get(f"{INCIDENTS}/{second['incident_id']}", headers=key)).json()["created_at"]
    since_second = (await client.get(INCIDENTS, headers=key, params={"since": second_created})).json()
    assert {i["incident_id"] for i in since_second["items"]} == {second["incident_id"], third["incident_id"]}
    tomorrow = (datetime.now(UTC) + timedelta(days=1)).isoformat()
    assert (await client.get(INCIDENTS, headers=key, params={"since": tomorrow})).json()["total"] == 0


async def test_list_refuses_a_page_size_out_of_range(client: httpx.AsyncClient, intake: IntakeUnderTest) -> None:
    problem = assert_problem(await client.get(INCIDENTS, headers=intake.auth("tenant-a"), params={"limit": 0}), 422)
    assert any(error["field"].endswith("limit") for error in problem["errors"])


async def test_reports_at_the_same_moment_get_distinct_numbers(
    client: httpx.AsyncClient, intake: IntakeUnderTest
) -> None:
    key = await new_tenant_key(client, intake)  # a new tenant: even its number counter starts in the race

    answers = await asyncio.gather(
        *(client.post(INCIDENTS, headers=key, json={"title": unique("Power dip")}) for _ in range(20))
    )

    assert [answer.status_code for answer in answers] == [202] * 20, [a.text for a in answers if a.status_code != 202]
    numbers = sorted(int(answer.json()["number"].removeprefix("INC-")) for answer in answers)
    assert numbers == list(range(1001, 1021))


# --- dedup and idempotency ------------------------------------------------------------------


async def test_same_dedup_key_adds_an_occurrence_to_the_open_incident(
    client: httpx.AsyncClient, intake: IntakeUnderTest
) -> None:
    dedup_key = unique("billing-db/disk")
    first = await report(client, intake.auth("tenant-a"), dedup_key=dedup_key)
    again = await report(client, intake.auth("tenant-a"), dedup_key=dedup_key, title="Disk still full")

    assert again["incident_id"] == first["incident_id"] and again["number"] == first["number"]
    assert first["created"] is True and again["created"] is False
    incident = (await client.get(first["status_url"], headers=intake.auth("tenant-a"))).json()
    assert incident["occurrence_count"] == 2
    assert [entry["kind"] for entry in incident["timeline"]] == ["reported", "occurrence"]

    events = await incident_events(intake, first["incident_id"])
    assert len(of_type(events, "incident.reported")) == 1
    (updated,) = of_type(events, "incident.updated")
    assert updated["data"]["kind"] == "occurrence" and updated["data"]["occurrence_count"] == 2


async def test_a_burst_of_the_same_alert_opens_one_incident_and_counts_every_report(
    client: httpx.AsyncClient, intake: IntakeUnderTest
) -> None:
    dedup_key = unique("ups-07/on-battery")

    answers = await asyncio.gather(
        *(
            client.post(
                INCIDENTS,
                headers=intake.auth("tenant-a"),
                json={"title": f"UPS 7 on battery ({n})", "dedup_key": dedup_key},
            )
            for n in range(12)
        )
    )

    assert [answer.status_code for answer in answers] == [202] * 12, [a.text for a in answers]
    (incident_id,) = {answer.json()["incident_id"] for answer in answers}
    assert sum(answer.json()["created"] for answer in answers) == 1
    incident = (await client.get(f"{INCIDENTS}/{incident_id}", headers=intake.auth("tenant-a"))).json()
    assert incident["occurrence_count"] == 12
    events = await incident_events(intake, incident_id)
    assert len(of_type(events, "incident.reported")) == 1
    assert sorted(e["data"]["occurrence_count"] for e in of_type(events, "incident.updated")) == list(range(2, 13))


async def test_idempotency_key_retry_returns_the_same_incident_and_publishes_once(
    client: httpx.AsyncClient, intake: IntakeUnderTest
) -> None:
    body = {"title": unique("Nightly backup failed"), "severity": "warning"}
    headers = intake.auth("tenant-a") | {"Idempotency-Key": unique("retry")}

    first = await client.post(INCIDENTS, headers=headers, json=body)
    retry = await client.post(INCIDENTS, headers=headers, json=body)

    assert first.status_code == retry.status_code == 202, (first.text, retry.text)
    assert retry.json()["incident_id"] == first.json()["incident_id"]
    assert retry.json()["number"] == first.json()["number"]
    assert first.json()["created"] is True and retry.json()["created"] is False
    assert len(of_type(await events_mentioning(intake, body["title"]), "incident.reported")) == 1


async def test_idempotency_key_with_dedup_key_retry_adds_no_second_occurrence(
    client: httpx.AsyncClient, intake: IntakeUnderTest
) -> None:
    dedup_key = unique("web-03/http-5xx")
    opened = await report(client, intake.auth("tenant-a"), dedup_key=dedup_key)
    body = {"title": unique("5xx rate still high"), "dedup_key": dedup_key}
    headers = intake.auth("tenant-a") | {"Idempotency-Key": unique("retry")}

    first = await client.post(INCIDENTS, headers=headers, json=body)
    retry = await client.post(INCIDENTS, headers=headers, json=body)

    assert first.json()["incident_id"] == retry.json()["incident_id"] == opened["incident_id"]
    incident = (await client.get(opened["status_url"], headers=intake.auth("tenant-a"))).json()
    assert incident["occurrence_count"] == 2
    assert len(of_type(await incident_events(intake, opened["incident_id"]), "incident.updated")) == 1


async def test_idempotency_key_reused_with_another_body_is_a_409_problem(
    client: httpx.AsyncClient, intake: IntakeUnderTest
) -> None:
    headers = intake.auth("tenant-a") | {"Idempotency-Key": unique("reused")}
    first = await client.post(INCIDENTS, headers=headers, json={"title": unique("VPN down")})
    assert first.status_code == 202, first.text
    other_title = unique("Printer jammed")

    problem = assert_problem(await client.post(INCIDENTS, headers=headers, json={"title": other_title}), 409)

    assert "Idempotency-Key" in problem["detail"]
    assert await events_mentioning(intake, other_title) == []


# --- moves people ask for ------------------------------------------------------------------


async def test_acknowledge_resolve_and_reopen_move_the_incident_and_announce_each_move(
    client: httpx.AsyncClient, intake: IntakeUnderTest
) -> None:
    auth = intake.auth("tenant-a")
    opened = await report(client, auth)
    url = opened["status_url"]

    acknowledged = await client.post(f"{url}/acknowledge", headers=auth, json={"by": "Sam", "note": "Looking"})
    assert acknowledged.status_code == 200 and acknowledged.json()["status"] == "acknowledged", acknowledged.text
    resolved = await client.post(f"{url}/resolve", headers=auth, json={"by": "Sam", "resolution": "Disk cleaned"})
    assert resolved.status_code == 200 and resolved.json()["status"] == "resolved", resolved.text
    assert resolved.json()["resolved_at"]
    reopened = await client.post(f"{url}/reopen", headers=auth, json={"by": "Dana", "reason": "Full again"})
    assert reopened.status_code == 200 and reopened.json()["status"] == "reopened", reopened.text

    incident = (await client.get(url, headers=auth)).json()
    assert [entry["kind"] for entry in incident["timeline"]] == ["reported", "acknowledged", "resolved", "reopened"]
    events = await incident_events(intake, opened["incident_id"])
    assert [event["type"] for event in events] == [
        "incident.reported",
        "incident.acknowledged",
        "incident.resolved",
        "incident.reopened",
    ]
    assert events[1]["data"]["by"] == "Sam" and events[1]["data"]["note"] == "Looking"
    assert events[2]["data"]["resolution"] == "Disk cleaned"
    assert events[3]["data"]["reason"] == "Full again"
    assert [event["id"] for event in events] == [entry["event_id"] for entry in incident["timeline"]]


async def test_resolving_a_resolved_or_closed_incident_again_changes_nothing(
    client: httpx.AsyncClient, intake: IntakeUnderTest
) -> None:
    auth = intake.auth("tenant-a")
    opened = await report(client, auth)
    url = opened["status_url"]
    assert (await client.post(f"{url}/resolve", headers=auth, json={"by": "Sam"})).status_code == 200

    again = await client.post(f"{url}/resolve", headers=auth, json={"by": "Kim"})

    assert again.status_code == 200 and again.json()["status"] == "resolved", again.text
    assert len(of_type(await incident_events(intake, opened["incident_id"]), "incident.resolved")) == 1
    # No endpoint closes incidents yet; close this one in the store as a closing job would.
    store: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(intake.infrastructure.mongo_url, tz_aware=True)
    try:
        await store[intake.database]["incidents"].update_one(
            {"_id": opened["incident_id"]}, {"$set": {"status": "closed"}}
        )
    finally:
        await store.close()
    closed = await client.post(f"{url}/resolve", headers=auth, json={"by": "Kim"})
    assert closed.status_code == 200 and closed.json()["status"] == "closed", closed.text
    assert len(of_type(await incident_events(intake, opened["incident_id"]), "incident.resolved")) == 1


async def test_a_move_the_lifecycle_forbids_is_a_409_problem_that_says_what_is_possible(
    client: httpx.AsyncClient, intake: IntakeUnderTest
) -> None:
    auth = intake.auth("tenant-a")
    opened = await report(client, auth)

    problem = assert_problem(await client.post(f"{opened['status_url']}/reopen", headers=auth, json={"by": "Sam"}), 409)

    assert "reported cannot become reopened" in problem["detail"]
    assert "acknowledged" in problem["detail"] and "resolved" in problem["detail"]
    assert (await client.get(opened["status_url"], headers=auth)).json()["status"] == "reported"
    assert of_type(await incident_events(intake, opened["incident_id"]), "incident.reopened") == []


# --- bad input -------------------------------------------------------------------------------


async def test_invalid_json_is_a_400_problem(client: httpx.AsyncClient, intake: IntakeUnderTest) -> None:
    marker = unique("broken")
    answer = await client.post(
        INCIDENTS,
        content=b'{"title": "' + marker.encode() + b'",',
        headers=intake.auth("tenant-a") | {"Content-Type": "application/json"},
    )
    problem = assert_problem(answer, 400)
    assert "JSON" in problem["detail"]
    assert await events_mentioning(intake, marker) == []


async def test_missing_title_is_a_422_problem_naming_the_field(
    client: httpx.AsyncClient, intake: IntakeUnderTest
) -> None:
    marker = unique("no title")
    problem = assert_problem(
        await client.post(INCIDENTS, headers=intake.auth("tenant-a"), json={"description": marker}), 422
    )
    assert {"field": "title", "message": "Field required"} in problem["errors"]
    assert await events_mentioning(intake, marker) == []


@pytest.mark.parametrize("moment", ["0001-01-01T00:00:00+14:00", "9999-12-31T23:59:59-14:00"])
async def test_an_occurred_at_outside_the_calendar_in_utc_is_a_422_problem_naming_the_field(
    client: httpx.AsyncClient, intake: IntakeUnderTest, moment: str
) -> None:
    # Valid ISO 8601, but not a time once moved to UTC (as the store keeps times): the sender's
    # mistake, not an outage.
    marker = unique("calendar edge")
    problem = assert_problem(
        await client.post(INCIDENTS, headers=intake.auth("tenant-a"), json={"title": marker, "occurred_at": moment}),
        422,
    )
    assert [error["field"] for error in problem["errors"]] == ["occurred_at"]
    assert "UTC" in problem["errors"][0]["message"]
    listed = await client.get(INCIDENTS, headers=intake.auth("tenant-a"), params={"since": moment})
    assert_problem(listed, 422)
    assert await events_mentioning(intake, marker) == []


async def test_an_unknown_field_is_a_422_problem_naming_it(client: httpx.AsyncClient, intake: IntakeUnderTest) -> None:
    problem = assert_problem(
        await client.post(INCIDENTS, headers=intake.auth("tenant-a"), json={"title": unique("x"), "priority": "P1"}),
        422,
    )
    assert [error["field"] for error in problem["errors"]] == ["priority"]


async def test_a_label_name_the_store_cannot_keep_is_a_422_problem(
    client: httpx.AsyncClient, intake: IntakeUnderTest
) -> None:
    marker = unique("dotted label")
    problem = assert_problem(
        await client.post(
            INCIDENTS,
            headers=intake.auth("tenant-a"),
            json={"title": marker, "labels": {"app.kubernetes.io/name": "billing"}},
        ),
        422,
    )
    assert problem["errors"][0]["field"] == "labels" and "'.'" in problem["errors"][0]["message"]
    assert await events_mentioning(intake, marker) == []


async def test_no_api_key_is_a_401_problem_with_www_authenticate(client: httpx.AsyncClient) -> None:
    answer = await client.post(INCIDENTS, json={"title": unique("anonymous")})
    assert_problem(answer, 401)
    assert answer.headers["www-authenticate"] == "Bearer"


async def test_a_wrong_api_key_is_a_401_problem(client: httpx.AsyncClient) -> None:
    marker = unique("wrong key")
    for headers in ({"Authorization": "Bearer ak_not-a-key"}, {"X-API-Key": "ak_not-a-key"}):
        answer = await client.post(INCIDENTS, headers=headers, json={"title": marker})
        assert "revoked or mistyped" in assert_problem(answer, 401)["detail"]
        assert answer.headers["www-authenticate"] == "Bearer"
    assert_problem(await client.get(INCIDENTS, headers={"Authorization": "Bearer ak_not-a-key"}), 401)


# --- limits (an intake of their own: a small body limit and a low rate limit) ---------------


@pytest.fixture(scope="module")
def strict_intake(infrastructure: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[IntakeUnderTest]:
    service = start_intake(
        infrastructure,
        tmp_path_factory.mktemp("strict-intake"),
        extra_env={"AFTERCARE_INTAKE_MAX_BODY_BYTES": "2048", "AFTERCARE_INTAKE_RATE_LIMIT_PER_MINUTE": "3"},
    )
    try:
        yield service
    finally:
        stop_intake(service)


async def test_a_body_over_the_limit_is_a_413_problem(strict_intake: IntakeUnderTest) -> None:
    marker = unique("oversized")
    body = json.dumps({"title": marker, "description": "x" * 3000}).encode()
    headers = strict_intake.auth("tenant-b") | {"Content-Type": "application/json"}

    async def chunks() -> AsyncIterator[bytes]:  # no Content-Length: the limit must hold while reading
        for start in range(0, len(body), 512):
            yield body[start : start + 512]

    async with httpx.AsyncClient(base_url=strict_intake.base_url, timeout=30.0) as http:
        declared = await http.post(INCIDENTS, content=body, headers=headers)
        streamed = await http.post(INCIDENTS, content=chunks(), headers=headers)
        within = await http.post(INCIDENTS, json={"title": unique("small enough")}, headers=headers)

    for answer in (declared, streamed):
        assert "2048 bytes" in assert_problem(answer, 413)["detail"]
    assert within.status_code == 202, within.text
    assert await events_mentioning(strict_intake, marker) == []


async def test_over_the_rate_limit_is_a_429_problem_with_retry_after_and_nothing_published(
    strict_intake: IntakeUnderTest,
) -> None:
    titles = [unique("Burst report") for _ in range(7)]
    answers = []
    async with httpx.AsyncClient(base_url=strict_intake.base_url, timeout=30.0) as http:
        # At most 3 a minute; 7 quick requests span at most two minute windows, so one is refused.
        for title in titles:
            answer = await http.post(INCIDENTS, headers=strict_intake.auth("tenant-a"), json={"title": title})
            answers.append(answer)
            if answer.status_code == 429:
                break

    refused = answers[-1]
    problem = assert_problem(refused, 429)
    assert "3 requests a minute" in problem["detail"]
    assert 1 <= int(refused.headers["retry-after"]) <= 60
    assert len(answers) >= 4 and all(answer.status_code == 202 for answer in answers[:-1])
    assert await events_mentioning(strict_intake, titles[len(answers) - 1]) == []
    assert len(await events_mentioning(strict_intake, titles[0])) == 1
