"""The admin API (admin token) against a real intake process, Kafka broker and store.

An operator of the support company registers a customer (tenant), gives it API keys and takes
them back. A key is shown once and stored only as its SHA-256 digest; the tenant travels to the
other services as TenantUpserted on the compacted tenants topic, keyed by the tenant id.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from pymongo import AsyncMongoClient

from aftercare.events import topics

from .answers import assert_problem
from .conftest import IntakeUnderTest
from kafka_helpers import read_all

pytestmark = pytest.mark.integration

PROFILE: dict[str, Any] = {
    "name": "Harbour Logistics",
    "tier": {
        "name": "gold",
        "sla": [
            {"priority": "P1", "response_minutes": 15, "resolution_minutes": 240},
            {"priority": "P2", "response_minutes": 60, "resolution_minutes": 480},
        ],
    },
    "contacts": [
        {
            "name": "Night shift",
            "email": "night@harbour.example.net",
            "phone": "+15550002001",
            "preferred_channels": ["email", "sms"],
            "language": "nl",
        }
    ],
    "systems": [
        {
            "name": "warehouse-db",
            "criticality": "critical",
            "product": "PostgreSQL",
            "version": "16.2",
            "diagnostic_target": {"kind": "tcp", "address": "db.harbour.example.net:5432", "interval_seconds": 300},
        }
    ],
}


def unique_tenant() -> str:
    return f"harbour-{uuid.uuid4().hex[:10]}"


@pytest.fixture
async def store(intake: IntakeUnderTest) -> AsyncIterator[Any]:
    """Intake's own database, read directly: what is really kept at rest."""
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(intake.infrastructure.mongo_url, tz_aware=True)
    try:
        yield client[intake.database]
    finally:
        await client.close()


async def tenant_events(intake: IntakeUnderTest, tenant_id: str) -> list[dict[str, Any]]:
    records = await read_all(intake.infrastructure.bootstrap_servers, topics.TENANTS)
    return [json.loads(r.value) for r in records if r.key == tenant_id.encode()]


async def test_put_creates_then_replaces_a_tenant_and_announces_each_version(
    client: httpx.AsyncClient, intake: IntakeUnderTest
) -> None:
    tenant_id = unique_tenant()

    created = await client.put(f"/admin/tenants/{tenant_id}", headers=intake.admin(), json=PROFILE)
    assert created.status_code == 201, created.text
    assert created.json()["tenant_id"] == tenant_id and created.json()["name"] == "Harbour Logistics"
    assert created.json()["portal_url"].startswith(intake.base_url + "/portal/")
    replaced = await client.put(
        f"/admin/tenants/{tenant_id}", headers=intake.admin(), json=PROFILE | {"name": "Harbour Logistics BV"}
    )
    assert replaced.status_code == 200, replaced.text
    # The portal link stays the same across profile changes unless the admin sets a new one.
    assert replaced.json()["portal_url"] == created.json()["portal_url"]

    read = await client.get(f"/admin/tenants/{tenant_id}", headers=intake.admin())
    assert read.status_code == 200, read.text
    tenant = read.json()
    assert tenant["name"] == "Harbour Logistics BV"
    assert tenant["tier"]["sla"][0] == {"priority": "P1", "response_minutes": 15, "resolution_minutes": 240}
    assert tenant["contacts"][0]["language"] == "nl"
    assert tenant["systems"][0]["diagnostic_target"]["address"] == "db.harbour.example.net:5432"
    listed = await client.get("/admin/tenants", headers=intake.admin())
    assert listed.status_code == 200
    assert tenant_id in {t["tenant_id"] for t in listed.json()}
    assert {"tenant-a", "tenant-b"} <= {t["tenant_id"] for t in listed.json()}

    # Announced before the answer (outbox flushed), so no waiting is needed.
    events = await tenant_events(intake, tenant_id)
    assert [event["data"]["name"] for event in events] == ["Harbour Logistics", "Harbour Logistics BV"]
    assert all(event["type"] == "tenant.upserted" and event["tenant_id"] == tenant_id for event in events)
    assert events[-1]["data"]["systems"][0]["name"] == "warehouse-db"
    assert events[-1]["data"]["status_page_slug"] == tenant["portal_slug"]


async def test_an_api_key_is_shown_once_stored_as_a_digest_and_stops_working_when_revoked(
    client: httpx.AsyncClient, intake: IntakeUnderTest, store: Any
) -> None:
    tenant_id = unique_tenant()
    assert (await client.put(f"/admin/tenants/{tenant_id}", headers=intake.admin(), json=PROFILE)).status_code == 201

    issued = await client.post(f"/admin/tenants/{tenant_id}/api-keys", headers=intake.admin(), json={"name": "zabbix"})
    assert issued.status_code == 201, issued.text
    key_id, key = issued.json()["id"], issued.json()["secret"]
    assert issued.json()["name"] == "zabbix" and len(key) >= 32

    shown = await client.get(f"/admin/tenants/{tenant_id}", headers=intake.admin())
    listed = await client.get("/admin/tenants", headers=intake.admin())
    assert key not in shown.text and key not in listed.text
    assert {"kind": "api-key", "id": key_id, "name": "zabbix"} in shown.json()["credentials"]

    # At rest: the digest only; the key itself is in no document of the collection.
    credentials = [document async for document in store["credentials"].find({})]
    assert not [document for document in credentials if key in repr(document)]
    (kept,) = [
        document for document in credentials if document.get("tenant_id") == tenant_id and document["kind"] == "api-key"
    ]
    assert kept["_id"] == f"api-key|{hashlib.sha256(key.encode()).hexdigest()}"

    auth = {"Authorization": f"Bearer {key}"}
    accepted = await client.post("/v1/incidents", headers=auth, json={"title": "Scanner offline in hall 3"})
    assert accepted.status_code == 202, accepted.text
    assert (await client.get(accepted.json()["status_url"], headers=auth)).json()["tenant_id"] == tenant_id

    revoked = await client.delete(f"/admin/tenants/{tenant_id}/api-keys/{key_id}", headers=intake.admin())
    assert revoked.status_code == 204, revoked.text
    assert_problem(await client.post("/v1/incidents", headers=auth, json={"title": "Still offline"}), 401)
    assert_problem(await client.get(accepted.json()["status_url"], headers=auth), 401)
    again = await client.delete(f"/admin/tenants/{tenant_id}/api-keys/{key_id}", headers=intake.admin())
    assert_problem(again, 404)
    shown_after = (await client.get(f"/admin/tenants/{tenant_id}", headers=intake.admin())).json()
    assert all(credential["kind"] != "api-key" for credential in shown_after["credentials"])


async def test_a_key_for_an_unknown_tenant_is_a_404_problem(client: httpx.AsyncClient, intake: IntakeUnderTest) -> None:
    answer = await client.post(
        f"/admin/tenants/{unique_tenant()}/api-keys", headers=intake.admin(), json={"name": "zabbix"}
    )
    assert "PUT /admin/tenants/" in assert_problem(answer, 404)["detail"]
    assert_problem(await client.get(f"/admin/tenants/{unique_tenant()}", headers=intake.admin()), 404)


async def test_a_portal_slug_of_another_tenant_is_a_409_problem_and_changes_nothing(
    client: httpx.AsyncClient, intake: IntakeUnderTest
) -> None:
    tenant_id = unique_tenant()
    taken = intake.tenants["tenant-a"].portal_slug

    answer = await client.put(
        f"/admin/tenants/{tenant_id}", headers=intake.admin(), json=PROFILE | {"portal_slug": taken}
    )

    assert_problem(answer, 409)
    assert_problem(await client.get(f"/admin/tenants/{tenant_id}", headers=intake.admin()), 404)
    assert await tenant_events(intake, tenant_id) == []


async def test_admin_calls_without_the_admin_token_are_refused(
    client: httpx.AsyncClient, intake: IntakeUnderTest
) -> None:
    tenant_id = unique_tenant()
    missing = await client.put(f"/admin/tenants/{tenant_id}", json=PROFILE)
    assert_problem(missing, 401)
    assert missing.headers["www-authenticate"] == "Bearer"
    assert_problem(
        await client.put(
            f"/admin/tenants/{tenant_id}", json=PROFILE, headers={"Authorization": "Bearer not-the-admin-token"}
        ),
        403,
    )
    # A tenant's API key is not an admin token either.
    assert_problem(await client.get("/admin/tenants", headers=intake.auth("tenant-a")), 403)
    assert_problem(
        await client.post(
            "/admin/tenants/tenant-a/api-keys",
            json={"name": "sneaky"},
            headers={"Authorization": "Bearer not-the-admin-token"},
        ),
        403,
    )
    assert_problem(await client.get(f"/admin/tenants/{tenant_id}", headers=intake.admin()), 404)


@pytest.mark.parametrize("bad_id", ["Harbour", "harbour_logistics", "-harbour", "h", "a" * 64])
async def test_a_tenant_id_outside_the_pattern_is_a_422_problem(
    client: httpx.AsyncClient, intake: IntakeUnderTest, bad_id: str
) -> None:
    problem = assert_problem(await client.put(f"/admin/tenants/{bad_id}", headers=intake.admin(), json=PROFILE), 422)
    assert problem["errors"][0]["field"] == "path.tenant_id"


async def test_a_profile_with_wrong_fields_is_a_422_problem_naming_them(
    client: httpx.AsyncClient, intake: IntakeUnderTest
) -> None:
    tenant_id = unique_tenant()
    answer = await client.put(
        f"/admin/tenants/{tenant_id}",
        headers=intake.admin(),
        json={
            "tier": {"name": "gold", "sla": [{"priority": "P9", "response_minutes": 15, "resolution_minutes": 60}]},
            "colour": "blue",
        },
    )
    fields = {error["field"] for error in assert_problem(answer, 422)["errors"]}
    assert {"name", "tier.sla.0.priority", "colour"} <= fields


async def test_contract_times_beyond_a_year_are_a_422_problem(
    client: httpx.AsyncClient, intake: IntakeUnderTest
) -> None:
    # Found by the OpenAPI fuzz test: numbers past 64 bits made the store write fail (503).
    tenant_id = unique_tenant()
    answer = await client.put(
        f"/admin/tenants/{tenant_id}",
        headers=intake.admin(),
        json=PROFILE
        | {"tier": {"name": "gold", "sla": [{"priority": "P1", "response_minutes": 10**30, "resolution_minutes": 60}]}},
    )
    assert "response_minutes must be at most" in assert_problem(answer, 422)["errors"][0]["message"]
    assert await tenant_events(intake, tenant_id) == []
