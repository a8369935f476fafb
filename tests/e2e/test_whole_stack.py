"""The whole system as `make run` starts it: four service processes on the real Kafka and store,
driven only through their public edges (HTTP, Kafka topics)."""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from pymongo import AsyncMongoClient

from aftercare.events import parse_envelope, topics

from kafka_helpers import Infrastructure, read_all, unique_name, wait_until
from localinfra import free_port

pytestmark = pytest.mark.e2e

SERVICES = ("intake", "triage", "remediation", "notifier")


@dataclass
class RunningStack:
    ports: dict[str, int]
    databases: dict[str, str]
    api_key: str
    log_dir: Path

    def url(self, service: str, path: str) -> str:
        return f"http://127.0.0.1:{self.ports[service]}{path}"


@pytest.fixture(scope="module")
def stack(infrastructure: Infrastructure, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningStack]:
    log_dir = tmp_path_factory.mktemp("stack")
    api_key = "ak_" + secrets.token_urlsafe(24)
    seed = log_dir / "seed.json"
    seed.write_text(
        json.dumps(
            [
                {
                    "tenant_id": "e2e-tenant",
                    "profile": {
                        "name": "E2E Ltd",
                        "tier": {"name": "standard", "sla": []},
                        "contacts": [{"name": "Ops", "email": "ops@e2e.example.net"}],
                        "systems": [{"name": "erp", "criticality": "high"}],
                    },
                    "api_keys": [{"name": "e2e", "key": api_key}],
                }
            ]
        )
    )
    run = unique_name("e2e").replace("-", "_")
    ports = {service: free_port() for service in SERVICES}
    databases = {service: f"{run}_{service}" for service in SERVICES}
    env = dict(os.environ) | {
        "AFTERCARE_KAFKA_BOOTSTRAP_SERVERS": infrastructure.bootstrap_servers,
        "AFTERCARE_MONGO_URL": infrastructure.mongo_url,
        "AFTERCARE_INTAKE_SEED_FILE": str(seed),
        "AFTERCARE_INTAKE_ADMIN_TOKEN": secrets.token_urlsafe(12),
        "AFTERCARE_INTAKE_SMTP_PORT": str(free_port()),
    }
    for service in SERVICES:
        prefix = f"AFTERCARE_{service.upper()}_"
        env[prefix + "HTTP_PORT"] = str(ports[service])
        env[prefix + "DATABASE"] = databases[service]
        env[prefix + "CONSUMER_GROUP_PREFIX"] = f"{run}-"
    processes = {}
    for service in SERVICES:
        with (log_dir / f"{service}.log").open("wb") as out:
            processes[service] = subprocess.Popen(
                [sys.executable, "-m", f"aftercare.{service}"], env=env, stdout=out, stderr=subprocess.STDOUT
            )
    stack = RunningStack(ports=ports, databases=databases, api_key=api_key, log_dir=log_dir)
    try:
        yield stack
    finally:
        for process in processes.values():
            process.send_signal(signal.SIGTERM)
        for service, process in processes.items():
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                pytest.fail(f"{service} did not stop within 30 s of SIGTERM; see {log_dir}")


def _ready(stack: RunningStack, service: str) -> bool:
    try:
        return httpx.get(stack.url(service, "/readyz"), timeout=3).status_code == 200
    except httpx.HTTPError:
        return False


def test_all_four_services_become_ready_and_expose_metrics(stack: RunningStack) -> None:
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
    stack: RunningStack, infrastructure: Infrastructure
) -> None:
    await wait_until(
        lambda: all(_ready(stack, service) for service in SERVICES), timeout=120, message="all services ready"
    )
    async with httpx.AsyncClient(timeout=10) as client:
        accepted = await client.post(
            stack.url("intake", "/v1/incidents"),
            headers={"Authorization": f"Bearer {stack.api_key}"},
            json={"title": "ERP logins fail", "system": "erp", "severity": "critical"},
        )
        assert accepted.status_code == 202, accepted.text
        incident_id = accepted.json()["incident_id"]
        status = await client.get(accepted.headers["Location"], headers={"Authorization": f"Bearer {stack.api_key}"})
        assert status.json()["number"] == accepted.json()["number"]

    records = await read_all(infrastructure.bootstrap_servers, topics.INCIDENTS, timeout=30)
    reported = [parse_envelope(r.value) for r in records if r.key == incident_id.encode()]
    assert [envelope.type for envelope in reported] == ["incident.reported"]
    assert reported[0].tenant_id == "e2e-tenant"

    # Each downstream service keeps its own copy of the tenant, built from TenantUpserted only.
    client_db: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(infrastructure.mongo_url)
    try:
        for service in ("triage", "remediation", "notifier"):
            tenants = client_db[stack.databases[service]]["tenants"]
            copy = await wait_until(
                lambda tenants=tenants: tenants.find_one({"_id": "e2e-tenant"}),
                timeout=60,
                message=f"{service} has the tenant",
            )
            assert copy["name"] == "E2E Ltd"
            assert copy["systems"][0]["name"] == "erp"
    finally:
        await client_db.close()
