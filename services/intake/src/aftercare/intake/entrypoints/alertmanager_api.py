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
it. The answer lists what happened to each alert. What happens is ``service_layer/receive_alerts.py``.
"""

from __future__ import annotations

import json
from typing import Annotated, Any, Literal

import structlog
from fastapi import APIRouter, Depends, Header, Request
from pydantic import BaseModel, Field, ValidationError

from aftercare.events.web import Problem, validation_errors
from aftercare.intake.adapters.tenant_registry import Credential
from aftercare.intake.domain import alertmanager
from aftercare.intake.domain.alertmanager import AlertStatus, WebhookMessage
from aftercare.intake.entrypoints.dependencies import Components, bearer, enforce_rate_limit, inactive_tenant
from aftercare.intake.entrypoints.pagerduty_api import standalone_schema
from aftercare.intake.service_layer.receive_alerts import receive_alerts as receive_alerts_use_case

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
    outcome: Literal["opened", "updated", "repeated", "resolved", "ignored", "refused"] = Field(
        description="opened a new incident, updated (another occurrence of) the open one, repeated a "
        "firing the incident has counted already (same fingerprint and startsAt: nothing changed), "
        "resolved it, ignored a resolved alert with no open incident, or refused an alert over the "
        "field limits (see the problem's 'errors')."
    )
    incident_id: str | None = None
    number: str | None = None


class WebhookReceipt(BaseModel):
    received: int = Field(description="Alerts in the message.")
    opened: int
    updated: int
    repeated: int = Field(description="Firings counted already (repeat notifications, an HA pair's copy).")
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
    fingerprint (not when it is the same firing sent again: same fingerprint and startsAt); a
    resolved alert resolves it (or is ignored when none is open). Groups of any size Alertmanager
    sends are taken whole (up to AFTERCARE_INTAKE_MAX_ALERTMANAGER_BODY_BYTES). 200 means every
    change is stored and its event is durable in Kafka. An alert over the field limits is refused
    alone: 422 naming its fields, with the other alerts applied and listed in the answer.
    """
    message = _read(await request.body())
    if message.truncatedAlerts:
        log.warning(
            "alertmanager left alerts out of the message",
            tenant_id=caller.tenant_id,
            truncated=message.truncatedAlerts,
            group_key=message.groupKey[:200],
        )
    results = await receive_alerts_use_case(intake.incidents, caller.tenant_id, message)
    outcomes = [
        AlertOutcome(
            fingerprint=result.fingerprint,
            alertname=result.alertname,
            status=result.status,
            outcome=result.outcome,
            incident_id=result.incident_id,
            number=result.number,
        )
        for result in results
    ]
    counts = {
        kind: sum(1 for o in outcomes if o.outcome == kind)
        for kind in ("opened", "updated", "repeated", "resolved", "ignored")
    }
    log.info("alertmanager message", tenant_id=caller.tenant_id, received=len(outcomes), **counts)
    receipt = WebhookReceipt(
        received=len(outcomes), truncated_alerts=message.truncatedAlerts, alerts=outcomes, **counts
    )
    problems = [problem for result in results for problem in result.problems]
    if problems:
        refused = sum(1 for result in results if result.problems)
        raise Problem(
            422,
            "Alert fields over the limits",
            f"{refused} of {len(results)} alerts have fields over the limits and were not applied; see "
            "'errors' for each field. The other alerts were applied (see 'alerts'). Shorten these "
            "labels or URLs in the alerting rules.",
            kind="field-too-long",
            errors=[{"field": problem.field, "message": problem.sentence()} for problem in problems],
            **receipt.model_dump(mode="json"),
        )
    return receipt


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


def _no_constants(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")
