"""The regular-diagnostics loop through intake: a broken customer system opens an incident at
intake (source diagnostics) with nobody reporting it, and its repair resolves that incident."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from intake.conftest import IntakeUnderTest, _tenant_seed, start_intake, stop_intake

from .conftest import TriageUnderTest, start_triage, stop_triage, triage_events
from customer_system_process import CustomerSystemUnderTest, customer_system
from kafka_helpers import Infrastructure, unique_name, wait_until


@pytest.fixture(scope="module")
def system(tmp_path_factory: pytest.TempPathFactory) -> Iterator[CustomerSystemUnderTest]:
    with customer_system(tmp_path_factory.mktemp("customer-loop"), timeout_s=120) as running:
        yield running


@pytest.fixture(scope="module")
def stack(
    infrastructure: Infrastructure, tmp_path_factory: pytest.TempPathFactory, system: CustomerSystemUnderTest
) -> Iterator[tuple[IntakeUnderTest, TriageUnderTest, str]]:
    tenant_id = unique_name("loop")
    entry, seeded = _tenant_seed(tenant_id, "+15550009001")
    profile: dict[str, Any] = entry["profile"]  # type: ignore[assignment]
    profile["systems"] = [
        {
            "name": "shop-web",
            "criticality": "high",
            "diagnostic_target": {"kind": "http", "address": system.health_url, "interval_seconds": 1},
        }
    ]
    profile["probe_allowlist"] = ["127.0.0.1/32"]
    workdir: Path = tmp_path_factory.mktemp("loop")
    intake = start_intake(infrastructure, workdir / "intake", seed=[entry])
    intake.tenants[tenant_id] = seeded
    try:
        triage = start_triage(infrastructure, workdir / "triage")
        try:
            yield intake, triage, tenant_id
        finally:
            stop_triage(triage)
    finally:
        stop_intake(intake)


async def test_a_broken_system_becomes_an_incident_at_intake_and_its_repair_resolves_it(
    stack: tuple[IntakeUnderTest, TriageUnderTest, str], system: CustomerSystemUnderTest
) -> None:
    intake, triage, tenant_id = stack
    system.reset()
    system.break_it("soft")

    async def detected() -> list[dict[str, Any]]:
        return [e for e in await triage_events(triage.infrastructure, tenant_id) if e["type"] == "problem.detected"]

    try:
        (problem,) = await wait_until(detected, timeout=90, interval=1, message="problem detected")
        incident_id = problem["data"]["incident_id"]

        async with httpx.AsyncClient(base_url=intake.base_url, timeout=30) as client:

            async def incident() -> dict[str, Any] | None:
                answer = await client.get(f"/v1/incidents/{incident_id}", headers=intake.auth(tenant_id))
                return answer.json() if answer.status_code == 200 else None

            opened = await wait_until(incident, timeout=60, interval=1, message="incident opened at intake")
            assert opened["channel"] == "diagnostic"
            assert opened["source"] == "diagnostics"
            assert opened["system"] == "shop-web"

            system.reset()

            async def resolved() -> dict[str, Any] | None:
                current = await incident()
                return current if current and current["status"] == "resolved" else None

            closed = await wait_until(resolved, timeout=90, interval=1, message="incident resolved by diagnostics")
    finally:
        system.reset()
    assert closed["incident_id"] == incident_id
