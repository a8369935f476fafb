"""A real triage service for the triage tests: its own process and database, the session's real
Kafka and store, and helpers to publish what intake would and read back what triage announced."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
import pytest_asyncio

from aftercare.events import topics
from aftercare.events.envelope import Envelope, Event, envelope_for
from aftercare.events.incidents import Channel, IncidentReported, Reporter, Severity
from aftercare.events.operators import OPERATOR_EVENTS_TENANT, OperatorUpserted, Role, new_operator_token, token_digest
from aftercare.events.producer import EventProducer
from aftercare.events.tenants import ContractTier, Criticality, SlaTarget, SupportedSystem, TenantUpserted

from kafka_helpers import Infrastructure, commit_end_offsets, headers_of, read_all, unique_name, wait_until
from localinfra import free_port


@dataclass
class TriageUnderTest:
    base_url: str
    database: str
    infrastructure: Infrastructure
    log_file: Path
    process: subprocess.Popen[bytes] | None = field(default=None, repr=False)


def start_triage(
    infrastructure: Infrastructure,
    workdir: Path,
    *,
    extra_env: dict[str, str] | None = None,
    database: str | None = None,
    ready_timeout: float = 180,
    from_now: bool = False,
) -> TriageUnderTest:
    """Start ``python -m aftercare.triage`` and wait for /readyz; the caller stops it.

    ``from_now``: its consumer group starts at the end of the incidents topic (tenants are read
    from the start), so it triages only what its test reports, not the session's earlier incidents."""
    workdir.mkdir(parents=True, exist_ok=True)
    http_port = free_port()
    database = database or unique_name("triage").replace("-", "_")
    if from_now:
        with ThreadPoolExecutor(max_workers=1) as pool:  # the caller may be inside an event loop
            pool.submit(
                asyncio.run,
                commit_end_offsets(infrastructure.bootstrap_servers, f"{database}-triage", [topics.INCIDENTS]),
            ).result()
    env = (
        dict(os.environ)
        | {
            "AFTERCARE_KAFKA_BOOTSTRAP_SERVERS": infrastructure.bootstrap_servers,
            "AFTERCARE_MONGO_URL": infrastructure.mongo_url,
            "AFTERCARE_TRIAGE_DATABASE": database,
            "AFTERCARE_TRIAGE_CONSUMER_GROUP_PREFIX": f"{database}-",
            "AFTERCARE_TRIAGE_HTTP_PORT": str(http_port),
            "AFTERCARE_STARTUP_TIMEOUT_SECONDS": "60",
        }
        | (extra_env or {})
    )
    log_file = workdir / "triage.log"
    with log_file.open("ab") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "aftercare.triage"], env=env, stdout=out, stderr=subprocess.STDOUT
        )
    service = TriageUnderTest(f"http://127.0.0.1:{http_port}", database, infrastructure, log_file, process)
    deadline = time.monotonic() + ready_timeout
    last = "no answer"
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"triage exited with {process.returncode}:\n{log_file.read_text()[-3000:]}")
        try:
            answer = httpx.get(service.base_url + "/readyz", timeout=2.0)
            if answer.status_code == 200:
                return service
            last = answer.text
        except httpx.HTTPError as error:
            last = str(error)
        time.sleep(0.3)
    stop_triage(service)
    raise RuntimeError(f"triage not ready after {ready_timeout:.0f}s ({last}); see {log_file}")


def stop_triage(service: TriageUnderTest, *, kill: bool = False) -> None:
    process = service.process
    if process is None or process.poll() is not None:
        return
    process.send_signal(signal.SIGKILL if kill else signal.SIGTERM)
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


@pytest.fixture(scope="session")
def triage_service(
    infrastructure: Infrastructure, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[TriageUnderTest]:
    """One triage process shared by the triage tests (each test uses its own tenant)."""
    service = start_triage(infrastructure, tmp_path_factory.mktemp("triage"))
    try:
        yield service
    finally:
        stop_triage(service)


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def producer(infrastructure: Infrastructure) -> AsyncIterator[EventProducer]:
    kafka = EventProducer(infrastructure.bootstrap_servers, client_id="triage-tests")
    await kafka.start()
    try:
        yield kafka
    finally:
        await kafka.stop()


ADMIN_TOKEN = new_operator_token()
VIEWER_TOKEN = new_operator_token()
ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
VIEWER = {"Authorization": f"Bearer {VIEWER_TOKEN}"}


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def http(triage_service: TriageUnderTest, producer: EventProducer) -> AsyncIterator[httpx.AsyncClient]:
    """A client on triage, once triage's operator directory knows an admin and a viewer."""
    suffix = unique_name("op")
    for role, token in (("admin", ADMIN_TOKEN), ("viewer", VIEWER_TOKEN)):
        operator = OperatorUpserted(
            operator_id=f"{role}-{suffix}",
            name=f"{role.title()} {suffix}",
            email=f"{role}-{suffix}@support.example",
            role=Role(role),
            token_digests=[token_digest(token)],
        )
        await producer.publish(
            envelope_for(operator, source="tests", tenant_id=OPERATOR_EVENTS_TENANT, time=datetime.now(UTC))
        )
    async with httpx.AsyncClient(base_url=triage_service.base_url, timeout=30.0) as client:

        async def known() -> bool:
            answers = [await client.get("/v1/rules", headers=headers) for headers in (ADMIN, VIEWER)]
            return all(answer.status_code == 200 for answer in answers)

        await wait_until(known, timeout=45, interval=0.5, message="operators reached triage")
        yield client


GOLD = ContractTier(
    name="gold",
    sla=[
        SlaTarget(priority="P1", response_minutes=15, resolution_minutes=240),
        SlaTarget(priority="P2", response_minutes=60, resolution_minutes=480),
        SlaTarget(priority="P3", response_minutes=240, resolution_minutes=2880),
        SlaTarget(priority="P4", response_minutes=1440, resolution_minutes=10080),
    ],
)


def tenant_event(tenant_id: str, **changes: Any) -> TenantUpserted:
    fields: dict[str, Any] = {
        "tenant_id": tenant_id,
        "name": f"{tenant_id} Ltd",
        "tier": GOLD,
        "systems": [
            SupportedSystem(name="billing-db", aliases=["billing", "invoicing"], criticality=Criticality.CRITICAL),
            SupportedSystem(name="shop-web", aliases=["web shop", "shop"], criticality=Criticality.HIGH),
            SupportedSystem(name="wiki", criticality=Criticality.LOW),
        ],
    }
    return TenantUpserted.model_validate(fields | changes)


def report(title: str, **changes: Any) -> IncidentReported:
    incident_id = str(uuid.uuid4())
    fields: dict[str, Any] = {
        "incident_id": incident_id,
        "number": f"INC-{incident_id[:4]}",
        "title": title,
        "channel": Channel.API,
        "severity": Severity.ERROR,
        "reporter": Reporter(name="monitor"),
        "reported_at": datetime.now(UTC),
    }
    return IncidentReported.model_validate(fields | changes)


async def publish(producer: EventProducer, tenant_id: str, event: Event) -> Envelope[Any]:
    incident_id = getattr(event, "incident_id", None)
    return await producer.publish(envelope_for(event, source="tests", tenant_id=tenant_id, incident_id=incident_id))


def distinct(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    seen: set[str] = set()
    return [event for event in events if not (event["id"] in seen or seen.add(event["id"]))]


async def triage_events(
    infrastructure: Infrastructure, tenant_id: str, topic: str = topics.TRIAGE
) -> list[dict[str, Any]]:
    """Every event triage published about ``tenant_id``, in publish order per incident."""
    records = await read_all(infrastructure.bootstrap_servers, topic)
    return distinct(
        [
            json.loads(r.value) | {"_headers": headers_of(r)}
            for r in records
            if headers_of(r).get("tenant_id") == tenant_id.encode()
        ]
    )
