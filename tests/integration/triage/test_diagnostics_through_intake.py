"""Triage behind intake's public edges, with real intake and triage processes:

* the regular-diagnostics loop: a broken customer system opens an incident at intake (source
  diagnostics) with nobody reporting it, and its repair resolves that incident;
* people and machines on one problem: a monitoring alert through PagerDuty's ``/v2/enqueue`` and
  a customer's email over SMTP about the same system end on one incident, and the customer is
  told the problem is known;
* a priority a person set at intake, kept by triage through a later email reply."""

from __future__ import annotations

import asyncio
import json
import smtplib
from collections.abc import Iterator
from email.message import EmailMessage
from email.utils import make_msgid
from pathlib import Path
from typing import Any

import httpx
import pytest
from intake.conftest import IntakeUnderTest, _tenant_seed, start_intake, stop_intake

from aftercare.events import topics

from .conftest import TriageUnderTest, start_triage, stop_triage, triage_events
from customer_system_process import CustomerSystemUnderTest, customer_system
from kafka_helpers import Infrastructure, read_all, unique_name, wait_until


@pytest.fixture(scope="module")
def system(tmp_path_factory: pytest.TempPathFactory) -> Iterator[CustomerSystemUnderTest]:
    with customer_system(tmp_path_factory.mktemp("customer-loop"), timeout_s=120) as running:
        yield running


@pytest.fixture(scope="module")
def stack(
    infrastructure: Infrastructure, tmp_path_factory: pytest.TempPathFactory, system: CustomerSystemUnderTest
) -> Iterator[tuple[IntakeUnderTest, TriageUnderTest, str]]:
    tenant_id = unique_name("loop")
    entry, seeded = _tenant_seed(tenant_id, "+15550009001")
    profile: dict[str, Any] = entry["profile"]  # type: ignore[assignment]
    profile["systems"] = [
        {
            "name": "shop-web",
            "criticality": "high",
            "diagnostic_target": {"kind": "http", "address": system.health_url, "interval_seconds": 1},
        },
        # What the customer calls it in an email ("billing is down") is an alias.
        {"name": "billing-db", "aliases": ["billing"], "criticality": "critical"},
    ]
    profile["probe_allowlist"] = ["127.0.0.1/32"]
    workdir: Path = tmp_path_factory.mktemp("loop")
    # Generous start-up waits: importing takes over a minute on a loaded machine.
    intake = start_intake(infrastructure, workdir / "intake", seed=[entry], ready_timeout=180)
    try:
        triage = start_triage(infrastructure, workdir / "triage", ready_timeout=180)
    except BaseException:
        stop_intake(intake)
        raise
    intake.tenants[tenant_id] = seeded
    try:
        yield intake, triage, tenant_id
    finally:
        stop_triage(triage)
        stop_intake(intake)


@pytest.mark.timeout(600)
async def test_a_broken_system_becomes_an_incident_at_intake_and_its_repair_resolves_it(
    stack: tuple[IntakeUnderTest, TriageUnderTest, str], system: CustomerSystemUnderTest
) -> None:
    intake, triage, tenant_id = stack
    system.reset()
    system.break_it("soft")

    async def detected() -> list[dict[str, Any]]:
        return [e for e in await triage_events(triage.infrastructure, tenant_id) if e["type"] == "problem.detected"]

    try:
        (problem,) = await wait_until(detected, timeout=90, interval=1, message="problem detected")
        incident_id = problem["data"]["incident_id"]

        async with httpx.AsyncClient(base_url=intake.base_url, timeout=30) as client:

            async def incident() -> dict[str, Any] | None:
                answer = await client.get(f"/v1/incidents/{incident_id}", headers=intake.auth(tenant_id))
                return answer.json() if answer.status_code == 200 else None

            opened = await wait_until(incident, timeout=60, interval=1, message="incident opened at intake")
            assert opened["channel"] == "diagnostic"
            assert opened["source"] == "diagnostics"
            assert opened["system"] == "shop-web"

            system.reset()

            async def resolved() -> dict[str, Any] | None:
                current = await incident()
                return current if current and current["status"] == "resolved" else None

            closed = await wait_until(resolved, timeout=90, interval=1, message="incident resolved by diagnostics")
    finally:
        system.reset()
    assert closed["incident_id"] == incident_id


# Two service start-ups (over a minute each on a loaded machine) count against the test's time.
@pytest.mark.timeout(600)
async def test_an_alert_through_pagerduty_and_a_customer_email_over_smtp_end_on_one_incident(
    stack: tuple[IntakeUnderTest, TriageUnderTest, str],
) -> None:
    intake, triage, tenant_id = stack
    seeded = intake.tenants[tenant_id]
    async with httpx.AsyncClient(base_url=intake.base_url, timeout=30) as client:
        alert = await client.post(
            "/v2/enqueue",
            json={
                "routing_key": seeded.routing_key,
                "event_action": "trigger",
                "dedup_key": unique_name("billing-db/connections"),
                "payload": {
                    "summary": "billing-db: connection refused on port 5432",
                    "source": "db-01.acme.example",
                    "severity": "critical",
                },
            },
        )
        assert alert.status_code == 202, alert.text
        alert_id = alert.headers["X-Aftercare-Incident-Id"]

        async def triaged() -> list[dict[str, Any]]:
            return [
                e
                for e in await triage_events(triage.infrastructure, tenant_id)
                if e["type"] == "incident.triaged" and e["incident_id"] == alert_id
            ]

        (decision,) = await wait_until(triaged, timeout=120, interval=0.5, message="the alert triaged")
        assert decision["data"]["system"] == "billing-db"

        # A few minutes later in real life; seconds here, well inside the window.
        message = EmailMessage()
        message["From"] = "Kim Lee <kim@customer.example>"
        message["To"] = seeded.inbound_email
        message["Subject"] = "billing is down!!"
        message["Message-ID"] = make_msgid(domain="customer.example")
        message.set_content("Nobody here can create invoices since ten minutes. Please help.")

        def send() -> None:
            with smtplib.SMTP(intake.smtp_host, intake.smtp_port, timeout=30) as smtp:
                smtp.send_message(message)

        await asyncio.to_thread(send)

        async def emailed() -> list[str]:
            records = await read_all(intake.infrastructure.bootstrap_servers, topics.INCIDENTS)
            return [
                event["incident_id"]
                for event in map(json.loads, (r.value for r in records))
                if event["type"] == "incident.reported"
                and event["tenant_id"] == tenant_id
                and event["data"]["channel"] == "email"
            ]

        (email_id,) = await wait_until(emailed, timeout=60, interval=0.5, message="the email became an incident")

        async def grouped() -> list[dict[str, Any]]:
            return [
                e
                for e in await triage_events(triage.infrastructure, tenant_id)
                if e["type"] == "incident.grouped" and e["incident_id"] == email_id
            ]

        (joined,) = await wait_until(grouped, timeout=120, interval=0.5, message="the email joined the alert")
        assert joined["data"]["duplicate_of"] == alert_id
        assert joined["data"]["reason"] in {"same_system", "fingerprint"}

        async def told() -> list[dict[str, Any]]:
            return [
                e
                for e in await triage_events(triage.infrastructure, tenant_id, topics.NOTIFICATIONS)
                if e["type"] == "notification.requested"
                and e["data"]["recipient"] == "kim@customer.example"
                and e["data"]["template"] == "incident-known"  # intake also acknowledges the email itself
            ]

        (notice,) = await wait_until(told, timeout=60, interval=0.5, message="the customer is told it is known")
        assert decision["data"]["number"] in notice["data"]["subject"]

        # What the customer and the operators see at intake: one problem, the email linked to it.
        async def linked() -> dict[str, Any] | None:
            answer = await client.get(f"/v1/incidents/{email_id}", headers=intake.auth(tenant_id))
            body = answer.json() if answer.status_code == 200 else {}
            return body if body.get("duplicate_of") else None

        email_incident = await wait_until(linked, timeout=60, interval=0.5, message="intake links the email")
        assert email_incident["duplicate_of"] == alert_id
        first = (await client.get(f"/v1/incidents/{alert_id}", headers=intake.auth(tenant_id))).json()
        assert first["duplicate_count"] == 1


@pytest.mark.timeout(600)
async def test_a_priority_set_by_hand_at_intake_survives_triage_of_a_later_email_reply(
    stack: tuple[IntakeUnderTest, TriageUnderTest, str],
) -> None:
    """Issue 9: an incident a person changed by hand is never re-triaged over that choice.

    Through the public edges: reported through intake's API, triaged by the real triage, the
    priority set by an operator at intake, then a customer's email reply (IncidentUpdated) that
    makes triage decide again: the category follows the new words, the priority stays the person's.
    """
    intake, triage, tenant_id = stack
    async with httpx.AsyncClient(base_url=intake.base_url, timeout=30) as client:
        reported = await client.post(
            "/v1/incidents",
            headers=intake.auth(tenant_id),
            json={"title": f"Invoices printed twice {unique_name('inv')}", "description": "cosmetic, no rush"},
        )
        assert reported.status_code == 202, reported.text
        incident_id, number = reported.json()["incident_id"], reported.json()["number"]

        async def incident() -> dict[str, Any]:
            answer = await client.get(f"/v1/incidents/{incident_id}", headers=intake.auth(tenant_id))
            assert answer.status_code == 200, answer.text
            return dict(answer.json())

        async def triaged() -> dict[str, Any] | None:
            current = await incident()
            return current if current["priority"] else None

        first = await wait_until(triaged, timeout=120, interval=1, message="triaged at intake")
        chosen = "P1" if first["priority"] != "P1" else "P2"

        operator_id = f"responder-{unique_name('op')}"
        registered = await client.put(
            f"/admin/operators/{operator_id}",
            json={"name": "Dana Responder", "email": f"{operator_id}@support.example", "role": "responder"},
            headers=intake.admin(),
        )
        assert registered.status_code == 201, registered.text
        issued = await client.post(
            f"/admin/operators/{operator_id}/tokens", json={"name": "tests"}, headers=intake.admin()
        )
        token = issued.json()["token"]
        answer = await client.post(
            f"/v1/incidents/{incident_id}/reclassify",
            json={"priority": chosen, "reason": "the customer's month-end run"},
            headers={"Authorization": f"Bearer {token}"},
        )
        assert answer.status_code == 200, answer.text

        async def kept_by_triage() -> list[dict[str, Any]]:
            return [
                e
                for e in await triage_events(triage.infrastructure, tenant_id)
                if e["type"] == "incident.triaged"
                and e["data"]["incident_id"] == incident_id
                and e["data"]["manual_fields"] == ["priority"]
            ]

        await wait_until(kept_by_triage, timeout=120, interval=1, message="triage heard of the person's choice")

        reply = EmailMessage()
        reply["From"] = "Ann Customer <ann@customer.example>"
        reply["To"] = intake.tenants[tenant_id].inbound_email
        reply["Subject"] = f"Re: [{number}] Invoices printed twice"
        reply["Message-ID"] = make_msgid(domain="customer.example")
        reply.set_content("Actually the whole database is down for all users, security breach suspected")

        def send() -> None:
            with smtplib.SMTP(intake.smtp_host, intake.smtp_port, timeout=60) as smtp:
                smtp.send_message(reply)

        await asyncio.to_thread(send)

        async def retriaged() -> dict[str, Any] | None:
            current = await incident()
            return current if current["category"] == "security" else None

        after = await wait_until(retriaged, timeout=120, interval=1, message="re-triaged after the reply")
    assert after["priority"] == chosen
    assert after["manual_fields"] == ["priority"]
    assert [entry["kind"] for entry in after["timeline"]].count("reclassified") == 1
