"""Intake's use cases on the in-memory bus and store (aftercare.events.testing): milliseconds per rule.

The same use cases are proven on the real broker and store by tests/integration/intake/.
"""

from __future__ import annotations

from typing import Any

import pytest

from aftercare.events.envelope import Envelope, envelope_for
from aftercare.events.incidents import Channel, Reporter
from aftercare.events.incidents import IncidentStatus as Status
from aftercare.events.remediation import RemediationSucceeded
from aftercare.events.testing import MemoryBus, MemoryDatabase
from aftercare.events.triage import IncidentTriaged, ProblemCleared
from aftercare.intake import clock
from aftercare.intake.adapters.idempotency_keys import IdempotencyKeys
from aftercare.intake.adapters.incident_store import IncidentStore
from aftercare.intake.adapters.phone_calls import PhoneCalls
from aftercare.intake.domain.incident import IncidentReport
from aftercare.intake.domain.lifecycle import TransitionRefused
from aftercare.intake.domain.phone_call import TwilioCallback
from aftercare.intake.domain.public_timeline import public_timeline
from aftercare.intake.entrypoints import consumer
from aftercare.intake.service_layer import move_incident
from aftercare.intake.service_layer.report_from_api import IdempotencyConflict, report_from_api
from aftercare.intake.service_layer.report_incident import report
from aftercare.intake.service_layer.submit_web_form import FormAlreadyUsed, submit_web_form
from aftercare.intake.service_layer.take_phone_call import take_call


@pytest.fixture
def database() -> MemoryDatabase:
    return MemoryDatabase()


@pytest.fixture
def bus() -> MemoryBus:
    return MemoryBus(group_id="intake")


@pytest.fixture
def store(database: MemoryDatabase, bus: MemoryBus) -> IncidentStore:
    incidents = IncidentStore(database, bus)  # type: ignore[arg-type]
    bus.subscribe(consumer.handlers(incidents))
    return incidents


def alert(**overrides: Any) -> IncidentReport:
    fields: dict[str, Any] = {"title": "Disk full on db-1", "channel": Channel.API, "dedup_key": "disk-db-1"}
    return IncidentReport.model_validate(fields | overrides)


async def test_a_report_opens_an_incident_and_publishes_it_from_the_outbox(
    store: IncidentStore, bus: MemoryBus
) -> None:
    outcome = await report(store, "acme", alert())
    assert outcome.created and outcome.incident.number == "INC-1001"
    assert bus.published_types() == ["incident.reported"]
    stored = await store.collection.find_one({"_id": outcome.incident.incident_id})
    assert stored is not None and stored["outbox"] == [] and stored["outbox_pending"] is False


async def test_the_same_dedup_key_counts_occurrences_until_resolved(store: IncidentStore, bus: MemoryBus) -> None:
    first = await report(store, "acme", alert())
    again = await report(store, "acme", alert())
    assert not again.created and again.incident.incident_id == first.incident.incident_id
    assert again.incident.occurrence_count == 2
    resolved = await move_incident.resolve_open(
        store, "acme", "disk-db-1", Status.RESOLVED, by="alertmanager", channel=Channel.ALERTMANAGER
    )
    assert resolved is not None and resolved.incident.status == Status.RESOLVED
    after = await report(store, "acme", alert())
    assert after.created and after.incident.number == "INC-1002"
    assert (
        await move_incident.resolve_open(store, "globex", "disk-db-1", Status.RESOLVED, by="x", channel=Channel.API)
        is None
    )  # another tenant's key space
    assert bus.published_types() == [
        "incident.reported",
        "incident.updated",
        "incident.resolved",
        "incident.reported",
    ]


async def test_reopening_claims_the_dedup_key_back(store: IncidentStore) -> None:
    first = await report(store, "acme", alert())
    incident_id = first.incident.incident_id
    await move_incident.move(store, "acme", incident_id, Status.RESOLVED, by="Sam")
    await move_incident.move(store, "acme", incident_id, Status.REOPENED, by="Ada", note="it is back")
    again = await report(store, "acme", alert())
    assert again.incident.incident_id == incident_id and again.incident.occurrence_count == 2


async def test_a_closed_incident_cannot_be_moved_and_says_why(store: IncidentStore) -> None:
    incident_id = (await report(store, "acme", alert())).incident.incident_id
    await move_incident.move(store, "acme", incident_id, Status.RESOLVED, by="Sam")
    await move_incident.move(store, "acme", incident_id, Status.CLOSED, by="Sam")
    with pytest.raises(TransitionRefused, match="closed"):
        await move_incident.move(store, "acme", incident_id, Status.ACKNOWLEDGED, by="Sam")


def triaged(incident_id: str, tenant: str = "acme") -> Envelope[IncidentTriaged]:
    return envelope_for(
        IncidentTriaged(incident_id=incident_id, number="INC-1001", priority="P2", category="storage"),
        source="triage",
        tenant_id=tenant,
        incident_id=incident_id,
    )


async def test_triage_moves_the_incident_once_however_often_it_is_delivered(
    store: IncidentStore, bus: MemoryBus
) -> None:
    incident_id = (await report(store, "acme", alert())).incident.incident_id
    event = triaged(incident_id)
    assert await bus.deliver(event) == 1
    assert await bus.deliver(event) == 0  # the runner's processed-event log
    incident = await store.get("acme", incident_id)
    assert incident.status == Status.TRIAGED and incident.priority is not None
    assert [entry.kind for entry in incident.timeline] == ["reported", "triaged"]


async def test_a_redelivery_past_the_processed_log_is_stopped_by_the_incidents_applied_events(
    store: IncidentStore, bus: MemoryBus
) -> None:
    incident_id = (await report(store, "acme", alert())).incident.incident_id
    event = triaged(incident_id)
    await bus.deliver(event)
    other_group = MemoryBus(consumer.handlers(store), group_id="intake")  # a lost processed log
    await other_group.deliver(event)
    incident = await store.get("acme", incident_id)
    assert [entry.kind for entry in incident.timeline] == ["reported", "triaged"]


async def test_an_event_about_another_tenants_incident_changes_nothing(store: IncidentStore, bus: MemoryBus) -> None:
    incident_id = (await report(store, "acme", alert())).incident.incident_id
    await bus.deliver(triaged(incident_id, tenant="globex"))
    assert (await store.get("acme", incident_id)).status == Status.REPORTED


async def test_a_successful_remediation_resolves_and_announces_it_and_frees_the_key(
    store: IncidentStore, bus: MemoryBus
) -> None:
    incident_id = (await report(store, "acme", alert())).incident.incident_id
    fixed = envelope_for(
        RemediationSucceeded(incident_id=incident_id, run_id="r1", runbook="clean-disk", verification="ok"),
        source="remediation",
        tenant_id="acme",
        incident_id=incident_id,
    )
    await bus.deliver(fixed)
    assert bus.published[-1].type == "incident.resolved" and bus.published[-1].causation_id == fixed.id
    assert (await report(store, "acme", alert())).created


def cleared(incident_id: str) -> Envelope[ProblemCleared]:
    return envelope_for(
        ProblemCleared(
            incident_id=incident_id,
            system="billing-api",
            kind="down",
            target="http://127.0.0.1:8100/health",
            detail="200 in 12 ms",
            cleared_at=clock.now(),
        ),
        source="triage",
        tenant_id="acme",
        incident_id=incident_id,
    )


async def test_diagnostics_clearing_a_problem_resolves_the_incident_once(store: IncidentStore, bus: MemoryBus) -> None:
    incident_id = (await report(store, "acme", alert())).incident.incident_id
    await bus.deliver(cleared(incident_id))
    incident = await store.get("acme", incident_id)
    assert incident.status == Status.RESOLVED
    assert [entry.kind for entry in incident.timeline] == ["reported", "resolved"]
    assert bus.published_types().count("incident.resolved") == 1


async def test_diagnostics_clearing_a_problem_remediation_resolved_is_only_noted(
    store: IncidentStore, bus: MemoryBus
) -> None:
    # The demo's loop: remediation's verification resolves it, the next probe then sees the
    # system healthy. The customer's timeline must say "resolved" once, not twice.
    incident_id = (await report(store, "acme", alert())).incident.incident_id
    await bus.deliver(
        envelope_for(
            RemediationSucceeded(incident_id=incident_id, run_id="r1", runbook="restart", verification="ok"),
            source="remediation",
            tenant_id="acme",
            incident_id=incident_id,
        )
    )
    await bus.deliver(cleared(incident_id))
    incident = await store.get("acme", incident_id)
    assert [entry.kind for entry in incident.timeline] == ["reported", "resolved", "diagnosis-cleared"]
    assert [entry.label for entry in public_timeline(incident.timeline)].count("The problem was resolved") == 1
    assert bus.published_types().count("incident.resolved") == 1


async def test_an_idempotency_key_gives_one_incident_and_refuses_another_body(
    store: IncidentStore, database: MemoryDatabase, bus: MemoryBus
) -> None:
    keys = IdempotencyKeys(database)  # type: ignore[arg-type]
    first = await report_from_api(store, keys, "acme", alert(), idempotency_key="k1", body_digest="d1")
    retry = await report_from_api(store, keys, "acme", alert(), idempotency_key="k1", body_digest="d1")
    assert retry.incident.incident_id == first.incident.incident_id and retry.incident.occurrence_count == 1
    with pytest.raises(IdempotencyConflict):
        await report_from_api(store, keys, "acme", alert(), idempotency_key="k1", body_digest="d2")
    assert bus.published_types() == ["incident.reported"]


def call(**fields: str) -> TwilioCallback:
    return TwilioCallback.model_validate({"CallSid": "CA1", "From": "+15551234567", "To": "+15550000000"} | fields)


async def test_a_call_is_retitled_by_its_transcript_unless_a_person_changed_the_title(
    store: IncidentStore, database: MemoryDatabase
) -> None:
    calls = PhoneCalls(database["phone_calls"])
    opened = await take_call(store, calls, "acme", call())
    assert opened.incident.title == "Voice message from +15551234567"
    transcribed = await take_call(
        store, calls, "acme", call(TranscriptionText="The VPN is down. Nobody can work.", TranscriptionSid="TR1")
    )
    assert transcribed.incident.title == "The VPN is down."

    second = await take_call(store, calls, "acme", call(CallSid="CA2", From="+15559999999"))
    await store.collection.update_one({"_id": second.incident.incident_id}, {"$set": {"title": "VPN (known)"}})
    later = await take_call(
        store, calls, "acme", call(CallSid="CA2", From="+15559999999", TranscriptionText="VPN again.")
    )
    assert later.incident.title == "VPN (known)"


async def test_a_form_token_used_for_another_report_is_refused_not_merged(store: IncidentStore) -> None:
    token = "a" * 32
    form = IncidentReport(title="Printer jam", channel=Channel.WEB, reporter=Reporter(name="Ada", email="a@x.io"))
    first = await submit_web_form(store, "acme", token, form)
    assert (await submit_web_form(store, "acme", token, form)).incident.incident_id == first.incident.incident_id
    with pytest.raises(FormAlreadyUsed) as used:
        await submit_web_form(store, "acme", token, form.model_copy(update={"title": "Scanner broken"}))
    assert used.value.incident.number == first.incident.number


async def test_alertmanager_groups_are_applied_in_bulk_and_a_repeated_firing_is_counted_once(
    store: IncidentStore, bus: MemoryBus
) -> None:
    from aftercare.intake.domain.alertmanager import WebhookMessage
    from aftercare.intake.service_layer.receive_alerts import receive_alerts

    def firing(fingerprint: str, starts_at: str = "2026-11-30T10:00:00Z", **labels: str) -> dict[str, Any]:
        return {
            "status": "firing",
            "labels": {"alertname": "Down"} | labels,
            "startsAt": starts_at,
            "fingerprint": fingerprint,
        }

    def message(*alerts: dict[str, Any]) -> WebhookMessage:
        return WebhookMessage.model_validate({"version": "4", "status": "firing", "alerts": list(alerts)})

    first = await receive_alerts(store, "acme", message(*(firing(f"fp{i}") for i in range(50)), firing("fp0")))
    assert [r.outcome for r in first] == ["opened"] * 50 + ["repeated"]

    # The HA pair's copy; then fp1 fired again (new start); a label over its limit is refused alone.
    again = await receive_alerts(
        store,
        "acme",
        message(firing("fp0"), firing("fp1", "2026-11-30T11:00:00Z"), firing("fp2", pod="p" * 5000)),
    )
    assert [r.outcome for r in again] == ["repeated", "updated", "refused"]
    assert [p.field for p in again[2].problems] == ["alerts[2].labels.pod"]
    counts = {r.fingerprint: (await store.get("acme", r.incident_id or "")).occurrence_count for r in first[:2]}
    assert counts == {"fp0": 1, "fp1": 2}
    assert bus.published_types().count("incident.reported") == 50
    assert bus.published_types().count("incident.updated") == 1


async def test_a_change_is_noted_on_the_open_incidents_of_its_source_and_kept(
    store: IncidentStore, database: MemoryDatabase
) -> None:
    from aftercare.intake.adapters.change_log import ChangeLog
    from aftercare.intake.domain import pagerduty
    from aftercare.intake.service_layer.record_change import record_change

    opened = await report(store, "acme", alert(source="db-1"))
    await report(store, "acme", alert(source="db-2", dedup_key="other"))
    event = pagerduty.read_change_event(
        {"routing_key": "R" * 32, "payload": {"summary": "Upgraded postgres", "source": "db-1"}},
        routing_key_registered=True,
    )

    recorded = await record_change(store, ChangeLog(database), "acme", event, routing_key_id="k1")  # type: ignore[arg-type]

    assert recorded.incident_ids == [opened.incident.incident_id]
    timeline = (await store.get("acme", opened.incident.incident_id)).timeline
    assert timeline[-1].kind == "change" and "Upgraded postgres" in timeline[-1].summary
    kept = await ChangeLog(database).recent("acme", limit=5)  # type: ignore[arg-type]
    assert [change["summary"] for change in kept] == ["Upgraded postgres"]
