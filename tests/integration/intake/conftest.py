"""A real intake service for the intake tests: its own process, real HTTP and SMTP ports, the
session's real Kafka and store, and two seeded tenants with their own credentials."""

from __future__ import annotations

import json
import os
import secrets
import signal
import ssl
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
import pytest_asyncio

from kafka_helpers import Infrastructure, unique_name
from localinfra import free_port


@dataclass(frozen=True)
class SeededTenant:
    tenant_id: str
    api_key: str
    routing_key: str
    alertmanager_token: str
    inbound_email: str
    phone_number: str
    phone_auth_token: str
    portal_slug: str


@dataclass
class IntakeUnderTest:
    base_url: str
    smtp_host: str
    smtp_port: int
    admin_token: str
    database: str
    infrastructure: Infrastructure
    tenants: dict[str, SeededTenant]
    log_file: Path
    process: subprocess.Popen[bytes] | None = field(default=None, repr=False)
    # What clients trust: a CA file when intake serves HTTPS with a test certificate.
    verify: ssl.SSLContext | bool = field(default=True, repr=False)

    def auth(self, tenant: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.tenants[tenant].api_key}"}

    def admin(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.admin_token}"}


def _tenant_seed(tenant_id: str, phone: str) -> tuple[dict[str, object], SeededTenant]:
    seeded = SeededTenant(
        tenant_id=tenant_id,
        api_key="ak_" + secrets.token_urlsafe(24),
        routing_key=secrets.token_hex(16),
        alertmanager_token=secrets.token_urlsafe(24),
        inbound_email=f"support@{tenant_id}.example.net",
        phone_number=phone,
        phone_auth_token=secrets.token_hex(16),
        portal_slug=secrets.token_urlsafe(12),
    )
    entry = {
        "tenant_id": tenant_id,
        "profile": {
            "name": f"{tenant_id.title()} Ltd",
            "tier": {"name": "gold", "sla": [{"priority": "P1", "response_minutes": 15, "resolution_minutes": 240}]},
            "contacts": [{"name": "Ops", "email": f"ops@{tenant_id}.example.net", "preferred_channels": ["email"]}],
            "systems": [{"name": "billing-db", "criticality": "critical"}],
            "portal_slug": seeded.portal_slug,
        },
        "api_keys": [{"name": "tests", "key": seeded.api_key}],
        "pagerduty_routing_keys": [seeded.routing_key],
        "alertmanager_token": seeded.alertmanager_token,
        "inbound_emails": [seeded.inbound_email],
        "phone_line": {"number": seeded.phone_number, "auth_token": seeded.phone_auth_token},
    }
    return entry, seeded


def start_intake(
    infrastructure: Infrastructure,
    workdir: Path,
    *,
    extra_env: dict[str, str] | None = None,
    database: str | None = None,
    seed: list[dict[str, object]] | None = None,
    tls: tuple[Path, Path, Path] | None = None,
    ready_timeout: float = 300.0,
) -> IntakeUnderTest:
    """Start ``python -m aftercare.intake`` and wait for /readyz; the caller stops it.

    ``tls`` = (certificate, key, CA that signed it): intake serves HTTPS on ``https://localhost``
    and the returned ``verify`` trusts that CA.
    """
    workdir.mkdir(parents=True, exist_ok=True)
    http_port, smtp_port = free_port(), free_port()
    admin_token = secrets.token_urlsafe(16)
    database = database or unique_name("intake").replace("-", "_")
    tenants: dict[str, SeededTenant] = {}
    entries = seed
    if entries is None:
        entries = []
        for tenant_id, phone in (("tenant-a", "+15550001001"), ("tenant-b", "+15550001002")):
            entry, seeded = _tenant_seed(tenant_id, phone)
            entries.append(entry)
            tenants[tenant_id] = seeded
    seed_file = workdir / "seed.json"
    seed_file.write_text(json.dumps(entries))
    base_url = f"http://127.0.0.1:{http_port}" if tls is None else f"https://localhost:{http_port}"
    verify: ssl.SSLContext | bool = True if tls is None else ssl.create_default_context(cafile=str(tls[2]))
    if tls is not None:
        extra_env = (extra_env or {}) | {
            "AFTERCARE_INTAKE_TLS_CERTFILE": str(tls[0]),
            "AFTERCARE_INTAKE_TLS_KEYFILE": str(tls[1]),
        }
    env = (
        dict(os.environ)
        | {
            "AFTERCARE_KAFKA_BOOTSTRAP_SERVERS": infrastructure.bootstrap_servers,
            "AFTERCARE_MONGO_URL": infrastructure.mongo_url,
            "AFTERCARE_INTAKE_DATABASE": database,
            # Each test intake is a deployment of its own: sharing the "intake" group would split the
            # partitions with the others, and an event could land on an intake without its incident.
            "AFTERCARE_INTAKE_CONSUMER_GROUP_PREFIX": f"{database}-",
            "AFTERCARE_INTAKE_HTTP_PORT": str(http_port),
            "AFTERCARE_INTAKE_SMTP_PORT": str(smtp_port),
            "AFTERCARE_INTAKE_ADMIN_TOKEN": admin_token,
            "AFTERCARE_INTAKE_SEED_FILE": str(seed_file),
            "AFTERCARE_INTAKE_PUBLIC_BASE_URL": base_url,
            "AFTERCARE_STARTUP_TIMEOUT_SECONDS": "60",
        }
        | (extra_env or {})
    )
    log_file = workdir / "intake.log"
    with log_file.open("ab") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "aftercare.intake"], env=env, stdout=out, stderr=subprocess.STDOUT
        )
    service = IntakeUnderTest(
        base_url=base_url,
        smtp_host="127.0.0.1",
        smtp_port=smtp_port,
        admin_token=admin_token,
        database=database,
        infrastructure=infrastructure,
        tenants=tenants,
        log_file=log_file,
        process=process,
        verify=verify,
    )
    try:
        wait_ready(service, ready_timeout)
    except BaseException:
        stop_intake(service, kill=True)  # never leave a process behind a failed start
        raise
    return service


def wait_ready(service: IntakeUnderTest, timeout_s: float = 300.0) -> None:
    deadline = time.monotonic() + timeout_s
    last = "no answer"
    while time.monotonic() < deadline:
        if service.process is not None and service.process.poll() is not None:
            raise RuntimeError(
                f"intake exited with {service.process.returncode}; see {service.log_file}:\n"
                + service.log_file.read_text(errors="replace")[-3000:]
            )
        try:
            answer = httpx.get(service.base_url + "/readyz", timeout=2.0, verify=service.verify)
            if answer.status_code == 200:
                return
            last = answer.text
        except httpx.HTTPError as error:
            last = str(error)
        time.sleep(0.3)
    raise RuntimeError(f"intake not ready after {timeout_s}s ({last}); see {service.log_file}")


def stop_intake(service: IntakeUnderTest, *, kill: bool = False) -> None:
    process = service.process
    if process is None or process.poll() is not None:
        return
    process.send_signal(signal.SIGKILL if kill else signal.SIGTERM)
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


@pytest_asyncio.fixture(loop_scope="session")
async def client(intake: IntakeUnderTest) -> AsyncIterator[httpx.AsyncClient]:
    """An HTTP client on the shared intake."""
    async with httpx.AsyncClient(base_url=intake.base_url, timeout=30.0) as http:
        yield http


@pytest.fixture(scope="session")
def intake(infrastructure: Infrastructure, tmp_path_factory: pytest.TempPathFactory) -> Iterator[IntakeUnderTest]:
    """One intake process shared by the intake tests (each test uses its own dedup keys/titles)."""
    service = start_intake(infrastructure, tmp_path_factory.mktemp("intake"))
    try:
        yield service
    finally:
        stop_intake(service)


LIMITED_INTAKE_RATE_LIMIT = 3


@pytest.fixture(scope="session")
def limited_intake(intake: IntakeUnderTest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[IntakeUnderTest]:
    """An intake of its own whose integrations accept 3 requests a minute, for rate-limit tests.

    Limits are counted per credential; each channel's tests use their own kind of credential
    (routing key, Alertmanager token, phone line, portal), so they never share a count.
    """
    service = start_intake(
        intake.infrastructure,
        tmp_path_factory.mktemp("limited"),
        extra_env={
            "AFTERCARE_INTAKE_RATE_LIMIT_PER_MINUTE": str(LIMITED_INTAKE_RATE_LIMIT),
            "AFTERCARE_INTAKE_SMTP_ENABLED": "false",
        },
    )
    try:
        yield service
    finally:
        stop_intake(service)
