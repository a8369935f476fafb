"""Prometheus Alertmanager webhook (payload version 4), against a real intake process, Kafka and store.

Each alert is one incident found by its fingerprint: firing opens or updates it, resolved
resolves it. What is refused (bad token, malformed message) leaves no trace on Kafka.
"""

from __future__ import annotations

import json
import uuid
from typing import Any

import httpx
import pytest

from aftercare.events import topics

from .answers import assert_problem
from .conftest import IntakeUnderTest
from .incident_events import incident_events
from kafka_helpers import read_all

pytestmark = pytest.mark.integration

WEBHOOK = "/v1/alertmanager"


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def alert(fingerprint: str, *, status: str = "firing", alertname: str = "DiskFull", **extra: Any) -> dict[str, Any]:
    return {
        "status": status,
        "labels": {
            "alertname": alertname,
            "instance": "db1.example.net:9100",
            "job": "node",
            "severity": "warning",
            "mountpoint": "/var",
        },
        "annotations": {
            "summary": f"Disk almost full on db1 ({fingerprint})",
            "description": "Only 4% left on /var; writes will fail soon.",
            "runbook_url": "https://runbooks.example.net/disk",
        },
        "startsAt": "2024-05-01T10:00:00.123456789Z",
        "endsAt": "2024-05-01T11:00:00Z" if status == "resolved" else "0001-01-01T00:00:00Z",
        "generatorURL": "http://prometheus.example.net:9090/graph?g0.expr=disk_free",
        "fingerprint": fingerprint,
    } | extra


def message(*alerts: dict[str, Any], **extra: Any) -> dict[str, Any]:
    firing = any(a["status"] == "firing" for a in alerts)
    return {
        "version": "4",
        "groupKey": '{}/{severity="warning"}:{alertname="DiskFull"}',
        "truncatedAlerts": 0,
        "status": "firing" if firing else "resolved",
        "receiver": "aftercare",
        "groupLabels": {"alertname": "DiskFull"},
        "commonLabels": {"job": "node"},
        "commonAnnotations": {},
        "externalURL": "http://alertmanager.example.net:9093",
        "alerts": list(alerts),
    } | extra


def token_of(intake: IntakeUnderTest, tenant: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {intake.tenants[tenant].alertmanager_token}"}


async def topic_mentions(intake: IntakeUnderTest, marker: str) -> list[dict[str, Any]]:
    records = await read_all(intake.infrastructure.bootstrap_servers, topics.INCIDENTS)
    return [json.loads(r.value) for r in records if marker.encode() in r.value]


async def test_a_firing_alert_opens_an_incident_readable_through_the_api_and_announced_on_kafka(
    intake: IntakeUnderTest, client: httpx.AsyncClient
) -> None:
    fingerprint = uuid.uuid4().hex[:16]

    answer = await client.post(WEBHOOK, json=message(alert(fingerprint)), headers=token_of(intake, "tenant-a"))

    assert answer.status_code == 200, answer.text
    receipt = answer.json()
    assert receipt | {"alerts": []} == {
        "received": 1,
        "opened": 1,
        "updated": 0,
        "repeated": 0,
        "resolved": 0,
        "ignored": 0,
        "truncated_alerts": 0,
        "alerts": [],
    }
    (outcome,) = receipt["alerts"]
    assert outcome["outcome"] == "opened"
    assert outcome["fingerprint"] == fingerprint and outcome["alertname"] == "DiskFull"
    incident = (await client.get(f"/v1/incidents/{outcome['incident_id']}", headers=intake.auth("tenant-a"))).json()
    assert incident["number"] == outcome["number"]
    assert incident["title"] == f"Disk almost full on db1 ({fingerprint})"
    assert incident["description"].startswith("Only 4% left on /var; writes will fail soon.")
    assert incident["channel"] == "alertmanager"
    assert incident["severity"] == "warning"
    assert incident["source"] == "db1.example.net:9100"
    assert incident["dedup_key"] == f"alertmanager:{fingerprint}"
    assert incident["labels"] == {
        "alertname": "DiskFull",
        "instance": "db1.example.net:9100",
        "job": "node",
        "severity": "warning",
        "mountpoint": "/var",
    }
    assert incident["first_seen_at"].startswith("2024-05-01T10:00:00.123")
    assert incident["status"] == "reported"

    (reported,) = await incident_events(intake, outcome["incident_id"])
    assert reported["type"] == "incident.reported"
    assert reported["tenant_id"] == "tenant-a"
    assert reported["data"]["channel"] == "alertmanager"
    assert reported["data"]["dedup_key"] == f"alertmanager:{fingerprint}"


async def test_the_same_fingerprint_firing_again_updates_the_open_incident(
    intake: IntakeUnderTest, client: httpx.AsyncClient
) -> None:
    fingerprint = uuid.uuid4().hex[:16]
    first = await client.post(WEBHOOK, json=message(alert(fingerprint)), headers=token_of(intake, "tenant-a"))

    # Fired again (a new start) while the incident is still open: another occurrence.
    refired = alert(fingerprint, startsAt="2024-05-01T10:30:00Z")
    again = await client.post(WEBHOOK, json=message(refired), headers=token_of(intake, "tenant-a"))

    assert again.status_code == 200, again.text
    (opened,), (updated,) = first.json()["alerts"], again.json()["alerts"]
    assert updated["outcome"] == "updated"
    assert updated["incident_id"] == opened["incident_id"]
    incident = (await client.get(f"/v1/incidents/{opened['incident_id']}", headers=intake.auth("tenant-a"))).json()
    assert incident["occurrence_count"] == 2
    # A repeat notification is a sighting now, not at the alert's original start.
    assert incident["last_seen_at"] > incident["first_seen_at"]
    events = await incident_events(intake, opened["incident_id"])
    assert [event["type"] for event in events] == ["incident.reported", "incident.updated"]
    assert events[1]["data"]["kind"] == "occurrence" and events[1]["data"]["occurrence_count"] == 2


async def test_the_same_firing_sent_again_is_not_another_occurrence(
    intake: IntakeUnderTest, client: httpx.AsyncClient
) -> None:
    """Alertmanager repeats a group's firing alerts in every notification, and an HA pair sends
    each notification twice: same fingerprint and startsAt is the same firing, counted once."""
    fingerprint = uuid.uuid4().hex[:16]
    first = await client.post(WEBHOOK, json=message(alert(fingerprint)), headers=token_of(intake, "tenant-a"))
    assert first.status_code == 200, first.text

    # The HA pair's copy and a repeat notification, one with the alert twice in it.
    again = await client.post(WEBHOOK, json=message(alert(fingerprint)), headers=token_of(intake, "tenant-a"))
    twice = await client.post(
        WEBHOOK, json=message(alert(fingerprint), alert(fingerprint)), headers=token_of(intake, "tenant-a")
    )

    assert again.status_code == 200 and twice.status_code == 200, (again.text, twice.text)
    assert [a["outcome"] for a in again.json()["alerts"] + twice.json()["alerts"]] == ["repeated"] * 3
    assert again.json()["repeated"] == 1 and again.json()["updated"] == 0
    (opened,) = first.json()["alerts"]
    incident = (await client.get(f"/v1/incidents/{opened['incident_id']}", headers=intake.auth("tenant-a"))).json()
    assert incident["occurrence_count"] == 1
    assert [event["type"] for event in await incident_events(intake, opened["incident_id"])] == ["incident.reported"]


async def test_a_resolved_alert_resolves_its_incident(intake: IntakeUnderTest, client: httpx.AsyncClient) -> None:
    fingerprint = uuid.uuid4().hex[:16]
    first = await client.post(WEBHOOK, json=message(alert(fingerprint)), headers=token_of(intake, "tenant-a"))
    (opened,) = first.json()["alerts"]

    answer = await client.post(
        WEBHOOK, json=message(alert(fingerprint, status="resolved")), headers=token_of(intake, "tenant-a")
    )

    assert answer.status_code == 200, answer.text
    (resolved,) = answer.json()["alerts"]
    assert resolved["outcome"] == "resolved"
    assert resolved["incident_id"] == opened["incident_id"]
    incident = (await client.get(f"/v1/incidents/{opened['incident_id']}", headers=intake.auth("tenant-a"))).json()
    assert incident["status"] == "resolved"
    events = await incident_events(intake, opened["incident_id"])
    assert [event["type"] for event in events] == ["incident.reported", "incident.resolved"]
    assert events[1]["data"]["by"] == "alertmanager"
    assert events[1]["data"]["channel"] == "alertmanager"
    assert "ended 2024-05-01T11:00:00+00:00" in events[1]["data"]["resolution"]

    # Alertmanager may send the resolution again; the incident is not open any more, so nothing happens.
    repeat = await client.post(
        WEBHOOK, json=message(alert(fingerprint, status="resolved")), headers=token_of(intake, "tenant-a")
    )
    assert repeat.json()["alerts"][0]["outcome"] == "ignored"
    assert len(await incident_events(intake, opened["incident_id"])) == 2


async def test_one_message_handles_each_alert_on_its_own(intake: IntakeUnderTest, client: httpx.AsyncClient) -> None:
    new, known, unknown = (uuid.uuid4().hex[:16] for _ in range(3))
    await client.post(WEBHOOK, json=message(alert(known)), headers=token_of(intake, "tenant-a"))

    answer = await client.post(
        WEBHOOK,
        headers=token_of(intake, "tenant-a"),
        json=message(
            alert(new, alertname="HighLoad"),
            alert(known, startsAt="2024-05-01T10:30:00Z"),  # fired again: a new start
            alert(unknown, status="resolved"),
        ),
    )

    assert answer.status_code == 200, answer.text
    receipt = answer.json()
    assert [(a["fingerprint"], a["outcome"]) for a in receipt["alerts"]] == [
        (new, "opened"),
        (known, "updated"),
        (unknown, "ignored"),
    ]
    assert [receipt[count] for count in ("received", "opened", "updated", "resolved", "ignored")] == [3, 1, 1, 0, 1]
    assert receipt["alerts"][2]["incident_id"] is None
    assert await topic_mentions(intake, f"alertmanager:{unknown}") == []


async def test_a_resolved_alert_with_no_open_incident_changes_nothing(
    intake: IntakeUnderTest, client: httpx.AsyncClient
) -> None:
    fingerprint = uuid.uuid4().hex[:16]

    answer = await client.post(
        WEBHOOK, json=message(alert(fingerprint, status="resolved")), headers=token_of(intake, "tenant-a")
    )

    assert answer.status_code == 200
    assert answer.json()["alerts"] == [
        {
            "fingerprint": fingerprint,
            "alertname": "DiskFull",
            "status": "resolved",
            "outcome": "ignored",
            "incident_id": None,
            "number": None,
        }
    ]
    assert await topic_mentions(intake, fingerprint) == []


@pytest.mark.parametrize(
    "headers", [{}, {"Authorization": "Bearer not-a-token-issued-here"}, {"Authorization": "Basic dXNlcjpwYXNz"}]
)
async def test_a_missing_or_unknown_token_is_refused_with_401(
    intake: IntakeUnderTest, client: httpx.AsyncClient, headers: dict[str, str]
) -> None:
    fingerprint = uuid.uuid4().hex[:16]

    answer = await client.post(WEBHOOK, json=message(alert(fingerprint)), headers=headers)

    problem = assert_problem(answer, 401)
    assert answer.headers["WWW-Authenticate"] == "Bearer"
    assert "Bearer" in problem["detail"]
    assert await topic_mentions(intake, fingerprint) == []


@pytest.mark.parametrize(
    ("breakage", "field"),
    [
        ({"status": "burning"}, "alerts.0.status"),
        ({"labels": {}}, "alerts.0.labels"),
        ({"startsAt": "last tuesday"}, "alerts.0.startsAt"),
        ({"annotations": {"summary": ["not", "a", "string"]}}, "alerts.0.annotations.summary"),
    ],
)
async def test_a_malformed_message_is_refused_with_422_naming_the_field_and_nothing_is_applied(
    intake: IntakeUnderTest, client: httpx.AsyncClient, breakage: dict[str, Any], field: str
) -> None:
    good, bad = uuid.uuid4().hex[:16], uuid.uuid4().hex[:16]

    answer = await client.post(
        WEBHOOK, json=message(alert(good), alert(bad) | breakage), headers=token_of(intake, "tenant-a")
    )

    problem = assert_problem(answer, 422)
    assert field.replace("alerts.0", "alerts.1") in [error["field"] for error in problem["errors"]]
    assert "Nothing in this message was applied" in problem["detail"]
    assert await topic_mentions(intake, good) == []  # the valid alert beside it was not applied either


async def test_a_message_without_alerts_is_refused_with_422(intake: IntakeUnderTest, client: httpx.AsyncClient) -> None:
    body = {k: v for k, v in message(alert(uuid.uuid4().hex[:16])).items() if k != "alerts"}
    problem = assert_problem(await client.post(WEBHOOK, json=body, headers=token_of(intake, "tenant-a")), 422)
    assert {"field": "alerts", "message": "Field required"} in problem["errors"]


async def test_another_payload_version_is_refused_with_400(intake: IntakeUnderTest, client: httpx.AsyncClient) -> None:
    fingerprint = uuid.uuid4().hex[:16]

    answer = await client.post(
        WEBHOOK, json=message(alert(fingerprint), version="5"), headers=token_of(intake, "tenant-a")
    )

    problem = assert_problem(answer, 400)
    assert "version 4" in problem["detail"] and "'5'" in problem["detail"]
    assert await topic_mentions(intake, fingerprint) == []


async def test_a_body_that_is_not_json_is_refused_with_400(intake: IntakeUnderTest, client: httpx.AsyncClient) -> None:
    answer = await client.post(
        WEBHOOK,
        content=b'{"version": "4", "alerts": [',
        headers=token_of(intake, "tenant-a") | {"Content-Type": "application/json"},
    )
    assert assert_problem(answer, 400)["title"] == "Invalid JSON"


async def test_another_tenants_token_cannot_resolve_or_update_an_incident(
    intake: IntakeUnderTest, client: httpx.AsyncClient
) -> None:
    fingerprint = uuid.uuid4().hex[:16]
    first = await client.post(WEBHOOK, json=message(alert(fingerprint)), headers=token_of(intake, "tenant-a"))
    (opened,) = first.json()["alerts"]

    resolved_by_b = await client.post(
        WEBHOOK, json=message(alert(fingerprint, status="resolved")), headers=token_of(intake, "tenant-b")
    )
    firing_at_b = await client.post(WEBHOOK, json=message(alert(fingerprint)), headers=token_of(intake, "tenant-b"))

    assert resolved_by_b.json()["alerts"][0]["outcome"] == "ignored"
    assert firing_at_b.json()["alerts"][0]["outcome"] == "opened"  # tenant B's own incident
    assert firing_at_b.json()["alerts"][0]["incident_id"] != opened["incident_id"]
    incident = (await client.get(f"/v1/incidents/{opened['incident_id']}", headers=intake.auth("tenant-a"))).json()
    assert incident["status"] == "reported" and incident["occurrence_count"] == 1
    assert [event["type"] for event in await incident_events(intake, opened["incident_id"])] == ["incident.reported"]


# --- rate limit: an intake of its own, with a limit a test can reach --------------------------

RATE_LIMIT = 3


async def test_over_the_rate_limit_messages_get_429_with_retry_after_and_are_not_applied(
    limited_intake: IntakeUnderTest,
) -> None:
    answers: list[tuple[str, httpx.Response]] = []
    async with httpx.AsyncClient(base_url=limited_intake.base_url, timeout=30.0) as http:
        # Twice the per-minute limit and more: one window goes over it even if a minute turns meanwhile.
        for _ in range(2 * RATE_LIMIT + 2):
            fingerprint = uuid.uuid4().hex[:16]
            answers.append(
                (
                    fingerprint,
                    await http.post(
                        WEBHOOK, json=message(alert(fingerprint)), headers=token_of(limited_intake, "tenant-a")
                    ),
                )
            )

    assert {answer.status_code for _, answer in answers} == {200, 429}
    fingerprint, refused = next((fp, answer) for fp, answer in answers if answer.status_code == 429)
    problem = assert_problem(refused, 429)
    assert int(refused.headers["Retry-After"]) >= 1
    assert f"{RATE_LIMIT} requests a minute" in problem["detail"]
    assert await topic_mentions(limited_intake, fingerprint) == []


async def test_a_group_of_over_1000_alerts_and_over_1_mib_is_taken_whole(
    intake: IntakeUnderTest, client: httpx.AsyncClient
) -> None:
    """A mass outage's group (Alertmanager retries only 5xx, so a 4xx would drop it): 1,001 alerts
    and more than 1 MiB (the other endpoints' body limit) are applied, every alert accounted for."""
    padding = "x" * 1200  # annotations are prose; only what is kept is cut
    resolved = [
        alert(uuid.uuid4().hex[:16], status="resolved", annotations={"description": padding}) for _ in range(1000)
    ]
    firing = alert(uuid.uuid4().hex[:16], alertname="MassOutage")
    body = json.dumps(message(firing, *resolved)).encode()
    assert len(body) > 1024 * 1024 and len(resolved) + 1 > 1000

    answer = await client.post(
        WEBHOOK,
        content=body,
        headers=token_of(intake, "tenant-a") | {"Content-Type": "application/json"},
        timeout=300.0,
    )

    assert answer.status_code == 200, answer.text[:2000]
    receipt = answer.json()
    assert [receipt[count] for count in ("received", "opened", "ignored")] == [1001, 1, 1000]
    assert receipt["alerts"][0]["outcome"] == "opened" and receipt["alerts"][0]["alertname"] == "MassOutage"


async def test_an_alert_with_a_label_over_the_limit_is_refused_alone_with_422_naming_it(
    intake: IntakeUnderTest, client: httpx.AsyncClient
) -> None:
    good, bad = uuid.uuid4().hex[:16], uuid.uuid4().hex[:16]
    oversized = alert(bad)
    oversized["labels"] = oversized["labels"] | {"pod": "p" * 5000}

    answer = await client.post(WEBHOOK, json=message(alert(good), oversized), headers=token_of(intake, "tenant-a"))

    problem = assert_problem(answer, 422)
    assert problem["errors"] == [
        {
            "field": "alerts[1].labels.pod",
            "message": "'alerts[1].labels.pod' is 5,000 characters long; at most 1,024 are accepted",
        }
    ]
    # The other alert of the group was applied, and says so.
    assert [(a["fingerprint"], a["outcome"]) for a in problem["alerts"]] == [(good, "opened"), (bad, "refused")]
    assert await topic_mentions(intake, f"alertmanager:{bad}") == []
