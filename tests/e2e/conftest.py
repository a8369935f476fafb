"""The whole system started the way ``make run`` starts it, once per test session, on free ports.

What is the same as ``make run``:

* the processes: the four services and the demo customer system run the commands of the
  ``Procfile``, from the repository root;
* the environment: every ``run: export NAME ?= value`` of the Makefile (seed file, admin token,
  runbook seeds, credential key, no spacing of progress updates), read from the Makefile itself so
  the two cannot drift apart;
* the seeds: ``infra/seed/demo-tenants.json`` (tenant ``acme``, contact Dana Ops, ``billing-api``
  probed by regular diagnostics) and ``infra/seed/runbooks``;
* the mail catcher: Mailpit (``localinfra.MailCatcherNode``), which the notifier sends to.

What differs, and why:

* every port is a free one, and the seed's address of the demo customer system (the Makefile's
  ``DEMO_SYSTEM``) is rewritten to the one started here;
* ``billing-api`` is probed every ``PROBE_INTERVAL_SECONDS`` instead of every 10 s, so three failed
  probes take seconds (the interval is part of the tenant's seed; triage has no setting for it);
* Kafka and the store are the test session's (``infrastructure``), so each service gets its own
  database and consumer-group prefix, as a second deployment on a shared broker must.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from customer_system_process import CustomerSystemUnderTest, start_customer_system
from kafka_helpers import Infrastructure, unique_name
from localinfra import MailCatcherNode, free_port

ROOT = Path(__file__).resolve().parents[2]
SERVICES = ("intake", "triage", "remediation", "notifier")
DEMO_TENANT = "acme"
PROBE_INTERVAL_SECONDS = 2
READY_TIMEOUT_SECONDS = 300  # a first start on a busy 2-core machine took over 180 s


def makefile_run_environment(makefile: Path = ROOT / "Makefile") -> dict[str, str]:
    """The variables ``make run`` exports (``run: export NAME ?= value``), outside ``ifeq`` blocks
    (those are options such as HTTPS=1)."""
    exported: dict[str, str] = {}
    depth = 0
    for line in makefile.read_text().splitlines():
        if line.startswith("ifeq") or line.startswith("ifneq") or line.startswith("ifdef"):
            depth += 1
        elif line.startswith("endif"):
            depth -= 1
        elif depth == 0 and (match := re.match(r"^run: export (\w+) \?= (.*)$", line)):
            exported[match.group(1)] = match.group(2).strip()
    if not exported:
        raise AssertionError("the Makefile's run target exports nothing any more; update tests/e2e/conftest.py")
    return exported


def makefile_variable(name: str, makefile: Path = ROOT / "Makefile") -> str:
    match = re.search(rf"^{name} \?= (.*)$", makefile.read_text(), re.MULTILINE)
    if match is None:
        raise AssertionError(f"the Makefile no longer sets {name}")
    return match.group(1).strip()


def procfile_commands(procfile: Path = ROOT / "Procfile") -> dict[str, list[str]]:
    commands: dict[str, list[str]] = {}
    for line in procfile.read_text().splitlines():
        name, _, command = line.partition(":")
        if command.strip():
            commands[name.strip()] = shlex.split(command)
    return commands


@dataclass
class Mailbox:
    """Mailpit's HTTP API: what the demo customer (and the on-call people) received."""

    base_url: str

    def messages(self) -> list[dict[str, Any]]:
        answer = httpx.get(f"{self.base_url}/api/v1/messages", params={"limit": 500}, timeout=10)
        answer.raise_for_status()
        listed: list[dict[str, Any]] = answer.json()["messages"]
        return listed

    def to(self, address: str, subject_contains: str = "") -> list[dict[str, Any]]:
        """Messages to ``address`` whose subject contains the text, oldest first."""
        found = [
            message
            for message in self.messages()
            if any(to["Address"].lower() == address.lower() for to in message["To"] or [])
            and subject_contains in message["Subject"]
        ]
        return sorted(found, key=lambda message: message["Created"])

    def headers(self, message_id: str) -> dict[str, list[str]]:
        answer = httpx.get(f"{self.base_url}/api/v1/message/{message_id}/headers", timeout=10)
        answer.raise_for_status()
        result: dict[str, list[str]] = answer.json()
        return result

    def message(self, message_id: str) -> dict[str, Any]:
        answer = httpx.get(f"{self.base_url}/api/v1/message/{message_id}", timeout=10)
        answer.raise_for_status()
        result: dict[str, Any] = answer.json()
        return result


@dataclass
class DemoStack:
    """Where the started stack answers, and the demo tenant's credentials from the seed."""

    ports: dict[str, int]
    databases: dict[str, str]
    env: dict[str, str]
    seed: list[dict[str, Any]]
    customer_system: CustomerSystemUnderTest
    mailbox: Mailbox
    log_dir: Path
    processes: dict[str, subprocess.Popen[bytes]] = field(repr=False, default_factory=dict)

    def url(self, service: str, path: str = "") -> str:
        return f"http://127.0.0.1:{self.ports[service]}{path}"

    @property
    def tenant(self) -> dict[str, Any]:
        (tenant,) = [entry for entry in self.seed if entry["tenant_id"] == DEMO_TENANT]
        return tenant

    @property
    def api_key(self) -> str:
        return str(self.tenant["api_keys"][0]["key"])

    @property
    def admin_token(self) -> str:
        return self.env["AFTERCARE_INTAKE_ADMIN_TOKEN"]

    @property
    def contact_email(self) -> str:
        return str(self.tenant["profile"]["contacts"][0]["email"])

    def customer_api(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.api_key}"}

    def logs(self) -> str:
        """The last lines of every service's log, for a failure message."""
        return "\n".join(
            f"--- {path.name}\n" + "\n".join(path.read_text(errors="replace").splitlines()[-15:])
            for path in sorted(self.log_dir.glob("*.log"))
        )


def _demo_seed(customer_system_url: str) -> list[dict[str, Any]]:
    text = (ROOT / "infra/seed/demo-tenants.json").read_text()
    text = text.replace(makefile_variable("DEMO_SYSTEM"), customer_system_url)
    seed: list[dict[str, Any]] = json.loads(text)
    for tenant in seed:
        for system in tenant["profile"].get("systems", []):
            if system.get("diagnostic_target"):
                system["diagnostic_target"]["interval_seconds"] = PROBE_INTERVAL_SECONDS
    return seed


def _ready(url: str) -> bool:
    try:
        return httpx.get(url, timeout=3).status_code == 200
    except httpx.HTTPError:
        return False


def _stop_probing(stack: DemoStack) -> None:
    """The session's broker outlives this stack: take the demo tenant's diagnostic targets away
    (a newer TenantUpserted), so triage instances of later tests do not probe a stopped system."""
    profile = json.loads(json.dumps(stack.tenant["profile"]))
    for system in profile.get("systems", []):
        system.pop("diagnostic_target", None)
    try:
        httpx.put(
            stack.url("intake", f"/admin/tenants/{DEMO_TENANT}"),
            headers={"Authorization": f"Bearer {stack.admin_token}"},
            json=profile,
            timeout=10,
        ).raise_for_status()
    except httpx.HTTPError as error:
        print(f"could not take the demo tenant's diagnostic targets away: {error}")


# Package scope: the stack stops after the last end-to-end test. It shares the session's Kafka
# topics, so a demo triage left running would triage (and move) the incidents every later
# integration test reports (as session scope did: intake's lifecycle tests saw their incidents
# triaged by it).
@pytest.fixture(scope="package")
def demo_stack(infrastructure: Infrastructure, tmp_path_factory: pytest.TempPathFactory) -> Iterator[DemoStack]:
    """Mailpit, the demo customer system and the four services, as ``make run`` starts them."""
    log_dir = tmp_path_factory.mktemp("demo-stack")
    commands = procfile_commands()
    mailcatcher = MailCatcherNode(data_dir=log_dir / "mailpit", smtp_port=free_port(), http_port=free_port())
    mailcatcher.start()
    customer_system = start_customer_system(log_dir, **_customer_system_options(commands["customer-system"]))
    seed = _demo_seed(customer_system.base_url)
    seed_file = log_dir / "demo-tenants.json"
    seed_file.write_text(json.dumps(seed, indent=2))

    run = unique_name("e2e").replace("-", "_")
    ports = {service: free_port() for service in SERVICES}
    databases = {service: f"{run}_{service}" for service in SERVICES}
    # Settings that name the demo customer system (the Makefile's DEMO_SYSTEM) name the one here.
    made = {
        name: value.replace(makefile_variable("DEMO_SYSTEM"), customer_system.base_url)
        for name, value in makefile_run_environment().items()
    }
    env = (
        dict(os.environ)
        | made
        | {
            "AFTERCARE_KAFKA_BOOTSTRAP_SERVERS": infrastructure.bootstrap_servers,
            "AFTERCARE_MONGO_URL": infrastructure.mongo_url,
            "AFTERCARE_INTAKE_SEED_FILE": str(seed_file),
            "AFTERCARE_INTAKE_SMTP_PORT": str(free_port()),
            "AFTERCARE_INTAKE_PUBLIC_BASE_URL": f"http://127.0.0.1:{ports['intake']}",
            "AFTERCARE_REMEDIATION_PUBLIC_BASE_URL": f"http://127.0.0.1:{ports['remediation']}",
            "AFTERCARE_NOTIFIER_PUBLIC_BASE_URL": f"http://127.0.0.1:{ports['notifier']}",
            "AFTERCARE_NOTIFIER_PORTAL_BASE_URL": f"http://127.0.0.1:{ports['intake']}",
            "AFTERCARE_NOTIFIER_REMEDIATION_BASE_URL": f"http://127.0.0.1:{ports['remediation']}",
            "AFTERCARE_NOTIFIER_SMTP_HOST": mailcatcher.host,
            "AFTERCARE_NOTIFIER_SMTP_PORT": str(mailcatcher.smtp_port),
        }
    )
    for service in SERVICES:
        prefix = f"AFTERCARE_{service.upper()}_"
        env[prefix + "HTTP_PORT"] = str(ports[service])
        env[prefix + "DATABASE"] = databases[service]
        env[prefix + "CONSUMER_GROUP_PREFIX"] = f"{run}-"
    stack = DemoStack(
        ports=ports,
        databases=databases,
        env=env,
        seed=seed,
        customer_system=customer_system,
        mailbox=Mailbox(mailcatcher.inbox_url),
        log_dir=log_dir,
    )
    try:
        for service in SERVICES:
            with (log_dir / f"{service}.log").open("wb") as out:
                stack.processes[service] = subprocess.Popen(
                    commands[service], cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT
                )
        started = time.monotonic()
        deadline = started + READY_TIMEOUT_SECONDS
        waiting = set(SERVICES)
        while waiting and time.monotonic() < deadline:
            exited = [service for service in waiting if stack.processes[service].poll() is not None]
            assert not exited, f"{exited} exited at start-up:\n{stack.logs()}"
            waiting = {service for service in waiting if not _ready(stack.url(service, "/readyz"))}
            time.sleep(0.5)
        assert not waiting, f"not ready after {READY_TIMEOUT_SECONDS} s: {sorted(waiting)}\n{stack.logs()}"
        print(f"demo stack ready in {time.monotonic() - started:.0f} s (load average {os.getloadavg()[0]:.1f})")
        yield stack
    finally:
        if "intake" in stack.processes and stack.processes["intake"].poll() is None:
            _stop_probing(stack)
        for process in stack.processes.values():
            process.send_signal(signal.SIGTERM)
        for process in stack.processes.values():
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        customer_system.stop()
        mailcatcher.stop()


def _customer_system_options(command: list[str]) -> dict[str, Any]:
    """The Procfile's options for the customer system, except its fixed port (a free one here)."""
    options: dict[str, Any] = {}
    if "--token" in command:
        options["token"] = command[command.index("--token") + 1]
    if "--slow-seconds" in command:
        options["slow_seconds"] = float(command[command.index("--slow-seconds") + 1])
    return options


@dataclass(frozen=True)
class Operator:
    """An operator of the support company, registered through intake's admin API as the README says."""

    operator_id: str
    email: str
    password: str
    token: str

    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}


@pytest.fixture(scope="package")
def demo_operator(demo_stack: DemoStack) -> Operator:
    """Olga, an admin operator (dashboard sign-in and the services' operator APIs)."""
    admin = {"Authorization": f"Bearer {demo_stack.admin_token}"}
    email, password = "olga@support.example", "a long demo password"
    registered = httpx.put(
        demo_stack.url("intake", "/admin/operators/olga"),
        headers=admin,
        json={"name": "Olga Admin", "email": email, "role": "admin", "password": password},
        timeout=10,
    )
    assert registered.status_code in (200, 201), registered.text
    issued = httpx.post(
        demo_stack.url("intake", "/admin/operators/olga/tokens"), headers=admin, json={"name": "e2e"}, timeout=10
    )
    assert issued.status_code == 201, issued.text
    return Operator("olga", email, password, issued.json()["token"])
