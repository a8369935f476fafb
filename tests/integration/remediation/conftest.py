"""A real remediation service for the remediation tests: its own process and database, the
session's real Kafka and store, operators with each role, and a real customer system to fix.

Tests drive it through its public edges: events published on Kafka (as intake and triage would),
its HTTP API, the customer system's counters, and the events it publishes back."""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
import pytest_asyncio
from cryptography.fernet import Fernet

from aftercare.events import topics
from aftercare.events.envelope import Envelope, envelope_for
from aftercare.events.incidents import Channel, IncidentReported, Severity
from aftercare.events.operators import (
    OPERATOR_EVENTS_TENANT,
    OperatorUpserted,
    Role,
    new_operator_token,
    token_digest,
)
from aftercare.events.producer import EventProducer, PublishFailed
from aftercare.events.runtime import ensure_topics
from aftercare.events.tenants import ContractTier, DiagnosticTarget, Priority, SupportedSystem, TenantUpserted
from aftercare.events.topics import topic_specs
from aftercare.events.triage import IncidentTriaged

from customer_system_process import CustomerSystemUnderTest, start_customer_system
from kafka_helpers import Infrastructure, headers_of, read_all, unique_name, wait_until
from localinfra import free_port

OPERATOR_TOKENS = {role: new_operator_token() for role in ("viewer", "responder", "admin")}
SYSTEM = "shop-web"
REPO_ROOT = Path(__file__).resolve().parents[3]


def as_role(role: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {OPERATOR_TOKENS[role]}"}


@dataclass
class RemediationUnderTest:
    base_url: str
    database: str
    infrastructure: Infrastructure
    log_file: Path
    env: dict[str, str]
    process: subprocess.Popen[bytes] | None = field(default=None, repr=False)


def remediation_env(
    infrastructure: Infrastructure, *, database: str | None = None, extra_env: dict[str, str] | None = None
) -> dict[str, str]:
    """The environment of one remediation deployment (its own database and consumer group); start a
    second instance of the same deployment with this env and another port (``another_instance``)."""
    database = database or unique_name("remediation").replace("-", "_")
    port = free_port()
    return {
        "AFTERCARE_KAFKA_BOOTSTRAP_SERVERS": infrastructure.bootstrap_servers,
        "AFTERCARE_MONGO_URL": infrastructure.mongo_url,
        "AFTERCARE_REMEDIATION_DATABASE": database,
        # Each test deployment is its own consumer group (see intake's conftest).
        "AFTERCARE_REMEDIATION_CONSUMER_GROUP_PREFIX": f"{database}-",
        "AFTERCARE_REMEDIATION_HTTP_PORT": str(port),
        "AFTERCARE_REMEDIATION_PUBLIC_BASE_URL": f"http://127.0.0.1:{port}",
        "AFTERCARE_REMEDIATION_CREDENTIAL_KEY": Fernet.generate_key().decode(),
        "AFTERCARE_REMEDIATION_POLL_INTERVAL_SECONDS": "0.5",
        "AFTERCARE_REMEDIATION_DUE_POLL_SECONDS": "0.3",
        "AFTERCARE_REMEDIATION_LEASE_MARGIN_SECONDS": "2",
        "AFTERCARE_STARTUP_TIMEOUT_SECONDS": "60",
    } | (extra_env or {})


def another_instance(env: dict[str, str]) -> dict[str, str]:
    """The same deployment (database, consumer group, keys) on another HTTP port."""
    port = free_port()
    return env | {
        "AFTERCARE_REMEDIATION_HTTP_PORT": str(port),
        "AFTERCARE_REMEDIATION_PUBLIC_BASE_URL": f"http://127.0.0.1:{port}",
    }


def start_remediation(
    infrastructure: Infrastructure,
    workdir: Path,
    *,
    database: str | None = None,
    extra_env: dict[str, str] | None = None,
    env: dict[str, str] | None = None,
) -> RemediationUnderTest:
    """Start ``python -m aftercare.remediation`` and wait for /readyz; the caller stops it.

    Pass the ``env`` of an earlier instance to start it again on the same database and group.
    """
    workdir.mkdir(parents=True, exist_ok=True)
    if env is None:
        env = remediation_env(infrastructure, database=database, extra_env=extra_env)
    log_file = workdir / "remediation.log"
    with log_file.open("ab") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "aftercare.remediation"],
            env=dict(os.environ) | env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    service = RemediationUnderTest(
        base_url=env["AFTERCARE_REMEDIATION_PUBLIC_BASE_URL"],
        database=env["AFTERCARE_REMEDIATION_DATABASE"],
        infrastructure=infrastructure,
        log_file=log_file,
        env=env,
        process=process,
    )
    # Generous: on this shared 2-core machine at a load of 30+, importing and connecting took minutes.
    deadline = time.monotonic() + 300
    last = "no answer"
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"remediation exited with {process.returncode}: {log_file.read_text()[-3000:]}")
        try:
            answer = httpx.get(service.base_url + "/readyz", timeout=2.0)
            if answer.status_code == 200:
                return service
            last = answer.text
        except httpx.HTTPError as error:
            last = str(error)
        time.sleep(0.3)
    stop_remediation(service)
    raise RuntimeError(f"remediation not ready ({last}); see {log_file}")


def stop_remediation(service: RemediationUnderTest, *, kill: bool = False) -> None:
    process = service.process
    if process is None or process.poll() is not None:
        return
    process.send_signal(signal.SIGKILL if kill else signal.SIGTERM)
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


async def publish_operators(bootstrap_servers: str) -> None:
    """The operators the tests act as, announced as intake announces them (tenants topic)."""
    # The first service started on a fresh broker creates the topics; here nobody may have yet.
    await ensure_topics(bootstrap_servers, topic_specs(), partitions=3)
    producer = EventProducer(bootstrap_servers, client_id="remediation-tests-operators")
    await producer.start()
    try:
        for role, token in OPERATOR_TOKENS.items():
            await publish_patiently(
                producer,
                envelope_for(
                    OperatorUpserted(
                        operator_id=f"op-{role}",
                        name=role.title(),
                        email=f"{role}@support.example",
                        role=Role(role),
                        token_digests=[token_digest(token)],
                    ),
                    source="intake",
                    tenant_id=OPERATOR_EVENTS_TENANT,
                ),
            )
    finally:
        await producer.stop()


async def publish_patiently(producer: EventProducer, envelope: Envelope[Any], attempts: int = 6) -> None:
    """Publish, retrying a bounded number of times: on a broker started moments ago the topics'
    partitions may have no leader yet, and the producer gives up after its publish deadline."""
    for attempt in range(attempts):
        try:
            await producer.publish(envelope)
            return
        except PublishFailed:
            if attempt == attempts - 1:
                raise
            await asyncio.sleep(2)


def wait_for_operators(service: RemediationUnderTest, timeout_s: float = 300.0) -> None:
    """Until remediation's operator directory knows the test operators."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        answer = httpx.get(service.base_url + "/v1/runbooks", headers=as_role("admin"), timeout=10)
        if answer.status_code == 200:
            return
        time.sleep(0.3)
    raise RuntimeError(f"remediation did not learn the test operators; see {service.log_file}")


@pytest.fixture(scope="module")
def remediation(
    infrastructure: Infrastructure, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RemediationUnderTest]:
    """One remediation process for a test module (each test uses its own tenant)."""
    asyncio.run(publish_operators(infrastructure.bootstrap_servers))
    # With the demo's seeds, as `make run` starts it (they concern tenant acme, which no test uses).
    seeds = {
        "AFTERCARE_REMEDIATION_ESCALATION_POLICY_SEED_DIR": str(REPO_ROOT / "infra/seed/escalation-policies"),
        "AFTERCARE_REMEDIATION_CREDENTIAL_SEED_FILE": str(REPO_ROOT / "infra/seed/system-credentials.json"),
    }
    service = start_remediation(infrastructure, tmp_path_factory.mktemp("remediation"), extra_env=seeds)
    wait_for_operators(service)
    try:
        yield service
    finally:
        stop_remediation(service)


@pytest.fixture(scope="module")
def customer_process(tmp_path_factory: pytest.TempPathFactory) -> Iterator[CustomerSystemUnderTest]:
    system = start_customer_system(
        tmp_path_factory.mktemp("customer"), token="cust-" + secrets.token_hex(8), slow_seconds=0.5
    )
    try:
        yield system
    finally:
        system.stop()


@pytest.fixture
def customer(customer_process: CustomerSystemUnderTest) -> CustomerSystemUnderTest:
    """The module's customer system, healthy with its counters zeroed (tests in a module run one
    at a time); its fix endpoints want the tenant's credential."""
    customer_process.reset()
    return customer_process


@pytest_asyncio.fixture(loop_scope="session")
async def producer(infrastructure: Infrastructure) -> AsyncIterator[EventProducer]:
    kafka = EventProducer(infrastructure.bootstrap_servers, client_id="remediation-tests")
    await kafka.start()
    try:
        yield kafka
    finally:
        await kafka.stop()


@pytest_asyncio.fixture(loop_scope="session")
async def api(remediation: RemediationUnderTest) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=remediation.base_url, timeout=30.0) as http:
        yield http


@dataclass
class Scenario:
    """One tenant with one system (the customer system), ready for incidents."""

    tenant_id: str
    customer: CustomerSystemUnderTest
    remediation: RemediationUnderTest
    producer: EventProducer
    api: httpx.AsyncClient

    async def put_runbook(self, document: dict[str, Any]) -> str:
        answer = await self.api.put(f"/v1/runbooks/{document['name']}", json=document, headers=as_role("admin"))
        assert answer.status_code in (200, 201), answer.text
        return str(document["name"])

    async def incident(
        self, runbook: str, *, labels: dict[str, str] | None = None, incident_id: str | None = None
    ) -> str:
        """Report and triage an incident naming ``runbook`` (as intake and triage would)."""
        incident_id = incident_id or f"inc-{uuid.uuid4()}"
        reported = envelope_for(
            IncidentReported(
                incident_id=incident_id,
                number=f"INC-{incident_id[-6:]}",
                title="Shop is down",
                channel=Channel.API,
                severity=Severity.CRITICAL,
                system=SYSTEM,
                source="web-1",
                labels=labels or {},
                reported_at=datetime.now(UTC),
            ),
            source="intake",
            tenant_id=self.tenant_id,
            incident_id=incident_id,
        )
        await self.producer.publish(reported)
        await self.triage(incident_id, runbook, reported)
        return incident_id

    async def triage(self, incident_id: str, runbook: str, cause: Envelope[Any] | None = None) -> None:
        triaged = envelope_for(
            IncidentTriaged(
                incident_id=incident_id,
                number=f"INC-{incident_id[-6:]}",
                priority=Priority.P1,
                category="application",
                system=SYSTEM,
                runbook=runbook,
            ),
            source="triage",
            tenant_id=self.tenant_id,
            incident_id=incident_id,
            caused_by=cause,
        )
        await self.producer.publish(triaged)

    async def audit(self, incident_id: str) -> dict[str, Any]:
        answer = await self.api.get(f"/v1/incidents/{incident_id}/audit", headers=as_role("viewer"))
        return dict(answer.json()) if answer.status_code == 200 else {}

    async def run_ends(self, incident_id: str, timeout: float = 90.0) -> dict[str, Any]:  # noqa: ASYNC109
        async def ended() -> dict[str, Any] | None:
            run = (await self.audit(incident_id)).get("run")
            return run if run and run["status"] in ("succeeded", "escalated", "rejected") else None

        return dict(await wait_until(ended, timeout=timeout, interval=0.3, message=f"run of {incident_id} ends"))

    async def events(self, incident_id: str, topic: str = topics.REMEDIATION) -> list[dict[str, Any]]:
        records = await read_all(self.remediation.infrastructure.bootstrap_servers, topic)
        seen: set[str] = set()
        found = []
        for record in records:
            if record.key != incident_id.encode():
                continue
            event = json.loads(record.value) | {"_headers": headers_of(record)}
            if event["id"] not in seen:
                seen.add(event["id"])
                found.append(event)
        return found

    def about_this_incident(self, events: list[dict[str, Any]], incident_id: str) -> list[dict[str, Any]]:
        """``events``, once checked to name this tenant and incident in their envelope and data: what
        intake needs to put them on the incident's timeline."""
        for event in events:
            assert event["tenant_id"] == self.tenant_id, event
            assert event["incident_id"] == event["data"]["incident_id"] == incident_id, event
        return events

    async def events_until(self, incident_id: str, event_type: str, timeout: float = 30.0) -> list[dict[str, Any]]:  # noqa: ASYNC109
        """The incident's events once one of ``event_type`` is among them (outboxes flush just after
        the state is stored, so the API can show an end a moment before Kafka has its event)."""

        async def found() -> list[dict[str, Any]] | None:
            events = await self.events(incident_id)
            return events if of_type(events, event_type) else None

        return list(await wait_until(found, timeout=timeout, interval=0.5, message=f"{event_type} on Kafka"))


async def new_scenario(
    remediation: RemediationUnderTest,
    customer: CustomerSystemUnderTest,
    producer: EventProducer,
    api: httpx.AsyncClient,
) -> Scenario:
    tenant_id = unique_name("tenant")
    tenant = envelope_for(
        TenantUpserted(
            tenant_id=tenant_id,
            name="Acme",
            tier=ContractTier(name="gold"),
            systems=[
                SupportedSystem(
                    name=SYSTEM,
                    diagnostic_target=DiagnosticTarget(kind="http", address=customer.health_url),
                    admin_endpoint=customer.base_url + "/admin",
                )
            ],
        ),
        source="intake",
        tenant_id=tenant_id,
    )
    await producer.publish(tenant)
    answer = await api.put(
        f"/v1/tenants/{tenant_id}/systems/{SYSTEM}/credential",
        json={"bearer_token": customer.token},
        headers=as_role("admin"),
    )
    assert answer.status_code == 204, answer.text
    scenario = Scenario(tenant_id, customer, remediation, producer, api)
    return scenario


@pytest_asyncio.fixture(loop_scope="session")
async def scenario(
    remediation: RemediationUnderTest,
    customer: CustomerSystemUnderTest,
    producer: EventProducer,
    api: httpx.AsyncClient,
) -> Scenario:
    return await new_scenario(remediation, customer, producer, api)


def restart_runbook(name: str, **overrides: Any) -> dict[str, Any]:
    """The restart runbook the tests use: note, restart (not safe to repeat), verify, roll back."""
    return {
        "name": name,
        "steps": [
            {
                "name": "note",
                "action": "add_note",
                "params": {"text": "restarting for {incident.number}"},
                "timeout_seconds": 5,
            },
            {
                "name": "restart the service",
                "action": "http_admin",
                "params": {"path": "/restart-service"},
                "timeout_seconds": 10,
                "safe_to_repeat": False,
            },
        ],
        "verification": {"expect_status": [200], "body_contains": "healthy", "attempts": 2, "interval_seconds": 0.5},
        "rollback": [
            {
                "name": "restore the backup",
                "action": "http_admin",
                "params": {"path": "/restore-backup"},
                "timeout_seconds": 10,
            }
        ],
    } | overrides


def of_type(events: list[dict[str, Any]], event_type: str) -> list[dict[str, Any]]:
    return [event for event in events if event["type"] == event_type]
