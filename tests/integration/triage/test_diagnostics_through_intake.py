"""The regular-diagnostics loop through intake: a broken customer system opens an incident at
intake (source diagnostics) with nobody reporting it, and its repair resolves that incident. And a
priority a person set at intake, kept by triage through a later email reply."""

from __future__ import annotations

import asyncio
import smtplib
from collections.abc import Iterator
from email.message import EmailMessage
from email.utils import make_msgid
from pathlib import Path
from typing import Any

import httpx
import pytest
from intake.conftest import IntakeUnderTest, _tenant_seed, start_intake, stop_intake

from .conftest import TriageUnderTest, start_triage, stop_triage, triage_events
from customer_system_process import CustomerSystemUnderTest, customer_system
from kafka_helpers import Infrastructure, unique_name, wait_until


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
        }
    ]
    profile["probe_allowlist"] = ["127.0.0.1/32"]
    workdir: Path = tmp_path_factory.mktemp("loop")
    intake = start_intake(infrastructure, workdir / "intake", seed=[entry])
    intake.tenants[tenant_id] = seeded
    try:
        triage = start_triage(infrastructure, workdir / "triage")
        try:
            yield intake, triage, tenant_id
        finally:
            stop_triage(triage)
    finally:
        stop_intake(intake)


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
