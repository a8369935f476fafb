"""The concurrency limit holds under a burst of incidents for one system.

A burst of 16 with a limit of 2 proves it as well as 50 did (every run but the first two has to
queue, and each slot is handed on 14 times), in a fraction of the time on a loaded machine (50
took 382 s at a load of 22). Two processes sharing the limits: test_two_processes.py."""

from __future__ import annotations

from datetime import datetime

import pytest

from .conftest import Scenario, as_role, restart_runbook
from kafka_helpers import unique_name, wait_until

pytestmark = pytest.mark.integration

BURST = 16
LIMIT = 2


@pytest.mark.timeout(600)
async def test_a_burst_of_incidents_never_has_more_than_the_limit_working_on_the_system(scenario: Scenario) -> None:
    document = restart_runbook(
        unique_name("burst"),
        blast_radius={"max_concurrent_per_system": LIMIT, "max_runs_per_system_per_hour": 1000},
    )
    document["steps"] = document["steps"][1:]  # the restart alone: the note adds nothing to the point
    runbook = await scenario.put_runbook(document)
    scenario.customer.break_it("soft", fix_seconds=0.2)

    incident_ids = [await scenario.incident(runbook) for _ in range(BURST)]

    async def all_ended() -> list[dict[str, object]] | None:
        answer = await scenario.api.get(f"/v1/runbooks/{runbook}/audit", headers=as_role("viewer"))
        runs = answer.json()["runs"]
        done = [run for run in runs if run["status"] in ("succeeded", "escalated", "rejected")]
        return runs if len(done) == BURST else None

    # Generous: on a loaded machine the store takes ~0.1 s per write.
    runs = await wait_until(all_ended, timeout=400, interval=1.0, message=f"all {BURST} runs end")

    assert sorted(run["incident_id"] for run in runs) == sorted(incident_ids)
    assert all(run["status"] == "succeeded" for run in runs), [r["outcome"] for r in runs if r["status"] != "succeeded"]
    # Seen from the customer's side: never more than LIMIT fixes at once, each run's fix once.
    assert scenario.customer.calls()["max_fixes_in_flight"] <= LIMIT
    assert scenario.customer.count("restart-service") == BURST
    # Seen from the runs: at no moment more than LIMIT runs held a slot.
    edges = []
    for run in runs:
        edges.append((datetime.fromisoformat(str(run["admitted_at"])), 1))
        edges.append((datetime.fromisoformat(str(run["finished_at"])), -1))
    working = peak = 0
    for _, change in sorted(edges, key=lambda edge: (edge[0], edge[1])):
        working += change
        peak = max(peak, working)
    assert 1 <= peak <= LIMIT
    stats = (await scenario.api.get(f"/v1/runbooks/{runbook}/stats", headers=as_role("viewer"))).json()
    assert stats["finished"] == BURST and stats["success_rate"] == 1.0
