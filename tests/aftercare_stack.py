"""The whole system on infrastructure of its own, for tests and benchmarks that kill parts of it.

``AftercareStack`` starts a Kafka broker, a store and a Mailpit mail catcher on free ports (never
the session's shared ones: this stack kills its broker and store), the demo customer system, and
the four services as OS processes the way ``make run`` starts them. Every part can be killed with
SIGKILL and started again on the same data, ports, databases and consumer groups.

Shared by ``tests/e2e/test_faults_whole_stack.py`` and ``bench/e2e_latency.py``:

    with AftercareStack.started(workdir, tenants=tenants_for_load(4, systems_each=10)) as stack:
        stack.wait_ready()
        accepted = stack.report(tenant, {...})
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import secrets
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from customer_system_process import CustomerSystemUnderTest, start_customer_system
from localinfra import KafkaNode, MailCatcherNode, StoreNode, port_is_free

SERVICES = ("intake", "triage", "remediation", "notifier")

# The runbook the fault run's remediation incidents get (triage's shipped rule
# "health-check-failing" names restart-service for an API report of a failing health check). It
# passes the incident id to the customer system, which counts fix calls per incident; the restart
# is not safe to repeat, so a run that loses track of it escalates instead of calling it again.
FAULT_RUNBOOK = """\
name: restart-service
description: Restart the service through the system's admin API, then verify its health endpoint.
steps:
  - name: restart the service
    action: http_admin
    params:
      path: /restart-service
      query: "incident={incident.incident_id}"
    timeout_seconds: 30
    safe_to_repeat: false
verification:
  expect_status: [200]
  body_contains: healthy
  attempts: 3
  interval_seconds: 1
rollback: []
blast_radius:
  max_concurrent_per_system: 5
  max_runs_per_system_per_hour: 1000
"""

DEMO_CREDENTIAL_KEY = "rD9YK3UKD2-CSHogFW4uFLaALKsD1NIY_QGEsbHVoUs="


def stable_port(taken: set[int] | None = None) -> int:
    """A free port below the kernel's ephemeral range (32768+): a part restarted on it cannot find
    it taken by some client's outgoing connection, as a port from ``free_port`` can be."""
    taken = taken if taken is not None else set()
    while True:
        port = random.randrange(20000, 32000)
        if port not in taken and port_is_free("127.0.0.1", port):
            taken.add(port)
            return port


@dataclass(frozen=True)
class LoadTenant:
    """A customer of the support company: one contact, an API key and systems remediation may fix."""

    tenant_id: str
    api_key: str
    contact_email: str
    systems: tuple[str, ...]


def tenants_for_load(count: int, *, systems_each: int) -> list[LoadTenant]:
    """``count`` tenants with ``systems_each`` fixable systems each.

    One remediation incident per system: triage groups a second report about the same system and
    category within 30 minutes into the first, and a grouped incident starts no run."""
    return [
        LoadTenant(
            tenant_id=f"load-{number}",
            api_key="ak_" + secrets.token_urlsafe(24),
            contact_email=f"ops@load-{number}.example.net",
            systems=tuple(f"app{number}x{system}" for system in range(systems_each)),
        )
        for number in range(count)
    ]


def _seed(tenants: list[LoadTenant], customer_system: str) -> list[dict[str, Any]]:
    return [
        {
            "tenant_id": tenant.tenant_id,
            "profile": {
                "name": f"Load Customer {tenant.tenant_id}",
                "tier": {
                    "name": "standard",
                    "sla": [
                        {"priority": p, "response_minutes": 60 * (i + 1), "resolution_minutes": 480 * (i + 1)}
                        for i, p in enumerate(("P1", "P2", "P3", "P4"))
                    ],
                },
                "contacts": [{"name": "Ops", "email": tenant.contact_email, "preferred_channels": ["email"]}],
                "systems": [
                    {
                        "name": system,
                        "criticality": "high",
                        # Probed by regular diagnostics too; an hour apart keeps that out of the way.
                        "diagnostic_target": {
                            "kind": "http",
                            "address": f"{customer_system}/health",
                            "interval_seconds": 3600,
                            "timeout_seconds": 5,
                            "expect_status": 200,
                            "expect_body": "healthy",
                        },
                        "admin_endpoint": f"{customer_system}/admin",
                    }
                    for system in tenant.systems
                ],
                "probe_allowlist": ["127.0.0.1/32"],
            },
            "api_keys": [{"name": "load", "key": tenant.api_key}],
        }
        for tenant in tenants
    ]


@dataclass
class AftercareStack:
    workdir: Path
    kafka: KafkaNode
    store: StoreNode
    mail: MailCatcherNode
    customer: CustomerSystemUnderTest
    tenants: list[LoadTenant]
    env: dict[str, str]
    ports: dict[str, int]
    databases: dict[str, str]
    group_prefix: str
    processes: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    intake_admin_token: str = ""

    # ---------------------------------------------------------------- start and stop

    @classmethod
    @contextlib.contextmanager
    def started(
        cls, workdir: Path, *, tenants: list[LoadTenant], extra_env: dict[str, str] | None = None
    ) -> Iterator[AftercareStack]:
        """Everything started (services not yet ready: call ``wait_ready``); all stopped afterwards."""
        workdir.mkdir(parents=True, exist_ok=True)
        taken: set[int] = set()
        ports = [stable_port(taken) for _ in range(5)]
        kafka = KafkaNode(data_dir=workdir / "kafka", port=ports[0], controller_port=ports[1], heap="384m")
        store = StoreNode(data_dir=workdir / "store", port=ports[2])
        mail = MailCatcherNode(data_dir=workdir / "mail", smtp_port=ports[3], http_port=ports[4])
        customer: CustomerSystemUnderTest | None = None
        stack: AftercareStack | None = None
        try:
            store.start()
            mail.start()
            kafka.start()
            customer = start_customer_system(workdir / "customer")
            stack = cls._configure(workdir, kafka, store, mail, customer, tenants, extra_env or {})
            for service in SERVICES:
                stack.start_service(service)
            yield stack
        finally:
            if stack is not None:
                stack.stop_services()
            if customer is not None:
                customer.stop()
            kafka.stop()
            store.stop()
            mail.stop()

    @classmethod
    def _configure(
        cls,
        workdir: Path,
        kafka: KafkaNode,
        store: StoreNode,
        mail: MailCatcherNode,
        customer: CustomerSystemUnderTest,
        tenants: list[LoadTenant],
        extra_env: dict[str, str],
    ) -> AftercareStack:
        seed = workdir / "tenants.json"
        seed.write_text(json.dumps(_seed(tenants, customer.base_url)))
        runbooks = workdir / "runbooks"
        runbooks.mkdir(exist_ok=True)
        (runbooks / "restart-service.yaml").write_text(FAULT_RUNBOOK)
        ports = {service: stable_port() for service in SERVICES}
        run = "stack_" + secrets.token_hex(4)
        databases = {service: f"{run}_{service}" for service in SERVICES}
        admin_token = secrets.token_urlsafe(12)
        env = dict(os.environ) | {
            "AFTERCARE_KAFKA_BOOTSTRAP_SERVERS": kafka.bootstrap_servers,
            "AFTERCARE_MONGO_URL": store.url,
            # Log lines reach the files as they happen (a killed process leaves its last words).
            "PYTHONUNBUFFERED": "1",
            "AFTERCARE_INTAKE_SEED_FILE": str(seed),
            "AFTERCARE_INTAKE_ADMIN_TOKEN": admin_token,
            "AFTERCARE_INTAKE_SMTP_PORT": str(stable_port()),
            "AFTERCARE_INTAKE_PUBLIC_BASE_URL": f"http://127.0.0.1:{ports['intake']}",
            "AFTERCARE_REMEDIATION_RUNBOOK_SEED_DIR": str(runbooks),
            "AFTERCARE_REMEDIATION_CREDENTIAL_KEY": DEMO_CREDENTIAL_KEY,
            "AFTERCARE_NOTIFIER_SMTP_HOST": mail.host,
            "AFTERCARE_NOTIFIER_SMTP_PORT": str(mail.smtp_port),
            "AFTERCARE_NOTIFIER_PORTAL_BASE_URL": f"http://127.0.0.1:{ports['intake']}",
            "AFTERCARE_NOTIFIER_REMEDIATION_BASE_URL": f"http://127.0.0.1:{ports['remediation']}",
            # As in make run: every step of an incident is told, not spaced 15 minutes apart.
            "AFTERCARE_NOTIFIER_THROTTLE_MINUTES": "0",
        }
        for service in SERVICES:
            prefix = f"AFTERCARE_{service.upper()}_"
            env[prefix + "HTTP_PORT"] = str(ports[service])
            env[prefix + "DATABASE"] = databases[service]
            env[prefix + "CONSUMER_GROUP_PREFIX"] = f"{run}-"
        env |= extra_env
        return cls(
            workdir=workdir,
            kafka=kafka,
            store=store,
            mail=mail,
            customer=customer,
            tenants=tenants,
            env=env,
            ports=ports,
            databases=databases,
            group_prefix=f"{run}-",
            intake_admin_token=admin_token,
        )

    def log_file(self, service: str) -> Path:
        return self.workdir / f"{service}.log"

    def start_service(self, service: str) -> None:
        with self.log_file(service).open("ab") as out:
            self.processes[service] = subprocess.Popen(
                [sys.executable, "-m", f"aftercare.{service}"], env=self.env, stdout=out, stderr=subprocess.STDOUT
            )

    def kill_service(self, service: str) -> None:
        """SIGKILL: no shutdown hook, nothing finished or committed."""
        process = self.processes[service]
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=30)

    def kill_kafka(self) -> None:
        assert self.kafka.process is not None
        self.kafka.process.send_signal(signal.SIGKILL)
        self.kafka.process.wait(timeout=30)
        self.kafka.process = None

    def restart_kafka(self) -> None:
        self._wait_port_free(self.kafka.port)
        self._wait_port_free(self.kafka.controller_port)
        # After SIGKILL the broker recovers its logs first: minutes on a loaded machine.
        self.kafka.start(timeout_s=900)

    def kill_store(self) -> None:
        assert self.store.process is not None
        self.store.process.send_signal(signal.SIGKILL)
        self.store.process.wait(timeout=30)
        self.store.process = None

    def restart_store(self) -> None:
        self._wait_port_free(self.store.port)
        self.store.start(timeout_s=600)

    @staticmethod
    def _wait_port_free(port: int, timeout_s: float = 60.0) -> None:
        deadline = time.monotonic() + timeout_s
        while not port_is_free("127.0.0.1", port):
            if time.monotonic() > deadline:
                raise RuntimeError(f"port {port} still taken {timeout_s:.0f} s after its server was killed")
            time.sleep(0.2)

    def stop_services(self) -> None:
        for process in self.processes.values():
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for process in self.processes.values():
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()

    # ---------------------------------------------------------------- looking at it

    def url(self, service: str, path: str) -> str:
        return f"http://127.0.0.1:{self.ports[service]}{path}"

    def ready(self, service: str) -> bool:
        try:
            return httpx.get(self.url(service, "/readyz"), timeout=3).status_code == 200
        except httpx.HTTPError:
            return False

    def wait_ready(self, services: tuple[str, ...] = SERVICES, timeout_s: float = 180.0) -> None:
        deadline = time.monotonic() + timeout_s
        waiting = set(services)
        while waiting:
            waiting = {service for service in waiting if not self.ready(service)}
            if waiting and time.monotonic() > deadline:
                raise TimeoutError(f"not ready after {timeout_s:.0f} s: {sorted(waiting)}; logs in {self.workdir}")
            for service in waiting:
                if self.processes[service].poll() is not None:
                    raise RuntimeError(f"{service} exited; see {self.log_file(service)}")
            time.sleep(0.5)

    def metrics(self, service: str) -> str:
        return httpx.get(self.url(service, "/metrics"), timeout=10).text

    def mails(self) -> list[dict[str, Any]]:
        """Every message the mail catcher accepted (Mailpit's summaries: To, Subject, Created...)."""
        messages: list[dict[str, Any]] = []
        start = 0
        while True:
            page = httpx.get(
                f"{self.mail.inbox_url}/api/v1/messages", params={"start": start, "limit": 500}, timeout=30
            ).json()
            messages += page["messages"]
            start += len(page["messages"])
            if not page["messages"] or start >= page["messages_count"]:
                return messages

    def resolved_mails_by_incident(self) -> Counter[tuple[str, str]]:
        """How many "Resolved" emails each (recipient, incident number) got."""
        counts: Counter[tuple[str, str]] = Counter()
        for message in self.mails():
            subject = message["Subject"]
            if "] Resolved: " not in subject:
                continue
            number = subject.split("]", 1)[0].lstrip("[")
            for recipient in message["To"]:
                counts[(recipient["Address"], number)] += 1
        return counts
