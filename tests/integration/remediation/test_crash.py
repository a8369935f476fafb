"""kill -9 of remediation in the middle of a step that is not safe to repeat: after the restart
the run does not call it again; it stops and escalates, saying so."""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx
import pytest

from aftercare.events.producer import EventProducer

from .conftest import (
    RemediationUnderTest,
    as_role,
    new_scenario,
    of_type,
    publish_operators,
    restart_runbook,
    start_remediation,
    stop_remediation,
    wait_for_operators,
)
from customer_system_process import CustomerSystemUnderTest
from kafka_helpers import Infrastructure, unique_name, wait_until

pytestmark = pytest.mark.integration


async def test_a_restart_interrupted_by_kill_9_is_never_called_twice(
    infrastructure: Infrastructure, tmp_path: Path, customer: CustomerSystemUnderTest, producer: EventProducer
) -> None:
    await publish_operators(infrastructure.bootstrap_servers)
    first: RemediationUnderTest = start_remediation(infrastructure, tmp_path / "first")
    await asyncio.to_thread(wait_for_operators, first)
    second: RemediationUnderTest | None = None
    try:
        async with httpx.AsyncClient(base_url=first.base_url, timeout=30) as api:
            scenario = await new_scenario(first, customer, producer, api)
            runbook = await scenario.put_runbook(restart_runbook(unique_name("restart"), rollback=[]))
            # The restart takes 4 s to answer: long enough to kill remediation in the middle of it.
            customer.break_it("soft", fix_seconds=4)
            incident_id = await scenario.incident(runbook)
            await wait_until(
                lambda: customer.calls()["fixes_in_flight"] == 1, timeout=90, interval=0.05, message="restart in flight"
            )
            stop_remediation(first, kill=True)
        assert customer.count("restart-service") == 1

        second = start_remediation(infrastructure, tmp_path / "second", env=first.env)
        await asyncio.to_thread(wait_for_operators, second)
        async with httpx.AsyncClient(base_url=second.base_url, timeout=30) as api:
            scenario.api = api
            scenario.remediation = second
            run = await scenario.run_ends(incident_id, timeout=120)
            assert run["status"] == "escalated"
            assert "not safe to repeat" in run["outcome"] and "restart the service" in run["outcome"]
            events = await scenario.events_until(incident_id, "incident.escalated")
            [escalated] = of_type(events, "incident.escalated")
            tried = {t["step"]: t["outcome"] for t in escalated["data"]["tried"]}
            assert tried == {"note": "succeeded", "restart the service": "not_run"}
            audit = (await api.get(f"/v1/incidents/{incident_id}/audit", headers=as_role("viewer"))).json()
            assert audit["run"]["status"] == "escalated"
        # Long after the restarted service took over, the restart was still called only once.
        await asyncio.sleep(1)
        assert customer.count("restart-service") == 1
    finally:
        stop_remediation(first, kill=True)
        if second is not None:
            stop_remediation(second)
