"""Two triage processes on one database and one consumer group: a regular diagnostic runs once
per due time across both, each incident is triaged by one of them once, and concurrent alerts
of one problem still end under one first incident."""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from pymongo import AsyncMongoClient

from aftercare.events.incidents import Severity
from aftercare.events.producer import EventProducer
from aftercare.events.tenants import Criticality, DiagnosticTarget, SupportedSystem

from .conftest import TriageUnderTest, publish, report, start_triage, stop_triage, tenant_event
from kafka_helpers import Infrastructure, unique_name, wait_until

PROBE_INTERVAL_S = 1


class CountingTarget:
    """An HTTP health endpoint that counts the probes it answers, by the prober's User-Agent
    (each triage instance names itself there)."""

    def __init__(self) -> None:
        self.user_agents: list[str] = []
        lock = threading.Lock()
        target = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                with lock:
                    target.user_agents.append(self.headers.get("User-Agent", ""))
                body = b"ok"
                try:
                    self.send_response(200)
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # a probe that gave up (its timeout) on a loaded machine: still a probe

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/health"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def hits_by(self, instances: set[str]) -> int:
        """Probes made by these triage instances (other triage processes of the test session know
        the tenant from the shared tenants topic and probe the target too, from their own claims)."""
        names = {f"aftercare-triage-probe ({instance})" for instance in instances}
        return sum(1 for user_agent in self.user_agents if user_agent in names)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture(scope="module")
def two_triages(
    infrastructure: Infrastructure, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[list[TriageUnderTest]]:
    workdir = tmp_path_factory.mktemp("two-triages")
    database = unique_name("triage2").replace("-", "_")
    with ThreadPoolExecutor(max_workers=2) as pool:
        # Started side by side (a process takes tens of seconds to import on a loaded machine).
        starts = [
            pool.submit(
                start_triage, infrastructure, workdir / name, database=database, ready_timeout=240, from_now=True
            )
            for name in ("a", "b")
        ]
        services = [start.result() for start in starts]
    try:
        yield services
    finally:
        for service in services:
            stop_triage(service)


def _log_lines(service: TriageUnderTest) -> list[dict[str, Any]]:
    lines = []
    for line in Path(service.log_file).read_text().splitlines():
        if line.startswith("{"):
            try:
                lines.append(json.loads(line))
            except ValueError:
                continue
    return lines


def _holds_incident_partitions(service: TriageUnderTest) -> bool:
    """Whether the process's latest assignment in triage's group includes incident partitions."""
    assignments = [
        line
        for line in _log_lines(service)
        if line.get("event") == "partitions assigned" and line.get("group") == f"{service.database}-triage"
    ]
    return bool(assignments) and any("aftercare.incidents" in p for p in assignments[-1]["partitions"])


async def test_two_instances_probe_each_due_time_once_and_triage_each_incident_once(
    two_triages: list[TriageUnderTest], producer: EventProducer, infrastructure: Infrastructure
) -> None:
    first = two_triages[0]
    # Both processes in the group with partitions of their own: the work is really split.
    await wait_until(
        lambda: all(_holds_incident_partitions(service) for service in two_triages),
        timeout=90,
        interval=0.5,
        message="both triage processes hold incident partitions",
    )
    target = CountingTarget()
    tenant = unique_name("acme")
    try:
        systems = [
            SupportedSystem(name="shop-web", aliases=["shop"], criticality=Criticality.HIGH),
            SupportedSystem(
                name="status-page",
                criticality=Criticality.LOW,
                diagnostic_target=DiagnosticTarget(
                    kind="http", address=target.url, interval_seconds=PROBE_INTERVAL_S, timeout_seconds=3
                ),
            ),
        ]
        await publish(producer, tenant, tenant_event(tenant, systems=systems, probe_allowlist=["127.0.0.1/32"]))
        # Twelve separate problems (twelve systems' worth of words) and six alerts about one.
        separate = [report(f"Printer {n} jammed", severity=Severity.WARNING) for n in range(12)]
        same = [report(f"shop-web 503 ({n})", system="shop-web", severity=Severity.CRITICAL) for n in range(6)]
        await asyncio.gather(*(publish(producer, tenant, incident) for incident in separate + same))
        ids = {incident.incident_id for incident in separate + same}

        # Read from these two processes' own database and logs: other triage processes of the
        # test session (their own databases) announce the same decisions on the same topic.
        def logged() -> list[str]:
            lines = [
                line["incident_id"]
                for service in two_triages
                for line in _log_lines(service)
                if line.get("event") == "incident triaged" and line.get("incident_id") in ids
            ]
            return lines if set(lines) == ids else []

        await wait_until(logged, timeout=120, interval=0.5, message="every incident triaged by the two")

        # Probes from both processes: wait until each has probed at least one period.
        mongo: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(infrastructure.mongo_url, tz_aware=True)
        try:
            claims = mongo[first.database]["probe_claims"]
            prefix = f"^{tenant}\\|status-page\\|"

            async def probed_by_both() -> bool:
                holders = {claim["by"] async for claim in claims.find({"_id": {"$regex": prefix}})}
                return len(holders) >= 2

            await wait_until(probed_by_both, timeout=60, interval=0.5, message="both processes probed the target")
            # Stopping lets probes in flight finish, so every claimed period has hit the target.
            for service in two_triages:
                stop_triage(service)
            periods = [claim["_id"] async for claim in claims.find({"_id": {"$regex": prefix}})]
            instances = {claim["by"] async for claim in claims.find({"_id": {"$regex": prefix}})}
            decisions = {
                document["_id"]: document
                async for document in mongo[first.database]["incidents"].find({"tenant_id": tenant})
            }
        finally:
            await mongo.close()
    finally:
        target.close()

    # Every probe the two made belongs to a period one of them claimed, one probe each.
    hits = target.hits_by(instances)
    assert len(instances) == 2 and periods and hits == len(periods), f"{hits} probes for {len(periods)} due times"

    # Each incident triaged once, by one of the two processes.
    triage_lines = [
        line["incident_id"]
        for service in two_triages
        for line in _log_lines(service)
        if line.get("event") == "incident triaged" and line.get("incident_id") in ids
    ]
    assert sorted(triage_lines) == sorted(ids)
    # Each process took incidents from its own partitions: triaged them, or, when they came before
    # their tenant, parked them; the process that handles the tenant then triages every parked one
    # (CI saw one process triage all 18 that way, the other having parked its share).
    taken_up = ("incident triaged", "incident waits for its tenant to reach triage")
    by_process = [
        {line.get("incident_id") for line in _log_lines(service) if line.get("event") in taken_up} & ids
        for service in two_triages
    ]
    assert all(by_process), "one process took up no incident: the work was not split"

    same_ids = {incident.incident_id for incident in same}
    firsts = [i for i in same_ids if decisions[i]["duplicate_of"] is None]
    assert len(firsts) == 1, f"{len(firsts)} of the six alerts became a first incident"
    assert {decisions[i]["duplicate_of"] for i in same_ids - set(firsts)} == set(firsts)
    # The twelve separate problems are on no system: none is grouped.
    assert all(decisions[incident.incident_id]["duplicate_of"] is None for incident in separate)
