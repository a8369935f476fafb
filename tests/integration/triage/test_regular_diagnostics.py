"""Regular diagnostics against the real demo customer system: a broken system opens a problem
(ProblemDetected, for intake to open an incident), its repair clears it, the history is readable
for the sparkline; and an incident on a system with a target is diagnosed with a verdict."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from aftercare.events.incidents import Severity
from aftercare.events.producer import EventProducer
from aftercare.events.tenants import Criticality, DiagnosticTarget, SupportedSystem

from .conftest import VIEWER, TriageUnderTest, publish, report, tenant_event, triage_events
from customer_system_process import CustomerSystemUnderTest, customer_system
from kafka_helpers import unique_name, wait_until


@pytest.fixture(scope="module")
def system(tmp_path_factory: pytest.TempPathFactory) -> Iterator[CustomerSystemUnderTest]:
    with customer_system(tmp_path_factory.mktemp("customer-regular"), timeout_s=120) as running:
        yield running


def tenant_with_target(tenant: str, system: CustomerSystemUnderTest, **target: Any) -> Any:
    return tenant_event(
        tenant,
        systems=[
            SupportedSystem(
                name="shop-web",
                aliases=["shop"],
                criticality=Criticality.HIGH,
                diagnostic_target=DiagnosticTarget(
                    kind="http", address=system.health_url, interval_seconds=1, timeout_seconds=3, **target
                ),
            )
        ],
        probe_allowlist=["127.0.0.1/32"],
    )


async def of_type(service: TriageUnderTest, tenant: str, event_type: str) -> list[dict[str, Any]]:
    return [event for event in await triage_events(service.infrastructure, tenant) if event["type"] == event_type]


async def test_a_broken_system_opens_a_problem_and_its_repair_clears_it(
    triage_service: TriageUnderTest, producer: EventProducer, system: CustomerSystemUnderTest, http: httpx.AsyncClient
) -> None:
    system.reset()
    tenant = unique_name("acme")
    await publish(producer, tenant, tenant_with_target(tenant, system))
    history_url = f"{triage_service.base_url}/v1/targets/{tenant}/shop-web/history"

    async def samples() -> list[dict[str, Any]]:
        answer = await http.get(history_url, headers=VIEWER)
        return answer.json()["samples"] if answer.status_code == 200 else []

    healthy = await wait_until(samples, timeout=30, interval=0.5, message="first probes recorded")
    assert healthy[0]["status"] == "up"

    system.break_it("soft")

    async def detected() -> list[dict[str, Any]]:
        return await of_type(triage_service, tenant, "problem.detected")

    (problem,) = await wait_until(detected, timeout=45, interval=0.5, message="problem detected")
    assert problem["data"]["kind"] == "down"
    assert problem["data"]["system"] == "shop-web"
    assert "HTTP 503" in problem["data"]["description"]
    assert problem["incident_id"] == problem["data"]["incident_id"]

    system.reset()

    async def cleared() -> list[dict[str, Any]]:
        return await of_type(triage_service, tenant, "problem.cleared")

    (recovery,) = await wait_until(cleared, timeout=45, interval=0.5, message="problem cleared")
    assert recovery["data"]["incident_id"] == problem["data"]["incident_id"]
    statuses = [sample["status"] for sample in await samples()]
    assert "down" in statuses and statuses[-1] == "up"
    # Still one problem episode: the failures after the first detection did not open another.
    assert len(await detected()) == 1

    # Every probe also goes out (with the outbox sweep) as a sample for the dashboard's sparkline.
    async def probed_down_and_up() -> list[dict[str, Any]]:
        found = await of_type(triage_service, tenant, "target.probed")
        return found if {"down", "up"} <= {event["data"]["status"] for event in found} else []

    published = await wait_until(probed_down_and_up, timeout=45, interval=0.5, message="target.probed samples")
    assert {event["data"]["system"] for event in published} == {"shop-web"}
    assert all(event["data"]["target"] == system.health_url for event in published)


async def test_an_incident_on_a_system_with_a_target_is_diagnosed_with_a_verdict(
    triage_service: TriageUnderTest, producer: EventProducer, system: CustomerSystemUnderTest
) -> None:
    tenant = unique_name("acme")
    # A long interval: only the incident's own diagnosis probes here.
    await publish(producer, tenant, tenant_with_target(tenant, system).model_copy())
    system.break_it("hard")
    try:
        incident = report("shop is down, customers see errors", severity=Severity.CRITICAL)
        await publish(producer, tenant, incident)

        async def diagnosed() -> list[dict[str, Any]]:
            return [
                e
                for e in await of_type(triage_service, tenant, "diagnosis.completed")
                if e["incident_id"] == incident.incident_id
            ]

        (diagnosis,) = await wait_until(diagnosed, timeout=45, interval=0.5, message="diagnosis completed")
    finally:
        system.reset()
    assert diagnosis["data"]["verdict"] == "confirmed_down"
    assert diagnosis["data"]["system"] == "shop-web"
    assert "HTTP 503" in diagnosis["data"]["conclusion"]
