"""The whole system as `make run` starts it (``demo_stack`` in conftest.py): four service processes
on the real Kafka and store, driven only through their public edges (HTTP, Kafka topics)."""

from __future__ import annotations

import time
from typing import Any

import httpx
import pytest
from pymongo import AsyncMongoClient

from aftercare.events import parse_envelope, topics

from .conftest import SERVICES, DemoStack
from kafka_helpers import Infrastructure, read_all, wait_until

# The first e2e test also waits for the session's broker and store and for the stack (see conftest).
pytestmark = [pytest.mark.e2e, pytest.mark.timeout(600)]


def _ready(stack: DemoStack, service: str) -> bool:
    try:
        return httpx.get(stack.url(service, "/readyz"), timeout=3).status_code == 200
    except httpx.HTTPError:
        return False


def test_all_four_services_become_ready_and_expose_metrics(demo_stack: DemoStack) -> None:
    stack = demo_stack
    deadline = time.monotonic() + 120
    waiting = set(SERVICES)
    while waiting and time.monotonic() < deadline:
        waiting = {service for service in waiting if not _ready(stack, service)}
        time.sleep(0.5)
    assert not waiting, f"not ready after 120 s: {sorted(waiting)}; logs in {stack.log_dir}"
    for service in SERVICES:
        assert httpx.get(stack.url(service, "/healthz")).json()["service"] == service
        metrics = httpx.get(stack.url(service, "/metrics"))
        assert metrics.status_code == 200
        assert "aftercare_service_ready" in metrics.text


async def test_a_reported_incident_is_durable_on_kafka_and_the_tenant_reaches_every_service(
    demo_stack: DemoStack, infrastructure: Infrastructure
) -> None:
    stack = demo_stack
    await wait_until(
        lambda: all(_ready(stack, service) for service in SERVICES), timeout=120, message="all services ready"
    )
    async with httpx.AsyncClient(timeout=10) as client:
        accepted = await client.post(
            stack.url("intake", "/v1/incidents"),
            headers={"Authorization": f"Bearer {stack.api_key}"},
            json={"title": "The web shop shows a blank page", "system": "shop-web", "severity": "critical"},
        )
        assert accepted.status_code == 202, accepted.text
        incident_id = accepted.json()["incident_id"]
        status = await client.get(accepted.headers["Location"], headers={"Authorization": f"Bearer {stack.api_key}"})
        assert status.json()["number"] == accepted.json()["number"]

    records = await read_all(infrastructure.bootstrap_servers, topics.INCIDENTS, timeout=30)
    reported = [parse_envelope(r.value) for r in records if r.key == incident_id.encode()]
    assert [envelope.type for envelope in reported][:1] == ["incident.reported"]
    assert reported[0].tenant_id == stack.tenant["tenant_id"]

    # Each downstream service keeps its own copy of the tenant, built from TenantUpserted only.
    client_db: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(infrastructure.mongo_url)
    try:
        for service in ("triage", "remediation", "notifier"):
            tenants = client_db[stack.databases[service]]["tenants"]
            copy = await wait_until(
                lambda tenants=tenants: tenants.find_one({"_id": stack.tenant["tenant_id"]}),
                timeout=60,
                message=f"{service} has the tenant",
            )
            assert copy["name"] == stack.tenant["profile"]["name"]
            assert "shop-web" in [system["name"] for system in copy["systems"]]
    finally:
        await client_db.close()
