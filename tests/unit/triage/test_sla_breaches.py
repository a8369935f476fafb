"""SLA breaches: a triaged incident's deadlines are watched; acknowledging or resolving ends the watch."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from prometheus_client import REGISTRY

from aftercare.events.envelope import envelope_for
from aftercare.events.incidents import Channel, IncidentAcknowledged, IncidentReported, IncidentResolved
from aftercare.events.schedule import DueItem
from aftercare.triage.domain.sla import Deadline, deadlines_met_by, deadlines_to_watch, watch_key
from aftercare.triage.service_layer.sla_watch import SLA_BREACH, SlaWatch

NOW = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)


def _triaged(**changes: Any) -> dict[str, Any]:
    incident: dict[str, Any] = {
        "_id": "inc-1",
        "number": "INC-1001",
        "status": "open",
        "duplicate_of": None,
        "decision": {
            "priority": "P2",
            "response_due_at": NOW + timedelta(hours=1),
            "resolution_due_at": NOW + timedelta(hours=8),
        },
    }
    incident.update(changes)
    return incident


def test_an_open_triaged_incident_has_both_deadlines_watched() -> None:
    assert deadlines_to_watch(_triaged()) == [
        (Deadline.RESPONSE, NOW + timedelta(hours=1)),
        (Deadline.RESOLUTION, NOW + timedelta(hours=8)),
    ]


def test_duplicates_resolved_and_untriaged_incidents_are_not_watched() -> None:
    assert deadlines_to_watch(_triaged(duplicate_of="inc-0")) == []
    assert deadlines_to_watch(_triaged(status="resolved")) == []
    assert deadlines_to_watch(_triaged(decision=None)) == []


def test_acknowledging_meets_the_response_and_resolving_meets_both() -> None:
    assert deadlines_met_by("incident.acknowledged") == [Deadline.RESPONSE]
    assert deadlines_met_by("incident.resolved") == [Deadline.RESPONSE, Deadline.RESOLUTION]
    assert deadlines_met_by("incident.closed") == [Deadline.RESPONSE, Deadline.RESOLUTION]
    assert deadlines_met_by("incident.updated") == []


class _Incidents:
    def __init__(self, incident: dict[str, Any]) -> None:
        self.incident = incident

    async def get(self, incident_id: str) -> dict[str, Any] | None:
        return self.incident if incident_id == self.incident["_id"] else None


class _DueTimes:
    def __init__(self) -> None:
        self.items: dict[str, tuple[datetime, str, dict[str, Any]]] = {}

    async def schedule(self, key: str, due_at: datetime, kind: str, payload: dict[str, Any]) -> None:
        self.items[key] = (due_at, kind, payload)

    async def schedule_many(self, items: list[tuple[str, datetime, str, dict[str, Any]]]) -> None:
        for key, due_at, kind, payload in items:
            await self.schedule(key, due_at, kind, payload)

    async def cancel(self, key: str) -> bool:
        return self.items.pop(key, None) is not None

    async def cancel_many(self, keys: list[str]) -> int:
        return sum([await self.cancel(key) for key in keys])


def _breaches(tenant: str, deadline: str) -> float:
    value = REGISTRY.get_sample_value(
        "aftercare_sla_breaches_total", {"tenant": tenant, "priority": "P2", "deadline": deadline}
    )
    return value or 0.0


def _event(data: Any) -> Any:
    return envelope_for(data, source="intake", tenant_id="sla-t", incident_id="inc-1")


async def test_a_deadline_that_passes_unmet_is_counted_and_a_met_one_is_cancelled() -> None:
    incident = _triaged()
    due_times = _DueTimes()
    watch = SlaWatch(_Incidents(incident), lambda: due_times)  # type: ignore[arg-type]
    reported = IncidentReported(
        incident_id="inc-1", number="INC-1001", title="ERP down", channel=Channel.API, reported_at=NOW
    )
    await watch.triaged(_event(reported))
    assert set(due_times.items) == {watch_key("inc-1", Deadline.RESPONSE), watch_key("inc-1", Deadline.RESOLUTION)}
    assert all(kind == SLA_BREACH for _, kind, _ in due_times.items.values())

    await watch.met(_event(IncidentAcknowledged(incident_id="inc-1", number="INC-1001", by="ann", channel=Channel.API)))
    assert set(due_times.items) == {watch_key("inc-1", Deadline.RESOLUTION)}

    before = _breaches("sla-t", "resolution")
    due_at, kind, payload = due_times.items[watch_key("inc-1", Deadline.RESOLUTION)]
    await watch.breached(
        DueItem(key=watch_key("inc-1", Deadline.RESOLUTION), kind=kind, payload=payload, due_at=due_at)
    )
    assert _breaches("sla-t", "resolution") == before + 1

    # Resolved meanwhile (its event not yet handled): not a breach.
    incident["status"] = "resolved"
    await watch.breached(
        DueItem(key=watch_key("inc-1", Deadline.RESOLUTION), kind=kind, payload=payload, due_at=due_at)
    )
    assert _breaches("sla-t", "resolution") == before + 1
    await watch.met(_event(IncidentResolved(incident_id="inc-1", number="INC-1001", by="ann")))
    assert due_times.items == {}
