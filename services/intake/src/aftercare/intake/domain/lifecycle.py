"""Where an incident may go from where it is: the lifecycle a customer sees.

    reported ─┬─> acknowledged ─┐
              ├─> triaged ──────┼─> remediating ─┬─> resolved ─> closed
              │                 │                └─> escalated ─> resolved
              └─────────────────┴─> escalated / resolved
    resolved ─> reopened (then the same path again)

Events arrive from other services in any order and more than once (a remediation result can
overtake the triage event, a late triage can arrive after the customer resolved): a move that
would go backwards is not applied to the status, only written on the timeline.
"""

from __future__ import annotations

from aftercare.events.incidents import IncidentStatus as Status

OPEN_STATUSES = frozenset(
    {Status.REPORTED, Status.ACKNOWLEDGED, Status.TRIAGED, Status.REMEDIATING, Status.ESCALATED, Status.REOPENED}
)

# How far along an open incident is; automation never moves it back to an earlier stage.
_STAGE = {
    Status.REPORTED: 0,
    Status.REOPENED: 0,
    # A person taking the incident is as far along as triage: a later triage event records its
    # priority but leaves "someone is on it" showing (see automated_move).
    Status.ACKNOWLEDGED: 2,
    Status.TRIAGED: 2,
    Status.REMEDIATING: 3,
    Status.ESCALATED: 4,
}

_ALLOWED: dict[Status, frozenset[Status]] = {
    Status.REPORTED: frozenset(
        {Status.ACKNOWLEDGED, Status.TRIAGED, Status.REMEDIATING, Status.ESCALATED, Status.RESOLVED}
    ),
    Status.REOPENED: frozenset(
        {Status.ACKNOWLEDGED, Status.TRIAGED, Status.REMEDIATING, Status.ESCALATED, Status.RESOLVED}
    ),
    Status.ACKNOWLEDGED: frozenset({Status.TRIAGED, Status.REMEDIATING, Status.ESCALATED, Status.RESOLVED}),
    Status.TRIAGED: frozenset({Status.ACKNOWLEDGED, Status.REMEDIATING, Status.ESCALATED, Status.RESOLVED}),
    Status.REMEDIATING: frozenset({Status.ACKNOWLEDGED, Status.ESCALATED, Status.RESOLVED}),
    Status.ESCALATED: frozenset({Status.ACKNOWLEDGED, Status.REMEDIATING, Status.RESOLVED}),
    Status.RESOLVED: frozenset({Status.REOPENED, Status.CLOSED}),
    Status.CLOSED: frozenset(),
}


class TransitionRefused(ValueError):
    """A person asked for a move the lifecycle does not allow; the message says why."""


def is_open(status: Status) -> bool:
    return status in OPEN_STATUSES


def can_move(current: Status, target: Status) -> bool:
    return target in _ALLOWED[current]


def require_move(current: Status, target: Status) -> None:
    """For moves people ask for (acknowledge, resolve, reopen, close)."""
    if not can_move(current, target):
        allowed = ", ".join(sorted(_ALLOWED[current])) or "nothing (it is closed)"
        raise TransitionRefused(
            f"an incident that is {current.value} cannot become {target.value}; "
            f"from {current.value} it can become: {allowed}"
        )


def automated_move(current: Status, proposed: Status) -> Status | None:
    """The status after an event from triage or remediation, or None to leave it as it is.

    Automation moves an open incident forward only; acknowledging by a person is kept when
    triage arrives later (acknowledged stays, triaged data is recorded on the incident).
    """
    if not can_move(current, proposed):
        return None
    if proposed in _STAGE and current in _STAGE and _STAGE[proposed] <= _STAGE[current]:
        return None
    return proposed
