"""Triage reads each reported incident from Kafka and announces its decision, with reasons."""

from __future__ import annotations

import asyncio
from datetime import datetime, timedelta
from typing import Any

from aftercare.events import topics
from aftercare.events.incidents import Channel, IncidentReclassified, IncidentUpdated, Reporter, Severity
from aftercare.events.producer import EventProducer
from aftercare.events.tenants import Priority

from .conftest import TriageUnderTest, publish, report, tenant_event, triage_events
from kafka_helpers import unique_name, wait_until


async def _events_of(
    service: TriageUnderTest, tenant_id: str, event_type: str, incident_id: str
) -> list[dict[str, Any]]:
    return [
        event
        for event in await triage_events(service.infrastructure, tenant_id)
        if event["type"] == event_type and event["incident_id"] == incident_id
    ]


async def _first(service: TriageUnderTest, tenant_id: str, event_type: str, incident_id: str) -> dict[str, Any]:
    async def found() -> list[dict[str, Any]]:
        return await _events_of(service, tenant_id, event_type, incident_id)

    events = await wait_until(found, timeout=120, interval=0.5, message=f"{event_type} for {incident_id}")
    return events[0]


async def test_an_alert_on_a_critical_database_is_p1_with_deadlines_runbook_and_reasons(
    triage_service: TriageUnderTest, producer: EventProducer
) -> None:
    tenant = unique_name("acme")
    await publish(producer, tenant, tenant_event(tenant))
    alert = report(
        "billing-db: too many connections",
        channel=Channel.PAGERDUTY,
        severity=Severity.CRITICAL,
        system="billing-db",
        source="db-01",
    )
    await publish(producer, tenant, alert)

    triaged = (await _first(triage_service, tenant, "incident.triaged", alert.incident_id))["data"]

    assert triaged["priority"] == "P1"
    assert triaged["category"] == "database"
    assert triaged["system"] == "billing-db"
    assert triaged["runbook"] == "restart-service"
    assert triaged["rule"] == "database-connection-trouble"
    reported = alert.reported_at
    assert datetime.fromisoformat(triaged["response_due_at"]) == reported + timedelta(minutes=15)
    assert datetime.fromisoformat(triaged["resolution_due_at"]) == reported + timedelta(minutes=240)
    explanation = triaged["explanation"]
    assert "database-connection-trouble" in explanation
    assert "impact high x urgency high" in explanation
    assert "system criticality critical" in explanation


async def test_a_persons_words_name_the_system_by_alias_despite_typos(
    triage_service: TriageUnderTest, producer: EventProducer
) -> None:
    tenant = unique_name("acme")
    await publish(producer, tenant, tenant_event(tenant))
    email = report(
        "Question about the wiki",
        description="How do I chnage the pasword for the wiki? No rush.",
        channel=Channel.EMAIL,
        severity=Severity.INFO,
        reporter=Reporter(name="Sam", email="sam@example.net"),
    )
    await publish(producer, tenant, email)

    triaged = (await _first(triage_service, tenant, "incident.triaged", email.incident_id))["data"]

    assert triaged["system"] == "wiki"
    assert triaged["category"] == "access"
    # A low-criticality system, but a gold contract: impact medium x urgency low.
    assert triaged["priority"] == "P4"
    assert "gold contract: impact raised to medium" in triaged["explanation"]
    assert triaged["confidence"] is not None


async def test_a_second_alert_on_the_same_system_and_category_is_grouped_under_the_first(
    triage_service: TriageUnderTest, producer: EventProducer
) -> None:
    tenant = unique_name("acme")
    await publish(producer, tenant, tenant_event(tenant))
    first = report("shop-web returns 503, health check failing", system="shop-web", severity=Severity.CRITICAL)
    await publish(producer, tenant, first)
    await _first(triage_service, tenant, "incident.triaged", first.incident_id)
    second = report(
        "shop-web health check failing again",
        system="shop-web",
        severity=Severity.CRITICAL,
        channel=Channel.ALERTMANAGER,
    )
    await publish(producer, tenant, second)

    grouped = (await _first(triage_service, tenant, "incident.grouped", second.incident_id))["data"]
    triaged = (await _first(triage_service, tenant, "incident.triaged", second.incident_id))["data"]

    assert grouped["duplicate_of"] == first.incident_id
    assert grouped["duplicate_of_number"] == first.number
    assert grouped["reason"] == "fingerprint"
    assert triaged["duplicate_of"] == first.incident_id


async def test_near_simultaneous_alerts_on_one_system_and_category_end_under_exactly_one_first_incident(
    triage_service: TriageUnderTest, producer: EventProducer
) -> None:
    # Each alert is its own incident, so its own Kafka key: triage's runner handles them side by
    # side, and each sees "no open incident yet" unless the group is claimed atomically.
    tenant = unique_name("acme")
    await publish(producer, tenant, tenant_event(tenant))
    # The tenant first, so that none of the alerts waits for it (that path is sequential).
    warm_up = report("wiki slow", system="wiki", severity=Severity.WARNING)
    await publish(producer, tenant, warm_up)
    await _first(triage_service, tenant, "incident.triaged", warm_up.incident_id)
    alerts = [
        report(f"shop-web health check failing ({n})", system="shop-web", severity=Severity.CRITICAL) for n in range(12)
    ]
    await asyncio.gather(*(publish(producer, tenant, alert) for alert in alerts))
    ids = {alert.incident_id for alert in alerts}

    async def all_triaged() -> list[dict[str, Any]]:
        events = await triage_events(triage_service.infrastructure, tenant)
        triaged = {e["incident_id"]: e for e in events if e["type"] == "incident.triaged" and e["incident_id"] in ids}
        return list(triaged.values()) if len(triaged) == len(ids) else []

    triaged = await wait_until(all_triaged, timeout=120, interval=0.5, message="all 12 alerts triaged")
    firsts = [event["incident_id"] for event in triaged if event["data"]["duplicate_of"] is None]
    assert len(firsts) == 1, f"{len(firsts)} alerts became a first incident: {firsts}"
    (first,) = firsts
    assert {event["data"]["duplicate_of"] for event in triaged if event["incident_id"] != first} == {first}
    grouped = [
        event
        for event in await triage_events(triage_service.infrastructure, tenant)
        if event["type"] == "incident.grouped" and event["incident_id"] in ids
    ]
    assert sorted(event["incident_id"] for event in grouped) == sorted(ids - {first})
    assert {event["data"]["duplicate_of"] for event in grouped} == {first}


async def test_a_customer_email_about_a_system_with_an_open_alert_joins_it_and_the_customer_is_told(
    triage_service: TriageUnderTest, producer: EventProducer
) -> None:
    tenant = unique_name("acme")
    await publish(producer, tenant, tenant_event(tenant))
    alert = report("billing-db connection refused", system="billing-db", severity=Severity.CRITICAL)
    await publish(producer, tenant, alert)
    await _first(triage_service, tenant, "incident.triaged", alert.incident_id)
    email = report(
        "billing is down!!",
        description="Nobody can create invoices since 10 minutes.",
        channel=Channel.EMAIL,
        reporter=Reporter(name="Kim", email="kim@customer.example"),
    )
    await publish(producer, tenant, email)

    grouped = (await _first(triage_service, tenant, "incident.grouped", email.incident_id))["data"]
    assert grouped["duplicate_of"] == alert.incident_id
    assert grouped["reason"] in {"same_system", "fingerprint"}

    async def told() -> list[dict[str, Any]]:
        return [
            event
            for event in await triage_events(triage_service.infrastructure, tenant, topics.NOTIFICATIONS)
            if event["type"] == "notification.requested" and event["data"]["recipient"] == "kim@customer.example"
        ]

    (notification,) = await wait_until(told, timeout=30, interval=0.5, message="the customer is told")
    assert notification["data"]["template"] == "incident-known"
    assert alert.number in notification["data"]["subject"]


async def test_a_persons_priority_is_kept_when_new_details_retriage_the_incident(
    triage_service: TriageUnderTest, producer: EventProducer
) -> None:
    tenant = unique_name("acme")
    await publish(producer, tenant, tenant_event(tenant))
    incident = report(
        "Wiki page typo", description="cosmetic typo on the start page", system="wiki", severity=Severity.INFO
    )
    # A gold contract raises the wiki's low impact to medium: medium x low is P4.
    await publish(producer, tenant, incident)
    first = (await _first(triage_service, tenant, "incident.triaged", incident.incident_id))["data"]
    assert first["priority"] == "P4"

    await publish(
        producer,
        tenant,
        IncidentReclassified(incident_id=incident.incident_id, number=incident.number, by="dana", priority=Priority.P2),
    )

    async def manual() -> list[dict[str, Any]]:
        events = await _events_of(triage_service, tenant, "incident.triaged", incident.incident_id)
        return [event for event in events if event["data"]["priority"] == "P2"]

    (kept,) = await wait_until(manual, timeout=30, interval=0.5, message="re-triage after the manual choice")
    assert kept["data"]["manual_fields"] == ["priority"]
    assert "set by hand by dana" in kept["data"]["explanation"]

    await publish(
        producer,
        tenant,
        IncidentUpdated(
            incident_id=incident.incident_id,
            number=incident.number,
            channel=Channel.EMAIL,
            kind="comment",
            message="Actually the whole database is down for all users, security breach suspected",
            last_seen_at=incident.reported_at,
        ),
    )

    async def retriaged() -> list[dict[str, Any]]:
        events = await _events_of(triage_service, tenant, "incident.triaged", incident.incident_id)
        return [event for event in events if event["data"]["category"] == "security"]

    (again,) = await wait_until(retriaged, timeout=30, interval=0.5, message="re-triage after new words")
    assert again["data"]["priority"] == "P2"  # the person's choice stands
    assert "Triaged again" in again["data"]["explanation"]
