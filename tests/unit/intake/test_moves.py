"""Status moves by a person and by another service's event (domain/moves.py): pure."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from aftercare.events.envelope import Envelope, envelope_for
from aftercare.events.incidents import Channel, IncidentResolved
from aftercare.events.incidents import IncidentStatus as Status
from aftercare.events.triage import IncidentTriaged
from aftercare.intake.domain import moves
from aftercare.intake.domain.lifecycle import TransitionRefused

NOW = datetime(2026, 3, 1, 9, 30, tzinfo=UTC)


def state(status: Status, dedup_key: str | None = "disk-db-1") -> moves.IncidentState:
    return moves.IncidentState("inc-1", "acme", "INC-1001", status, dedup_key)


def test_acknowledging_moves_from_the_status_it_saw_and_announces_it() -> None:
    change = moves.move_by_person(state(Status.REPORTED), Status.ACKNOWLEDGED, by="Sam", channel=Channel.API, now=NOW)
    assert change is not None
    assert change.set_fields == {"status": "acknowledged", "updated_at": NOW}
    assert change.expect_status == Status.REPORTED
    assert change.timeline is not None and change.timeline.summary == "Acknowledged by Sam"
    assert change.events[0].data.TYPE == "incident.acknowledged"


def test_asking_again_for_a_move_already_made_changes_nothing() -> None:
    assert moves.move_by_person(state(Status.ACKNOWLEDGED), Status.ACKNOWLEDGED, by="Sam", now=NOW) is None
    assert moves.move_by_person(state(Status.CLOSED), Status.RESOLVED, by="Sam", now=NOW) is None
    assert moves.move_by_person(state(Status.CLOSED), Status.CLOSED, by="Sam", now=NOW) is None


def test_resolving_releases_the_dedup_key_and_reopening_claims_it_back() -> None:
    resolved = moves.move_by_person(state(Status.TRIAGED), Status.RESOLVED, by="Sam", note="disk cleaned", now=NOW)
    assert resolved is not None
    assert resolved.release_dedup_key == "disk-db-1" and resolved.set_fields["resolved_at"] == NOW
    assert resolved.timeline is not None and resolved.timeline.summary == "Resolved by Sam: disk cleaned"
    reopened = moves.move_by_person(state(Status.RESOLVED), Status.REOPENED, by="Ada", note="back", now=NOW)
    assert reopened is not None and reopened.claim_dedup_key is not None
    assert reopened.claim_dedup_key.dedup_key == "disk-db-1" and reopened.claim_dedup_key.replace


def test_a_move_the_lifecycle_forbids_is_refused_saying_what_is_possible() -> None:
    with pytest.raises(TransitionRefused, match="from closed it can become: nothing"):
        moves.move_by_person(state(Status.CLOSED), Status.REOPENED, by="Ada", now=NOW)


def triaged(tenant: str = "acme") -> Envelope[IncidentTriaged]:
    return envelope_for(
        IncidentTriaged(incident_id="inc-1", number="INC-1001", priority="P2", category="storage"),
        source="triage",
        tenant_id=tenant,
        incident_id="inc-1",
    )


def test_an_event_moves_forward_records_itself_and_is_applied_once() -> None:
    cause = triaged()
    change = moves.move_by_event(
        state(Status.REPORTED), cause, proposed=Status.TRIAGED, kind="triaged", summary="P2", now=NOW
    )
    assert change is not None
    assert change.set_fields["status"] == "triaged" and change.applied_event_id == cause.id
    assert change.timeline is not None and change.timeline.by == "triage"


def test_an_event_never_moves_an_incident_backwards_but_is_still_on_the_timeline() -> None:
    change = moves.move_by_event(
        state(Status.REMEDIATING), triaged(), proposed=Status.TRIAGED, kind="triaged", summary="P2", now=NOW
    )
    assert change is not None and "status" not in change.set_fields and change.timeline is not None


def test_an_event_about_another_tenant_is_ignored() -> None:
    assert (
        moves.move_by_event(
            state(Status.REPORTED), triaged("globex"), proposed=Status.TRIAGED, kind="t", summary="s", now=NOW
        )
        is None
    )


def test_an_event_that_resolves_announces_it_caused_by_the_event() -> None:
    cause = triaged()

    def resolved(incident: moves.IncidentState) -> IncidentResolved:
        return IncidentResolved(incident_id=incident.incident_id, number=incident.number, by="remediation")

    change = moves.move_by_event(
        state(Status.REMEDIATING),
        cause,
        proposed=Status.RESOLVED,
        kind="resolved",
        summary="fixed",
        announcement=resolved,
        now=NOW,
    )
    assert change is not None and change.release_dedup_key == "disk-db-1"
    [event] = change.events
    assert event.data.number == "INC-1001" and event.causation_id == cause.id
