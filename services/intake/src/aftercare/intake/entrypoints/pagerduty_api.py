"""PagerDuty Events API v2, compatible: anything that sends alerts to PagerDuty today can send them
here by changing only the base URL (``https://events.pagerduty.com`` -> intake).

Same path (``POST /v2/enqueue``), same body, same status codes and the same JSON bodies as
PagerDuty (not problem+json: PagerDuty clients parse these). The routing key names the tenant.

Dedup keys share one space per tenant with the JSON API's ``dedup_key``: a trigger for a key
with an open incident adds an occurrence to it, whichever channel opened it. Acknowledge and
resolve for a key with no open incident are accepted and dropped, as PagerDuty drops them.
"""

from __future__ import annotations

import json
from typing import Any

import structlog
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field

from aftercare.events.incidents import Channel, IncidentStatus
from aftercare.events.producer import EventTooLarge
from aftercare.events.web import Refusal
from aftercare.intake.adapters.tenant_registry import Credential
from aftercare.intake.components import IntakeComponents
from aftercare.intake.domain import pagerduty
from aftercare.intake.entrypoints.dependencies import Components
from aftercare.intake.service_layer import move_incident, report_incident
from aftercare.intake.service_layer.record_change import record_change
from aftercare.intake.service_layer.report_incident import Outcome

log = structlog.stdlib.get_logger("aftercare.intake.pagerduty")

router = APIRouter(tags=["pagerduty"])


class EnqueueAccepted(BaseModel):
    status: str = Field(examples=["success"])
    message: str = Field(examples=["Event processed"])
    dedup_key: str = Field(description="The key to acknowledge or resolve this alert with.")


class ChangeAccepted(BaseModel):
    status: str = Field(examples=["success"])
    message: str = Field(examples=["Change event processed"])


class EnqueueRefused(BaseModel):
    status: str = Field(examples=["invalid event"])
    message: str = Field(examples=["Event object is invalid"])
    errors: list[str] = Field(default_factory=list, description="What to change, one entry per problem.")


def standalone_schema(schema: dict[str, Any]) -> dict[str, Any]:
    """A model's JSON schema with its $defs inlined, to stand on its own inside the OpenAPI document."""
    definitions = schema.pop("$defs", {})

    def resolve(node: Any) -> Any:
        if isinstance(node, dict):
            if "$ref" in node:  # keep what sits beside the reference (its description)
                siblings = {key: value for key, value in node.items() if key != "$ref"}
                return resolve(definitions[node["$ref"].rsplit("/", 1)[-1]]) | resolve(siblings)
            return {key: resolve(value) for key, value in node.items()}
        if isinstance(node, list):
            return [resolve(item) for item in node]
        return node

    return resolve(schema)  # type: ignore[no-any-return]


REQUEST_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {"schema": standalone_schema(pagerduty.EnqueueRequest.model_json_schema(by_alias=True))}
        },
    }
}


CHANGE_REQUEST_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {
                "schema": standalone_schema(pagerduty.ChangeEnqueueRequest.model_json_schema(by_alias=True))
            }
        },
    }
}


def _refused(
    errors: list[str],
    *,
    status: str = "invalid event",
    message: str = "Event object is invalid",
    code: int = 400,
    headers: dict[str, str] | None = None,
) -> JSONResponse:
    return JSONResponse({"status": status, "message": message, "errors": errors}, status_code=code, headers=headers)


def body_too_large(max_bytes: int) -> Refusal:
    """A body over intake's limit on a PagerDuty path, refused as PagerDuty refuses a large event."""
    body = {
        "status": "invalid event",
        "message": "Event object is invalid",
        "errors": [
            f"The request body is over {max_bytes} bytes; events are limited to "
            f"{pagerduty.MAX_EVENT_BYTES // 1024} KB. Send less in custom_details (link to large data instead)"
        ],
    }
    return Refusal(400, "application/json", json.dumps(body).encode())


def _accepted(dedup_key: str, incident: Outcome | None = None) -> JSONResponse:
    headers = {}
    if incident is not None:
        # Not PagerDuty's, and ignored by its clients; lets a caller find the incident here.
        headers = {
            "X-Aftercare-Incident-Id": incident.incident.incident_id,
            "X-Aftercare-Incident-Number": incident.incident.number,
        }
    return JSONResponse(
        {"status": "success", "message": "Event processed", "dedup_key": dedup_key}, status_code=202, headers=headers
    )


@router.post(
    "/v2/enqueue",
    status_code=202,
    response_model=EnqueueAccepted,
    openapi_extra=REQUEST_BODY,
    responses={
        400: {"model": EnqueueRefused, "description": "Invalid event, unknown routing key or not JSON"},
        429: {"model": EnqueueRefused, "description": "Over the routing key's rate limit; see Retry-After"},
    },
)
async def enqueue(request: Request, intake: Components) -> JSONResponse:
    """Send an alert event (trigger, acknowledge or resolve), exactly as to PagerDuty's Events API v2.

    202 means the incident change is stored and its event is durable in Kafka. The body is
    PagerDuty's: ``{"status": "success", "message": "Event processed", "dedup_key": ...}``; a
    trigger without a ``dedup_key`` gets a generated one back. Invalid events get 400 with
    ``errors`` saying what to change; too many events for the routing key get 429 with Retry-After.
    """
    document = await _read_document(request)
    if isinstance(document, JSONResponse):
        return document
    credential = await _sender(intake, document)
    if isinstance(credential, JSONResponse):
        return credential
    try:
        event = pagerduty.read_event(document, routing_key_registered=credential is not None)
    except pagerduty.InvalidEvent as invalid:
        log.info(
            "pagerduty event refused", errors=invalid.errors, tenant_id=credential.tenant_id if credential else None
        )
        return _refused(invalid.errors)
    assert credential is not None  # read_event refuses unregistered keys

    try:
        if event.action == pagerduty.EventAction.TRIGGER:
            return await _trigger(intake, credential, event)
        return await _move(intake, credential, event)
    except EventTooLarge as too_large:
        return _too_large_for_kafka(too_large)


@router.post(
    "/v2/change/enqueue",
    status_code=202,
    response_model=ChangeAccepted,
    openapi_extra=CHANGE_REQUEST_BODY,
    responses={
        400: {"model": EnqueueRefused, "description": "Invalid event, unknown routing key or not JSON"},
        429: {"model": EnqueueRefused, "description": "Over the routing key's rate limit; see Retry-After"},
    },
)
async def enqueue_change(request: Request, intake: Components) -> JSONResponse:
    """Send a change event (a deploy, a configuration change), exactly as to PagerDuty's Events API v2.

    A change opens no incident: it is noted on the timeline of the tenant's open incidents with
    the same ``payload.source`` and kept in the tenant's change log. 202 with PagerDuty's body
    ``{"status": "success", "message": "Change event processed"}``; errors as for ``/v2/enqueue``.
    """
    document = await _read_document(request)
    if isinstance(document, JSONResponse):
        return document
    credential = await _sender(intake, document)
    if isinstance(credential, JSONResponse):
        return credential
    try:
        event = pagerduty.read_change_event(document, routing_key_registered=credential is not None)
    except pagerduty.InvalidEvent as invalid:
        log.info("pagerduty change event refused", errors=invalid.errors)
        return _refused(invalid.errors)
    assert credential is not None  # read_change_event refuses unregistered keys
    try:
        recorded = await record_change(
            intake.incidents, intake.changes, credential.tenant_id, event, routing_key_id=credential.credential_id
        )
    except EventTooLarge as too_large:
        return _too_large_for_kafka(too_large)
    return JSONResponse(
        {"status": "success", "message": "Change event processed"},
        status_code=202,
        # Not PagerDuty's, ignored by its clients: where the change went here.
        headers={"X-Aftercare-Change-Id": recorded.change_id, "X-Aftercare-Incidents": str(len(recorded.incident_ids))},
    )


@router.api_route(
    "/v2/{path:path}",
    methods=["GET", "POST", "PUT", "PATCH", "DELETE"],
    include_in_schema=False,
)
async def unknown_path(path: str, request: Request) -> JSONResponse:
    """Any other path under /v2/ (a typo, an API PagerDuty has and intake does not), answered in
    PagerDuty's format, which its clients parse, instead of a problem document."""
    known = f"/v2/{path}" in KNOWN_PATHS
    return _refused(
        [
            f"{request.method} /v2/{path} is not an endpoint here"
            + (" (only POST is)" if known else "")
            + ". PagerDuty Events API v2: POST /v2/enqueue for alert events, POST /v2/change/enqueue "
            "for change events"
        ],
        status="method not allowed" if known else "not found",
        message="Method Not Allowed" if known else "Not Found",
        code=405 if known else 404,
        headers={"Allow": "POST"} if known else None,
    )


KNOWN_PATHS = ("/v2/enqueue", "/v2/change/enqueue")


async def _read_document(request: Request) -> dict[str, Any] | JSONResponse:
    """The event's JSON object, or PagerDuty's answer to a body that is not one."""
    raw = await request.body()
    if len(raw) > pagerduty.MAX_EVENT_BYTES:
        return _refused(
            [
                f"The event is {len(raw) // 1024} KB; events are limited to "
                f"{pagerduty.MAX_EVENT_BYTES // 1024} KB. Send less in custom_details "
                "(link to large data instead)"
            ]
        )
    try:
        return pagerduty.parse_body(raw, _charset(request.headers.get("content-type")))
    except pagerduty.UnrecognizedBody as unrecognized:
        return _refused(
            [str(unrecognized)], status="Unrecognized object", message="Event object format is unrecognized"
        )


async def _sender(intake: IntakeComponents, document: dict[str, Any]) -> Credential | JSONResponse | None:
    """The routing key's credential (None: not registered; reading the event says so), or
    PagerDuty's answer to a deactivated account or a routing key over its rate limit."""
    routing_key = document.get("routing_key")
    credential = None
    if isinstance(routing_key, str) and routing_key.strip():
        credential = await intake.tenants.by_routing_key(routing_key)
    if credential is not None and not credential.active:
        log.info("pagerduty event for a deactivated tenant refused", tenant_id=credential.tenant_id)
        return _refused(
            [
                f"This routing key belongs to a deactivated account ({credential.tenant_id}); its events "
                "are not accepted. Ask your support provider to reactivate it"
            ],
            status="invalid event",
            message="Routing key belongs to a deactivated account",
        )
    if credential is not None:
        verdict = await intake.limiter.hit(f"{credential.kind}|{credential.credential_id}")
        if not verdict.allowed:
            log.warning(
                "pagerduty event over the rate limit",
                tenant_id=credential.tenant_id,
                routing_key_id=credential.credential_id,
            )
            return _refused(
                [
                    f"This routing key may send {intake.limiter.per_minute} events a minute; retry after "
                    f"{verdict.retry_after_s} s"
                ],
                status="throttle event",
                message="Request Limit Exceeded",
                code=429,
                headers={"Retry-After": str(verdict.retry_after_s)},
            )
    return credential


def _too_large_for_kafka(error: EventTooLarge) -> JSONResponse:
    # The last line (the fields passed their limits, but together the event is over Kafka's
    # message limit): nothing was stored.
    return _refused(
        [f"The event is too large to be stored ({error}). Send less in custom_details (link to large data instead)"]
    )


async def _trigger(intake: IntakeComponents, credential: Credential, event: pagerduty.AlertEvent) -> JSONResponse:
    dedup_key = event.dedup_key or pagerduty.generated_dedup_key()
    report = pagerduty.incident_report(event, dedup_key=dedup_key, routing_key_id=credential.credential_id)
    outcome = await report_incident.report(intake.incidents, credential.tenant_id, report)
    log.info(
        "pagerduty trigger",
        tenant_id=credential.tenant_id,
        incident_id=outcome.incident.incident_id,
        number=outcome.incident.number,
        opened=outcome.created,
    )
    return _accepted(dedup_key, outcome)


async def _move(intake: IntakeComponents, credential: Credential, event: pagerduty.AlertEvent) -> JSONResponse:
    """Acknowledge or resolve the open incident of the dedup key; without one, accept and drop it."""
    assert event.dedup_key is not None  # read_event requires it for acknowledge and resolve
    acknowledge = event.action == pagerduty.EventAction.ACKNOWLEDGE
    outcome = await move_incident.resolve_open(
        intake.incidents,
        credential.tenant_id,
        event.dedup_key,
        IncidentStatus.ACKNOWLEDGED if acknowledge else IncidentStatus.RESOLVED,
        by=event.actor,
        channel=Channel.PAGERDUTY,
        note="PagerDuty acknowledge event" if acknowledge else "PagerDuty resolve event",
    )
    if outcome is None:
        # PagerDuty drops these too (the alert is resolved or never existed) and still answers 202.
        log.info(
            "pagerduty event for no open incident; dropped",
            tenant_id=credential.tenant_id,
            action=event.action.value,
            dedup_key=event.dedup_key,
        )
        return _accepted(event.dedup_key)
    log.info(
        "pagerduty move",
        tenant_id=credential.tenant_id,
        incident_id=outcome.incident.incident_id,
        action=event.action.value,
        status=outcome.incident.status.value,
    )
    return _accepted(event.dedup_key, outcome)


def _charset(content_type: str | None) -> str | None:
    """The charset a sender declared; PagerDuty reads the body as JSON whatever the media type says."""
    if not content_type:
        return None
    for parameter in content_type.split(";")[1:]:
        name, _, value = parameter.partition("=")
        if name.strip().lower() == "charset" and value.strip():
            return value.strip().strip('"')
    return None
