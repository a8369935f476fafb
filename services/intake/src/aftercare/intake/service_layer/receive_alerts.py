"""What happens when Alertmanager sends a notification: each alert of the group opens, counts,
resolves or leaves alone its incident, in bulk.

A mass outage sends one group with thousands of alerts, and Alertmanager retries only on 5xx,
so the whole group is taken in one request and its alerts are applied concurrently
(``ALERTS_AT_ONCE`` at a time; new incidents then share the store's group commit). Alerts of the
same fingerprint in one message are applied in their order. An alert over the field limits
(``domain/field_limits.py``) is refused alone; the others are applied.

A firing the incident has counted already (same fingerprint and ``startsAt``: the repeat
notifications of a group, both members of an HA pair) is no new occurrence
(``reporting.already_counted``).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Literal

import structlog

from aftercare.events.incidents import Channel, IncidentStatus
from aftercare.intake.adapters.incident_store import IncidentStore
from aftercare.intake.domain import alertmanager
from aftercare.intake.domain.alertmanager import Alert, AlertStatus, WebhookMessage
from aftercare.intake.domain.field_limits import FieldTooLong
from aftercare.intake.service_layer import move_incident, report_incident

log = structlog.stdlib.get_logger("aftercare.intake.receive_alerts")

# Enough to fill the group commit's batches; few enough not to swamp the store's connection pool.
ALERTS_AT_ONCE = 32

Outcome = Literal["opened", "updated", "repeated", "resolved", "ignored", "refused"]


@dataclass(frozen=True)
class AlertResult:
    """What one alert of the message did."""

    fingerprint: str
    alertname: str | None
    status: AlertStatus
    outcome: Outcome
    incident_id: str | None = None
    number: str | None = None
    problems: list[FieldTooLong] = field(default_factory=list)


async def receive_alerts(store: IncidentStore, tenant_id: str, message: WebhookMessage) -> list[AlertResult]:
    """Apply every alert of ``message``; the results are in the message's order.

    Raises the first store or Kafka failure once every alert has been tried (the others stay
    applied; Alertmanager's retry of the whole group then finds them done: repeats are not
    counted again and resolving a resolved alert is a no-op).
    """
    results: list[AlertResult | None] = [None] * len(message.alerts)
    by_key: dict[str, list[int]] = {}
    for index, alert in enumerate(message.alerts):
        problems = alertmanager.field_problems(alert, index)
        if problems:
            results[index] = _result(alert, "refused", problems=problems)
            continue
        by_key.setdefault(alertmanager.dedup_key(alert), []).append(index)

    slots = asyncio.Semaphore(ALERTS_AT_ONCE)

    async def one_fingerprint(indexes: list[int]) -> None:
        async with slots:
            for index in indexes:  # one fingerprint's alerts in the message's order
                results[index] = await _apply(store, tenant_id, message.alerts[index], message)

    tried = await asyncio.gather(*(one_fingerprint(indexes) for indexes in by_key.values()), return_exceptions=True)
    failures = [outcome for outcome in tried if isinstance(outcome, BaseException)]
    if failures:
        raise failures[0]
    return [result for result in results if result is not None]


async def _apply(store: IncidentStore, tenant_id: str, alert: Alert, message: WebhookMessage) -> AlertResult:
    key = alertmanager.dedup_key(alert)
    if alert.status == AlertStatus.FIRING:
        open_now = await store.find_open(tenant_id, key)
        report = alertmanager.incident_report(alert, message, first_time=open_now is None)
        outcome = await report_incident.report(store, tenant_id, report)
        kind: Outcome = "opened" if outcome.created else "repeated" if outcome.repeated else "updated"
        return _result(alert, kind, incident_id=outcome.incident.incident_id, number=outcome.incident.number)
    resolved = await move_incident.resolve_open(
        store,
        tenant_id,
        key,
        IncidentStatus.RESOLVED,
        by=alertmanager.ACTOR,
        channel=Channel.ALERTMANAGER,
        note=alertmanager.resolution(alert),
    )
    if resolved is None:
        log.info("resolved alert with no open incident; nothing to do", tenant_id=tenant_id, dedup_key=key)
        return _result(alert, "ignored")
    return _result(alert, "resolved", incident_id=resolved.incident.incident_id, number=resolved.incident.number)


def _result(
    alert: Alert,
    outcome: Outcome,
    *,
    incident_id: str | None = None,
    number: str | None = None,
    problems: list[FieldTooLong] | None = None,
) -> AlertResult:
    return AlertResult(
        fingerprint=alertmanager.fingerprint(alert),
        alertname=alert.labels.get("alertname"),
        status=alert.status,
        outcome=outcome,
        incident_id=incident_id,
        number=number,
        problems=problems or [],
    )
