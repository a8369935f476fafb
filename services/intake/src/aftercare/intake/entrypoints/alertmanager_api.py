"""Prometheus Alertmanager webhook receiver: ``POST /v1/alertmanager`` with the tenant's bearer token.

Alertmanager configuration for a tenant::

    receivers:
      - name: aftercare
        webhook_configs:
          - url: https://<intake>/v1/alertmanager
            send_resolved: true
            http_config:
              authorization:
                type: Bearer
                credentials: <the tenant's Alertmanager token>

Each alert becomes or updates one incident (keyed by its fingerprint); a resolved alert resolves
it. The answer lists what happened to each alert.
"""

from __future__ import annotations

import json
from typing import Annotated, Any, Literal

import structlog
from fastapi import APIRouter, Depends, Header, Request
from pydantic import BaseModel, Field, ValidationError

from aftercare.events.incidents import Channel, IncidentStatus
from aftercare.events.web import Problem, validation_errors
from aftercare.intake.components import IntakeComponents
from aftercare.intake.domain import alertmanager
from aftercare.intake.domain.alertmanager import Alert, AlertStatus, WebhookMessage
from aftercare.intake.entrypoints.dependencies import Components, bearer, enforce_rate_limit, inactive_tenant
from aftercare.intake.entrypoints.pagerduty_api import standalone_schema
from aftercare.intake.service_layer import move_incident, report_incident
from aftercare.intake.tenant_registry import Credential

log = structlog.stdlib.get_logger("aftercare.intake.alertmanager")

router = APIRouter(prefix="/v1/alertmanager", tags=["alertmanager"])

CONFIGURE = (
    "Configure the webhook receiver with http_config: {authorization: {type: Bearer, credentials: "
    "<token>}} using the Alertmanager token your support provider issued."
)

PROBLEMS: dict[int | str, dict[str, Any]] = {
    400: {"description": "Not JSON, or not payload version 4"},
    401: {"description": "Missing or unknown token"},
    413: {"description": "Body too large"},
    422: {"description": "Missing or wrong fields"},
    429: {"description": "Rate limit; see Retry-After"},
}
REQUEST_BODY = {
    "requestBody": {
        "required": True,
        "content": {"application/json": {"schema": standalone_schema(WebhookMessage.model_json_schema())}},
    }
}


class AlertOutcome(BaseModel):
    fingerprint: str
    alertname: str | None = None
    status: AlertStatus = Field(description="The alert's status in the message.")
    outcome: Literal["opened", "updated", "resolved", "ignored"] = Field(
        description="opened a new incident, updated (another occurrence of) the open one, resolved it, "
        "or ignored a resolved alert with no open incident."
    )
    incident_id: str | None = None
    number: str | None = None


class WebhookReceipt(BaseModel):
    received: int = Field(description="Alerts in the message.")
    opened: int
    updated: int
    resolved: int
    ignored: int
    truncated_alerts: int = Field(description="Alerts Alertmanager left out of the message (max_alerts).")
    alerts: list[AlertOutcome]


async def alertmanager_credential(
    intake: Components,
    authorization: Annotated[str | None, Header(description="Bearer <the tenant's Alertmanager token>")] = None,
) -> Credential:
    token = bearer(authorization)
    if token is None:
        raise Problem(
            401,
            "Alertmanager token required",
            "Send 'Authorization: Bearer <token>'. " + CONFIGURE,
            kind="unauthenticated",
            headers={"WWW-Authenticate": "Bearer"},
        )
    credential = await intake.tenants.by_alertmanager_token(token)
    if credential is None:
        raise Problem(
            401,
            "Unknown Alertmanager token",
            "The bearer token is not an Alertmanager token issued here (mistyped or replaced). " + CONFIGURE,
            kind="unauthenticated",
            headers={"WWW-Authenticate": "Bearer"},
        )
    if not credential.active:
        raise inactive_tenant(credential, "Alertmanager token")
    await enforce_rate_limit(intake, credential)
    return credential


AlertmanagerCaller = Annotated[Credential, Depends(alertmanager_credential)]


@router.post("", response_model=WebhookReceipt, responses=PROBLEMS, openapi_extra=REQUEST_BODY)
async def receive_alerts(request: Request, intake: Components, caller: AlertmanagerCaller) -> WebhookReceipt:
    """Alertmanager webhook (payload version 4): each alert opens, updates or resolves its incident.

    A firing alert opens an incident, or adds an occurrence to the open one with the same
    fingerprint; a resolved alert resolves it (or is ignored when none is open). 200 means every
    change is stored and its event is durable in Kafka.
    """
    message = _read(await request.body())
    if message.truncatedAlerts:
        log.warning(
            "alertmanager left alerts out of the message",
            tenant_id=caller.tenant_id,
            truncated=message.truncatedAlerts,
            group_key=message.groupKey,
        )
    outcomes = [await _apply(intake, caller.tenant_id, alert, message) for alert in message.alerts]
    counts = {
        kind: sum(1 for o in outcomes if o.outcome == kind) for kind in ("opened", "updated", "resolved", "ignored")
    }
    log.info("alertmanager message", tenant_id=caller.tenant_id, group_key=message.groupKey, **counts)
    return WebhookReceipt(received=len(outcomes), truncated_alerts=message.truncatedAlerts, alerts=outcomes, **counts)


def _read(raw: bytes) -> WebhookMessage:
    try:
        document = json.loads(raw, parse_constant=_no_constants)
    except (ValueError, RecursionError) as error:
        reason = "nested too deeply" if isinstance(error, RecursionError) else str(error)
        raise Problem(
            400,
            "Invalid JSON",
            f"The request body is not valid JSON: {reason}. Send Alertmanager's "
            "webhook message with Content-Type: application/json.",
            kind="invalid-json",
        ) from None
    if not isinstance(document, dict):
        raise Problem(
            422,
            "Invalid Alertmanager message",
            "The body must be a JSON object: Alertmanager's webhook message with version, status and alerts.",
            kind="invalid-request",
            errors=[{"field": "(body)", "message": "not a JSON object"}],
        )
    unsupported = alertmanager.version_problem(document)
    if unsupported:
        raise Problem(400, "Unsupported payload version", unsupported, kind="unsupported-version")
    try:
        return WebhookMessage.model_validate(alertmanager.normalised(document))
    except ValidationError as invalid:
        raise Problem(
            422,
            "Invalid Alertmanager message",
            "Some fields are missing or wrong; see 'errors' for each one. Nothing in this message was applied.",
            kind="invalid-request",
            errors=validation_errors(invalid.errors()),
        ) from None


async def _apply(intake: IntakeComponents, tenant_id: str, alert: Alert, message: WebhookMessage) -> AlertOutcome:
    key = alertmanager.dedup_key(alert)
    seen = AlertOutcome(
        fingerprint=alertmanager.fingerprint(alert),
        alertname=alert.labels.get("alertname"),
        status=alert.status,
        outcome="ignored",
    )
    if alert.status == AlertStatus.FIRING:
        open_now = await intake.incidents.find_open(tenant_id, key)
        report = alertmanager.incident_report(alert, message, first_time=open_now is None)
        outcome = await report_incident.report(intake.incidents, tenant_id, report)
        return seen.model_copy(
            update={
                "outcome": "opened" if outcome.created else "updated",
                "incident_id": outcome.incident.incident_id,
                "number": outcome.incident.number,
            }
        )
    resolved = await move_incident.resolve_open(
        intake.incidents,
        tenant_id,
        key,
        IncidentStatus.RESOLVED,
        by=alertmanager.ACTOR,
        channel=Channel.ALERTMANAGER,
        note=alertmanager.resolution(alert),
    )
    if resolved is None:
        log.info("resolved alert with no open incident; nothing to do", tenant_id=tenant_id, dedup_key=key)
        return seen
    return seen.model_copy(
        update={"outcome": "resolved", "incident_id": resolved.incident.incident_id, "number": resolved.incident.number}
    )


def _no_constants(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")
