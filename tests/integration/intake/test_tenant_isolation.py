"""Tenant A's incidents are invisible and untouchable with tenant B's credentials.

Against the real intake process: tenant B gets the same 404 for tenant A's incident as for one
that does not exist (no hint that it exists), never sees it in a list, cannot move it, and its
dedup keys live in its own space even when they are spelled the same.
"""

from __future__ import annotations

import json
import uuid
from typing import Any

import httpx
import pytest

from aftercare.events import topics

from .conftest import IntakeUnderTest
from .incident_events import distinct
from kafka_helpers import read_all

pytestmark = pytest.mark.integration

INCIDENTS = "/v1/incidents"


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


async def open_for(client: httpx.AsyncClient, intake: IntakeUnderTest, tenant: str, **fields: Any) -> dict[str, Any]:
    answer = await client.post(
        INCIDENTS, headers=intake.auth(tenant), json={"title": unique(f"Mail server down at {tenant}")} | fields
    )
    assert answer.status_code == 202, answer.text
    return dict(answer.json())


async def incident_events(intake: IntakeUnderTest, incident_id: str) -> list[dict[str, Any]]:
    records = await read_all(intake.infrastructure.bootstrap_servers, topics.INCIDENTS)
    return distinct([json.loads(r.value) for r in records if r.key == incident_id.encode()])


def assert_not_found(answer: httpx.Response) -> None:
    assert answer.status_code == 404, answer.text
    assert answer.headers["content-type"].startswith("application/problem+json")
    assert answer.json()["type"].endswith("/incident-not-found")


async def test_another_tenants_incident_reads_as_not_found(client: httpx.AsyncClient, intake: IntakeUnderTest) -> None:
    theirs = await open_for(client, intake, "tenant-a")

    as_b = await client.get(f"{INCIDENTS}/{theirs['incident_id']}", headers=intake.auth("tenant-b"))
    nowhere = await client.get(f"{INCIDENTS}/{uuid.uuid4()}", headers=intake.auth("tenant-b"))

    assert_not_found(as_b)
    assert_not_found(nowhere)
    # The same answer as for an id that does not exist: nothing tells B that A's incident exists.
    assert as_b.json()["title"] == nowhere.json()["title"]
    assert theirs["number"] not in as_b.text and "tenant-a" not in as_b.text
    assert (
        await client.get(f"{INCIDENTS}/{theirs['incident_id']}", headers=intake.auth("tenant-a"))
    ).status_code == 200


async def test_another_tenants_incident_is_never_in_the_list(
    client: httpx.AsyncClient, intake: IntakeUnderTest
) -> None:
    theirs = await open_for(client, intake, "tenant-a")
    ours = await open_for(client, intake, "tenant-b")

    listed = (await client.get(INCIDENTS, headers=intake.auth("tenant-b"), params={"limit": 200})).json()

    ids = {item["incident_id"] for item in listed["items"]}
    assert ours["incident_id"] in ids and theirs["incident_id"] not in ids
    assert {item["tenant_id"] for item in listed["items"]} == {"tenant-b"}
    everything_b = (
        await client.get(INCIDENTS, headers=intake.auth("tenant-b"), params={"limit": 200, "offset": 0})
    ).json()["total"]
    everything_a = (await client.get(INCIDENTS, headers=intake.auth("tenant-a"))).json()["total"]
    assert everything_b == listed["total"] and everything_a >= 1


@pytest.mark.parametrize("move", ["acknowledge", "resolve", "reopen"])
async def test_another_tenants_incident_cannot_be_moved(
    client: httpx.AsyncClient, intake: IntakeUnderTest, move: str
) -> None:
    theirs = await open_for(client, intake, "tenant-a")
    if move == "reopen":  # so that reopening would be allowed, were it B's incident
        resolved = await client.post(
            f"{INCIDENTS}/{theirs['incident_id']}/resolve", headers=intake.auth("tenant-a"), json={"by": "A's operator"}
        )
        assert resolved.status_code == 200, resolved.text
    before = (await client.get(f"{INCIDENTS}/{theirs['incident_id']}", headers=intake.auth("tenant-a"))).json()

    answer = await client.post(
        f"{INCIDENTS}/{theirs['incident_id']}/{move}",
        headers=intake.auth("tenant-b"),
        json={"by": "Mallory at tenant-b"},
    )

    assert_not_found(answer)
    after = (await client.get(f"{INCIDENTS}/{theirs['incident_id']}", headers=intake.auth("tenant-a"))).json()
    assert after["status"] == before["status"] and after["timeline"] == before["timeline"]
    assert "Mallory" not in json.dumps(await incident_events(intake, theirs["incident_id"]))


async def test_the_same_dedup_key_at_another_tenant_opens_its_own_incident(
    client: httpx.AsyncClient, intake: IntakeUnderTest
) -> None:
    dedup_key = unique("host-01/disk")  # e.g. both customers monitor a host they both call host-01
    theirs = await open_for(client, intake, "tenant-a", dedup_key=dedup_key)

    ours = await open_for(client, intake, "tenant-b", dedup_key=dedup_key)
    ours_again = await open_for(client, intake, "tenant-b", dedup_key=dedup_key)

    assert ours["incident_id"] != theirs["incident_id"] and ours["created"] is True
    assert ours_again["incident_id"] == ours["incident_id"] and ours_again["created"] is False
    a_view = (await client.get(f"{INCIDENTS}/{theirs['incident_id']}", headers=intake.auth("tenant-a"))).json()
    assert a_view["occurrence_count"] == 1 and [e["kind"] for e in a_view["timeline"]] == ["reported"]
    assert [e["type"] for e in await incident_events(intake, theirs["incident_id"])] == ["incident.reported"]
    b_view = (await client.get(f"{INCIDENTS}/{ours['incident_id']}", headers=intake.auth("tenant-b"))).json()
    assert b_view["tenant_id"] == "tenant-b" and b_view["occurrence_count"] == 2

    # Resolving B's incident frees B's key only: A's report with it still joins A's open incident.
    resolved = await client.post(
        f"{INCIDENTS}/{ours['incident_id']}/resolve", headers=intake.auth("tenant-b"), json={"by": "B's operator"}
    )
    assert resolved.status_code == 200, resolved.text
    theirs_again = await open_for(client, intake, "tenant-a", dedup_key=dedup_key)
    assert theirs_again["incident_id"] == theirs["incident_id"] and theirs_again["created"] is False


async def test_an_idempotency_key_reused_by_another_tenant_is_not_a_conflict(
    client: httpx.AsyncClient, intake: IntakeUnderTest
) -> None:
    key = unique("monitoring-retry")
    a = await client.post(
        INCIDENTS, headers=intake.auth("tenant-a") | {"Idempotency-Key": key}, json={"title": unique("A's problem")}
    )
    b = await client.post(
        INCIDENTS, headers=intake.auth("tenant-b") | {"Idempotency-Key": key}, json={"title": unique("B's problem")}
    )
    assert a.status_code == b.status_code == 202, (a.text, b.text)
    assert a.json()["incident_id"] != b.json()["incident_id"]
