"""The incident lifecycle (domain/lifecycle.py): which moves people and automation may make."""

from __future__ import annotations

import pytest

from aftercare.events.incidents import IncidentStatus as Status
from aftercare.intake.domain import lifecycle

OPEN = [Status.REPORTED, Status.ACKNOWLEDGED, Status.TRIAGED, Status.REMEDIATING, Status.ESCALATED, Status.REOPENED]


def test_open_means_someone_still_has_work_to_do() -> None:
    assert {status for status in Status if lifecycle.is_open(status)} == set(OPEN)
    assert not lifecycle.is_open(Status.RESOLVED) and not lifecycle.is_open(Status.CLOSED)


@pytest.mark.parametrize("current", OPEN)
def test_every_open_incident_can_be_resolved_and_escalated_and_acknowledged(current: Status) -> None:
    assert lifecycle.can_move(current, Status.RESOLVED)
    if current != Status.ESCALATED:
        assert lifecycle.can_move(current, Status.ESCALATED)
    if current != Status.ACKNOWLEDGED:
        assert lifecycle.can_move(current, Status.ACKNOWLEDGED)


@pytest.mark.parametrize("current", OPEN)
def test_only_a_resolved_incident_can_be_reopened(current: Status) -> None:
    assert not lifecycle.can_move(current, Status.REOPENED)
    assert lifecycle.can_move(Status.RESOLVED, Status.REOPENED)


def test_resolved_can_only_be_reopened_or_closed_and_closed_is_final() -> None:
    assert {target for target in Status if lifecycle.can_move(Status.RESOLVED, target)} == {
        Status.REOPENED,
        Status.CLOSED,
    }
    assert not any(lifecycle.can_move(Status.CLOSED, target) for target in Status)


def test_no_status_moves_to_itself() -> None:
    assert not any(lifecycle.can_move(status, status) for status in Status)


def test_a_refused_move_says_where_the_incident_can_go_instead() -> None:
    with pytest.raises(lifecycle.TransitionRefused) as refused:
        lifecycle.require_move(Status.REPORTED, Status.REOPENED)
    message = str(refused.value)
    assert message.startswith("an incident that is reported cannot become reopened")
    for possible in ("acknowledged", "triaged", "remediating", "escalated", "resolved"):
        assert possible in message


def test_a_refused_move_from_closed_says_nothing_is_possible() -> None:
    with pytest.raises(lifecycle.TransitionRefused, match=r"nothing \(it is closed\)"):
        lifecycle.require_move(Status.CLOSED, Status.REOPENED)


def test_an_allowed_move_is_not_refused() -> None:
    lifecycle.require_move(Status.TRIAGED, Status.ACKNOWLEDGED)
    lifecycle.require_move(Status.ESCALATED, Status.RESOLVED)


@pytest.mark.parametrize(
    ("current", "proposed", "expected"),
    [
        (Status.REPORTED, Status.TRIAGED, Status.TRIAGED),
        (Status.REOPENED, Status.TRIAGED, Status.TRIAGED),
        (Status.TRIAGED, Status.REMEDIATING, Status.REMEDIATING),
        (Status.REMEDIATING, Status.RESOLVED, Status.RESOLVED),
        (Status.REMEDIATING, Status.ESCALATED, Status.ESCALATED),
        (Status.ESCALATED, Status.RESOLVED, Status.RESOLVED),
        # A result that overtook the triage event still moves the incident forward.
        (Status.REPORTED, Status.RESOLVED, Status.RESOLVED),
        (Status.REPORTED, Status.REMEDIATING, Status.REMEDIATING),
        (Status.ACKNOWLEDGED, Status.REMEDIATING, Status.REMEDIATING),
    ],
)
def test_automation_moves_an_incident_forward(current: Status, proposed: Status, expected: Status) -> None:
    assert lifecycle.automated_move(current, proposed) == expected


@pytest.mark.parametrize(
    ("current", "proposed"),
    [
        # Late or repeated events never move an incident back.
        (Status.REMEDIATING, Status.TRIAGED),
        (Status.ESCALATED, Status.TRIAGED),
        (Status.TRIAGED, Status.TRIAGED),
        (Status.RESOLVED, Status.TRIAGED),
        (Status.RESOLVED, Status.REMEDIATING),
        (Status.RESOLVED, Status.RESOLVED),
        (Status.CLOSED, Status.RESOLVED),
        (Status.CLOSED, Status.ESCALATED),
        # A person on it stays visible when triage arrives afterwards.
        (Status.ACKNOWLEDGED, Status.TRIAGED),
    ],
)
def test_automation_leaves_the_status_where_a_move_would_go_back(current: Status, proposed: Status) -> None:
    assert lifecycle.automated_move(current, proposed) is None
