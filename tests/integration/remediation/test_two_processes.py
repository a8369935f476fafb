"""Two remediation processes of one deployment (same store, same consumer group) share a burst of
incidents: every incident gets exactly one run, the blast-radius limits (runs at once and runs per
hour on one system) hold across both, and when the process calling a restart that is not safe to
repeat is killed with -9 in the middle of it, the other takes the run over and never calls the
restart again: it stops and escalates, saying so. Counted at the customer system."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
from collections import defaultdict
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from aftercare.events import topics
from aftercare.events.producer import EventProducer

from .conftest import (
    RemediationUnderTest,
    another_instance,
    as_role,
    new_scenario,
    publish_operators,
    remediation_env,
    restart_runbook,
    start_remediation,
    stop_remediation,
    wait_for_operators,
)
from customer_system_process import CustomerSystemUnderTest
from kafka_helpers import Infrastructure, read_all, unique_name, wait_until

pytestmark = pytest.mark.integration

INCIDENTS = 9
AT_ONCE = 2
PER_HOUR = 6
RESTART = "restart the service"


def peak_at_once(runs: list[dict[str, Any]]) -> int:
    """The most runs holding a slot at one moment, from their admitted and finished times."""
    edges = []
    for run in runs:
        if run.get("admitted_at"):
            edges.append((datetime.fromisoformat(str(run["admitted_at"])), 1))
            edges.append((datetime.fromisoformat(str(run["finished_at"])), -1))
    working = peak = 0
    for _, change in sorted(edges):
        working += change
        peak = max(peak, working)
    return peak


@pytest.mark.timeout(600)
async def test_two_processes_share_incidents_and_limits_and_a_kill_9_never_repeats_a_restart(
    infrastructure: Infrastructure, tmp_path: Path, customer: CustomerSystemUnderTest, producer: EventProducer
) -> None:
    await publish_operators(infrastructure.bootstrap_servers)
    env = remediation_env(infrastructure)
    started = await asyncio.gather(
        asyncio.to_thread(start_remediation, infrastructure, tmp_path / "a", env=env),
        asyncio.to_thread(start_remediation, infrastructure, tmp_path / "b", env=another_instance(env)),
    )
    processes: dict[int, RemediationUnderTest] = {}
    for service in started:
        assert service.process is not None
        processes[service.process.pid] = service
    try:
        await asyncio.gather(*(asyncio.to_thread(wait_for_operators, service) for service in started))
        first = started[0]
        async with httpx.AsyncClient(base_url=first.base_url, timeout=30) as api:
            scenario = await new_scenario(first, customer, producer, api)
            document = restart_runbook(
                unique_name("shared"),
                rollback=[],
                blast_radius={"max_concurrent_per_system": AT_ONCE, "max_runs_per_system_per_hour": PER_HOUR},
            )
            document["steps"][1]["timeout_seconds"] = 5  # the killed call's run is taken over 5 s + margin later
            runbook = await scenario.put_runbook(document)
            # Each restart takes 2 s to answer: long enough to kill its caller in the middle of it.
            customer.break_it("soft", fix_seconds=2)
            incident_ids = [await scenario.incident(runbook) for _ in range(INCIDENTS)]

            # Kill -9 whichever process is calling a restart right now (its pid is in the User-Agent).
            callers = await wait_until(
                lambda: customer.calls()["callers_in_flight"], timeout=120, interval=0.05, message="a restart in flight"
            )
            pid = int(re.findall(r"pid (\d+)", callers[0])[0])
            victim = processes[pid]
            os.kill(pid, signal.SIGKILL)
            assert victim.process is not None
            victim.process.wait(timeout=30)
        survivor = next(service for service in started if service is not victim)

        async with httpx.AsyncClient(base_url=survivor.base_url, timeout=30) as api:
            scenario.api, scenario.remediation = api, survivor

            async def all_ended() -> list[dict[str, Any]] | None:
                answer = await api.get(f"/v1/runbooks/{runbook}/audit", headers=as_role("viewer"))
                runs: list[dict[str, Any]] = answer.json()["runs"] if answer.status_code == 200 else []
                done = [run for run in runs if run["status"] in ("succeeded", "escalated", "rejected")]
                return runs if len(done) == INCIDENTS else None

            runs = await wait_until(all_ended, timeout=240, interval=1.0, message=f"all {INCIDENTS} runs end")

        # Exactly one run per incident, whichever process consumed its events.
        assert sorted(run["incident_id"] for run in runs) == sorted(incident_ids)
        # Runs per hour held across both: PER_HOUR were let at the system, the rest went to people.
        admitted = [run for run in runs if run.get("admitted_at")]
        assert len(admitted) == PER_HOUR, [run["outcome"] for run in runs]
        refused = [run for run in runs if not run.get("admitted_at")]
        assert all(run["status"] == "escalated" and "in the last hour" in run["outcome"] for run in refused)
        # Runs at once held across both, seen from the runs and from the customer's side.
        assert 1 <= peak_at_once(admitted) <= AT_ONCE
        assert customer.calls()["max_fixes_in_flight"] <= AT_ONCE
        # The restart killed in flight: taken over by the survivor, not called again, escalated.
        interrupted = [run for run in admitted if "not safe to repeat" in (run["outcome"] or "")]
        assert interrupted, [run["outcome"] for run in admitted]
        for run in interrupted:
            assert run["status"] == "escalated" and RESTART in run["outcome"]
            [record] = [r for r in run["records"] if r["name"] == RESTART]
            assert record["status"] == "not_run"
        assert all(run["status"] == "succeeded" for run in admitted if run not in interrupted)
        # Every restart was called at most once per run: each admitted run recorded one restart, the
        # finished ones reached the customer, and so did the one seen in flight when its caller was
        # killed (another interrupted one may have died between its record and its call).
        restarts = [[r for r in run["records"] if r["name"] == RESTART] for run in admitted]
        assert all(len(records) == 1 for records in restarts)
        finished = len(admitted) - len(interrupted)
        assert finished + 1 <= customer.count("restart-service") <= len(admitted)

        # On Kafka: one RemediationStarted per admitted incident, every event about its incident and
        # tenant (what intake needs to put it on the incident's timeline).
        records = await read_all(infrastructure.bootstrap_servers, topics.REMEDIATION)
        events: dict[str, dict[str, dict[str, Any]]] = defaultdict(dict)
        for record in records:
            event = json.loads(record.value)
            if event["tenant_id"] == scenario.tenant_id:
                assert (
                    record.key == event["incident_id"].encode() and event["data"]["incident_id"] == event["incident_id"]
                )
                events[event["incident_id"]][event["id"]] = event
        for run in runs:
            mine = list(events[run["incident_id"]].values())
            started_runs = {e["data"]["run_id"] for e in mine if e["type"] == "remediation.started"}
            assert started_runs == ({run["run_id"]} if run.get("admitted_at") else set())
        [escalated] = [e for e in events[interrupted[0]["incident_id"]].values() if e["type"] == "incident.escalated"]
        assert {t["step"]: t["outcome"] for t in escalated["data"]["tried"]} == {
            "note": "succeeded",
            RESTART: "not_run",
        }

        # Long after the survivor took over, no restart was called again.
        calls = customer.count("restart-service")
        await asyncio.sleep(1)
        assert customer.count("restart-service") == calls
    finally:
        for service in started:
            stop_remediation(service, kill=True)
