"""The rules API: versions with who changed them, roles, refusals as problems, the dry run."""

from __future__ import annotations

from typing import Any

import httpx

from aftercare.events.producer import EventProducer

from .conftest import ADMIN, VIEWER, TriageUnderTest, publish, tenant_event
from kafka_helpers import unique_name, wait_until


def assert_problem(answer: httpx.Response, status: int, *words: str) -> dict[str, Any]:
    assert answer.status_code == status, answer.text
    assert answer.headers["content-type"].startswith("application/problem+json")
    body: dict[str, Any] = answer.json()
    text = answer.text.lower()
    for word in words:
        assert word.lower() in text, f"{word!r} not in {answer.text}"
    return body


RULE = {
    "name": "vpn-is-network",
    "order": 1,
    "when": {"text": {"any": ["vpn"]}},
    "then": {"category": "network", "runbook": "restart-vpn"},
}


async def test_a_rule_is_created_changed_and_deleted_with_versions_and_who(http: httpx.AsyncClient) -> None:
    name = unique_name("rule")
    created = await http.post("/v1/rules", json=RULE | {"name": name}, headers=ADMIN)
    assert created.status_code == 201, created.text
    assert created.json()["version"] == 1
    admin = created.json()["changed_by"]
    assert admin.startswith("admin-") and admin.endswith("@support.example")

    changed = await http.put(
        f"/v1/rules/{name}",
        json=RULE | {"name": name, "then": {"category": "network"}},
        headers=ADMIN | {"If-Match": "1"},
    )
    assert changed.status_code == 200, changed.text
    stale = await http.put(f"/v1/rules/{name}", json=RULE | {"name": name}, headers=ADMIN | {"If-Match": "1"})
    assert_problem(stale, 409, "version 2")

    deleted = await http.delete(f"/v1/rules/{name}", headers=ADMIN)
    assert deleted.status_code == 200
    versions = (await http.get(f"/v1/rules/{name}/versions", headers=VIEWER)).json()["versions"]
    assert [(v["version"], v["action"], v["changed_by"]) for v in versions] == [
        (1, "created", admin),
        (2, "updated", admin),
        (3, "deleted", admin),
    ]
    assert_problem(await http.get(f"/v1/rules/{name}", headers=VIEWER), 404, name)


async def test_reading_needs_a_viewer_and_changing_an_admin(http: httpx.AsyncClient) -> None:
    assert_problem(await http.get("/v1/rules"), 401, "Bearer")
    assert (await http.get("/v1/rules", headers=VIEWER)).status_code == 200
    assert_problem(await http.post("/v1/rules", json=RULE, headers=VIEWER), 403, "admin")


async def test_bad_rules_are_refused_saying_what_is_wrong(http: httpx.AsyncClient) -> None:
    unknown_field = await http.post("/v1/rules", json=RULE | {"when": {"colour": "red"}}, headers=ADMIN)
    assert_problem(unknown_field, 422, "when.colour")
    runaway = await http.post("/v1/rules", json=RULE | {"when": {"text": {"regex": "(a+)+$"}}}, headers=ADMIN)
    assert_problem(runaway, 422, "run away")
    broken = await http.post("/v1/rules", json=RULE | {"when": {"text": {"regex": "ORA-("}}}, headers=ADMIN)
    assert_problem(broken, 422, "does not compile")
    not_json = await http.post("/v1/rules", content=b"name: x", headers=ADMIN | {"Content-Type": "application/json"})
    assert_problem(not_json, 400, "JSON")
    existing = await http.post("/v1/rules", json=RULE | {"name": "slow-is-performance"}, headers=ADMIN)
    assert_problem(existing, 409, "exists already")


async def test_the_dry_run_shows_what_a_new_rule_would_change_for_a_sample_and_for_real_incidents(
    http: httpx.AsyncClient, producer: EventProducer, triage_service: TriageUnderTest
) -> None:
    tenant = unique_name("acme")
    await publish(producer, tenant, tenant_event(tenant))
    sample = {"tenant_id": tenant, "title": "VPN tunnel to billing keeps dropping", "channel": "email"}

    async def tenant_known() -> bool:
        answer = await http.post("/v1/rules:dry-run", json={"incident": sample}, headers=VIEWER)
        return answer.status_code == 200

    await wait_until(tenant_known, timeout=30, interval=0.5, message="tenant reached triage")
    answer = await http.post(
        "/v1/rules:dry-run", json={"incident": sample, "rules": [RULE | {"name": "vpn-dry-run"}]}, headers=VIEWER
    )
    assert answer.status_code == 200, answer.text
    (outcome,) = answer.json()["incidents"]
    assert outcome["proposed_rules"]["category"] == "network"
    assert outcome["proposed_rules"]["runbook"] == "restart-vpn"
    assert "runbook: None -> restart-vpn" in outcome["differences"]
    # Nothing was stored.
    assert_problem(await http.get("/v1/rules/vpn-dry-run", headers=VIEWER), 404)

    recent = await http.post("/v1/rules:dry-run", json={"last": 5, "remove": ["slow-is-performance"]}, headers=VIEWER)
    assert recent.status_code == 200
    assert isinstance(recent.json()["incidents"], list)

    unknown = await http.post(
        "/v1/rules:dry-run", json={"incident": sample | {"tenant_id": "nobody-here"}}, headers=VIEWER
    )
    assert_problem(unknown, 422, "nobody-here")
