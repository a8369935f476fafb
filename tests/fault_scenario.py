"""A steady load of incidents while each part of the system is killed (SIGKILL) and started again.

Used by ``tests/e2e/test_faults_whole_stack.py`` (a bounded run in the suite) and by
``bench/faults_at_load.py`` (the issue's 2,000 incidents, run by hand).

What a customer does here, through public edges only:
* reports incidents over intake's API at a steady rate, retrying with the same Idempotency-Key
  until a 202 (intake, Kafka or the store may be down at that moment: that is the point);
* every third report is a failing health check on one of its systems: triage names the
  restart-service runbook, remediation calls the customer system's admin endpoint, verifies and
  resolves; the others are questions the customer resolves itself a few seconds later (API).

Afterwards (``FaultOutcome``): the final status of every accepted incident, the customer system's
fix calls per incident, and the "Resolved" emails per (contact, incident) at the mail catcher.
An incident whose run escalated (a kill in the middle of the not-safe-to-repeat step: remediation
refuses to call it again) is resolved by an operator through the API, as a person would; the
count of those is reported.
"""

from __future__ import annotations

import asyncio
import itertools
import secrets
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import httpx

from aftercare_stack import AftercareStack, LoadTenant

FAULTS = ("intake", "triage", "remediation", "notifier", "kafka", "store")
FINAL_STATUSES = ("resolved", "closed")


@dataclass
class Reported:
    tenant: LoadTenant
    incident_id: str
    number: str
    needs_remediation: bool
    accepted_at: float
    attempts: int


@dataclass
class FaultOutcome:
    reported: list[Reported] = field(default_factory=list)
    refused_attempts: int = 0  # requests answered 5xx or not at all while a part was down
    faults: list[tuple[str, float]] = field(default_factory=list)  # (part, seconds until all ready again)
    statuses: dict[str, str] = field(default_factory=dict)
    escalated_then_resolved_by_operator: list[str] = field(default_factory=list)
    restart_calls: dict[str, int] = field(default_factory=dict)
    resolved_mails: Counter[tuple[str, str]] = field(default_factory=Counter)
    seconds: float = 0.0

    def summary(self) -> str:
        remediation = sum(1 for r in self.reported if r.needs_remediation)
        resolved = sum(1 for s in self.statuses.values() if s in FINAL_STATUSES)
        expected = {(r.tenant.contact_email, r.number) for r in self.reported}
        exactly_one = sum(1 for key in expected if self.resolved_mails.get(key, 0) == 1)
        repeated = {k: n for k, n in self.restart_calls.items() if n > 1}
        return (
            f"incidents accepted (202): {len(self.reported)} ({remediation} needing remediation), "
            f"refused/unanswered attempts retried: {self.refused_attempts}\n"
            f"faults (SIGKILL, restart, seconds until all four ready): "
            + ", ".join(f"{part} {seconds:.0f}s" for part, seconds in self.faults)
            + "\n"
            f"final state resolved: {resolved}/{len(self.reported)}; runs escalated and resolved by an operator: "
            f"{len(self.escalated_then_resolved_by_operator)}\n"
            f"not-safe-to-repeat restart calls: {sum(self.restart_calls.values())} over "
            f"{len(self.restart_calls)} incidents, incidents called more than once: {len(repeated)}\n"
            f"'Resolved' emails: {sum(self.resolved_mails.values())} for {len(expected)} incidents, exactly one: "
            f"{exactly_one}\n"
            f"wall time {self.seconds:.0f} s"
        )


async def _report(
    client: httpx.AsyncClient, stack: AftercareStack, tenant: LoadTenant, body: dict[str, Any], outcome: FaultOutcome
) -> tuple[str, str, int]:
    """Report until intake answers 202; the same Idempotency-Key makes every retry the same report."""
    key = secrets.token_hex(12)
    headers = {"Authorization": f"Bearer {tenant.api_key}", "Idempotency-Key": key}
    for attempt in itertools.count(1):
        try:
            answer = await client.post(stack.url("intake", "/v1/incidents"), json=body, headers=headers)
            if answer.status_code == 202:
                data = answer.json()
                return data["incident_id"], data["number"], attempt
            if answer.status_code < 500 and answer.status_code != 429:
                raise AssertionError(f"intake refused a report: {answer.status_code} {answer.text}")
        except httpx.TransportError:
            pass
        outcome.refused_attempts += 1
        await asyncio.sleep(min(0.2 * attempt, 2.0))
    raise AssertionError("unreachable")


async def _resolve(
    client: httpx.AsyncClient, stack: AftercareStack, tenant: LoadTenant, incident_id: str, by: str, deadline: float
) -> None:
    """Resolve through the API, retrying while intake is down; 409 when it is resolved already."""
    headers = {"Authorization": f"Bearer {tenant.api_key}"}
    while time.monotonic() < deadline:
        try:
            answer = await client.post(
                stack.url("intake", f"/v1/incidents/{incident_id}/resolve"),
                json={"by": by, "resolution": "solved on our side"},
                headers=headers,
            )
            if answer.status_code in (200, 409):
                return
        except httpx.TransportError:
            pass
        await asyncio.sleep(1.0)
    raise AssertionError(f"could not resolve {incident_id} through intake before the deadline")


async def _statuses(client: httpx.AsyncClient, stack: AftercareStack) -> dict[str, str]:
    statuses: dict[str, str] = {}
    for tenant in stack.tenants:
        headers = {"Authorization": f"Bearer {tenant.api_key}"}
        offset = 0
        while True:
            page = await client.get(
                stack.url("intake", "/v1/incidents"), params={"limit": 200, "offset": offset}, headers=headers
            )
            page.raise_for_status()
            items = page.json()["items"]
            statuses |= {item["incident_id"]: item["status"] for item in items}
            offset += len(items)
            if len(items) < 200:
                break
    return statuses


def _fault(stack: AftercareStack, part: str) -> float:
    """Kill ``part`` with SIGKILL, start it again on the same data; seconds until all four are ready."""
    began = time.monotonic()
    if part == "kafka":
        stack.kill_kafka()
        time.sleep(1.0)
        stack.restart_kafka()
    elif part == "store":
        stack.kill_store()
        time.sleep(1.0)
        stack.restart_store()
    else:
        stack.kill_service(part)
        time.sleep(1.0)
        stack.start_service(part)
    stack.wait_ready(timeout_s=900)
    return time.monotonic() - began


async def run_faults_under_load(
    stack: AftercareStack,
    *,
    incidents: int,
    rate_per_s: float,
    faults: tuple[str, ...] = FAULTS,
    settle_s: float = 3.0,
    finish_timeout_s: float = 600.0,
    resolve_after_s: float = 5.0,
    max_incidents: int | None = None,
) -> FaultOutcome:
    """Report ``incidents`` at ``rate_per_s`` while killing each of ``faults`` in turn.

    The faults start once a tenth of the load is in and follow each other as soon as everything is
    ready again (plus ``settle_s``); the load keeps going until both the count is reached and the
    last fault is over."""
    outcome = FaultOutcome()
    max_incidents = max_incidents or 3 * incidents
    started = time.monotonic()
    systems = {tenant.tenant_id: iter(tenant.systems) for tenant in stack.tenants}
    tenants = itertools.cycle(stack.tenants)
    faults_done = asyncio.Event()
    load_under_way = asyncio.Event()  # faults begin once a tenth of the load is accepted
    customer_resolutions: list[asyncio.Task[None]] = []

    # At most this many reports and resolutions in flight: beyond the connection pool's size,
    # httpcore re-scans its whole queue for every request (quadratic), and at 2,000 incidents a
    # starved client spent an hour there while intake sat idle.
    in_flight = asyncio.Semaphore(32)

    async with httpx.AsyncClient(timeout=15, limits=httpx.Limits(max_connections=48)) as client:

        async def one(sequence: int, tenant: LoadTenant) -> None:
            # A tenant whose systems are used up reports a question instead (one run per system).
            system = next(systems[tenant.tenant_id], None) if sequence % 3 == 0 else None
            needs_remediation = system is not None
            if system is not None:
                body = {
                    "title": f"health check failing on {system}: 503 service unavailable",
                    "system": system,
                    "severity": "critical",
                }
            else:
                body = {
                    "title": f"Question {sequence}: how do we export last month's invoices as CSV?",
                    "severity": "info",
                }
            async with in_flight:
                incident_id, number, attempts = await _report(client, stack, tenant, body, outcome)
            accepted = Reported(tenant, incident_id, number, needs_remediation, time.monotonic(), attempts)
            outcome.reported.append(accepted)
            if len(outcome.reported) >= max(1, incidents // 10):
                load_under_way.set()
            if not needs_remediation:
                await asyncio.sleep(resolve_after_s)
                async with in_flight:
                    await _resolve(client, stack, tenant, incident_id, tenant.contact_email, time.monotonic() + 600)

        async def load() -> None:
            sequence = 0
            next_at = time.monotonic()
            # Steady until the last fault is over (at least ``incidents``, at most ``max_incidents``).
            while sequence < incidents or (not faults_done.is_set() and sequence < max_incidents):
                sequence += 1
                customer_resolutions.append(asyncio.create_task(one(sequence, next(tenants))))
                next_at += 1.0 / rate_per_s
                await asyncio.sleep(max(0.0, next_at - time.monotonic()))

        async def inject() -> None:
            await load_under_way.wait()
            for part in faults:
                seconds = await asyncio.to_thread(_fault, stack, part)
                outcome.faults.append((part, seconds))
                await asyncio.sleep(settle_s)
            faults_done.set()

        await asyncio.gather(load(), inject())
        await asyncio.gather(*customer_resolutions)

        # Every accepted incident must end resolved; a run that escalated waits for a person.
        deadline = time.monotonic() + finish_timeout_s
        wanted = {r.incident_id: r for r in outcome.reported}
        while True:
            outcome.statuses = {k: v for k, v in (await _statuses(client, stack)).items() if k in wanted}
            escalated = [i for i, s in outcome.statuses.items() if s == "escalated"]
            for incident_id in escalated:
                if incident_id not in outcome.escalated_then_resolved_by_operator:
                    outcome.escalated_then_resolved_by_operator.append(incident_id)
                    tenant = wanted[incident_id].tenant
                    await _resolve(client, stack, tenant, incident_id, "operator@aftercare.example", deadline)
            if all(outcome.statuses.get(i) in FINAL_STATUSES for i in wanted) or time.monotonic() > deadline:
                break
            await asyncio.sleep(2.0)

        # Then every contact must have its "Resolved" email; wait for them, then for stragglers.
        expected = {(r.tenant.contact_email, r.number) for r in outcome.reported}
        while time.monotonic() < deadline:
            outcome.resolved_mails = await asyncio.to_thread(stack.resolved_mails_by_incident)
            if expected <= set(outcome.resolved_mails):
                break
            await asyncio.sleep(2.0)
        # A second copy would come from a redelivery or a resend; give one a fair chance to show.
        await asyncio.sleep(10.0)
        outcome.resolved_mails = await asyncio.to_thread(stack.resolved_mails_by_incident)
        calls = stack.customer.calls().get("calls_by_incident", {})
        ours = {r.incident_id for r in outcome.reported}
        outcome.restart_calls = {i: n for i, n in calls.get("restart-service", {}).items() if i in ours}
    outcome.seconds = time.monotonic() - started
    return outcome
