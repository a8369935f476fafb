"""The JSON API for monitoring systems and customers' tools: report and follow incidents."""

from __future__ import annotations

from typing import Annotated, Any
from urllib.parse import quote

from fastapi import APIRouter, Header, Query, Request, Response
from pydantic import BaseModel, ConfigDict, Field, StringConstraints, field_validator

from aftercare.events.incidents import Channel, IncidentStatus, Severity
from aftercare.events.web import Problem
from aftercare.intake.adapters.idempotency_keys import body_digest
from aftercare.intake.adapters.incident_store import IncidentNotFound, IncidentStore
from aftercare.intake.domain import field_limits as limits
from aftercare.intake.domain.incident import Incident, IncidentReport
from aftercare.intake.domain.lifecycle import TransitionRefused
from aftercare.intake.domain.moments import UtcDatetime
from aftercare.intake.entrypoints.dependencies import ApiCaller, Components
from aftercare.intake.service_layer.move_incident import move
from aftercare.intake.service_layer.report_from_api import IdempotencyConflict, report_from_api
from aftercare.intake.service_layer.report_incident import Outcome

router = APIRouter(prefix="/v1/incidents", tags=["incidents"])

PROBLEMS: dict[int | str, dict[str, Any]] = {
    400: {"description": "Invalid JSON"},
    401: {"description": "Missing or unknown API key"},
    413: {"description": "Body too large"},
    422: {"description": "Missing or wrong fields"},
    429: {"description": "Rate limit; see Retry-After"},
}


LabelName = Annotated[str, StringConstraints(max_length=limits.LABEL_NAME_CHARS)]
LabelValue = Annotated[str, StringConstraints(max_length=limits.LABEL_VALUE_CHARS)]


class ReporterFields(BaseModel):
    """Who or what reported the problem (each field bounded; see ``domain/field_limits.py``)."""

    model_config = ConfigDict(extra="forbid")

    name: str | None = Field(default=None, max_length=limits.NAME_CHARS)
    email: str | None = Field(default=None, max_length=limits.EMAIL_ADDRESS_CHARS)
    phone: str | None = Field(default=None, max_length=limits.PHONE_CHARS)
    system: str | None = Field(
        default=None, max_length=limits.NAME_CHARS, description="Monitoring system or integration name."
    )


class NewIncident(BaseModel):
    """A problem to report. Only ``title`` is required. Field limits: ``domain/field_limits.py``."""

    model_config = ConfigDict(extra="forbid")

    title: str = Field(min_length=1, max_length=limits.TITLE_CHARS, description="One line: what is wrong.")
    description: str = Field(default="", max_length=limits.DESCRIPTION_CHARS)
    severity: Severity = Severity.ERROR
    system: str | None = Field(
        default=None, max_length=limits.NAME_CHARS, description="The affected system, as registered."
    )
    source: str | None = Field(
        default=None, max_length=limits.SOURCE_CHARS, description="Host or component with the problem."
    )
    dedup_key: str | None = Field(
        default=None,
        min_length=1,
        max_length=limits.DEDUP_KEY_CHARS,
        description="Reports with the same key update the open incident.",
    )
    labels: dict[LabelName, LabelValue] = Field(default_factory=dict, max_length=limits.LABELS)
    reporter: ReporterFields = Field(default_factory=ReporterFields)
    occurred_at: UtcDatetime | None = Field(default=None, description="When it happened (ISO 8601 with offset).")

    @field_validator("labels")
    @classmethod
    def _storable_label_names(cls, labels: dict[str, str]) -> dict[str, str]:
        # The store keeps labels as field names, and field names cannot hold these.
        bad = [name for name in labels if not name or "." in name or name.startswith("$") or "\x00" in name]
        if bad:
            raise ValueError(
                f"label names must be non-empty, without '.', NUL or a leading '$' "
                f"(use '_' instead): {', '.join(repr(name) for name in bad)}"
            )
        return labels


class Accepted(BaseModel):
    incident_id: str
    number: str
    status: IncidentStatus
    created: bool = Field(description="False when the report updated an open incident (dedup) or was a retry.")
    status_url: str


class IncidentPage(BaseModel):
    items: list[Incident]
    total: int
    limit: int
    offset: int


class Acknowledgement(BaseModel):
    model_config = ConfigDict(extra="forbid")
    by: str = Field(min_length=1, max_length=limits.NAME_CHARS)
    note: str = Field(default="", max_length=limits.NOTE_CHARS)


class Resolution(BaseModel):
    model_config = ConfigDict(extra="forbid")
    by: str = Field(min_length=1, max_length=limits.NAME_CHARS)
    resolution: str = Field(default="", max_length=limits.NOTE_CHARS)


class Reopening(BaseModel):
    model_config = ConfigDict(extra="forbid")
    by: str = Field(min_length=1, max_length=limits.NAME_CHARS)
    reason: str = Field(default="", max_length=limits.NOTE_CHARS)


def _accepted(request: Request, response: Response, outcome: Outcome) -> Accepted:
    incident = outcome.incident
    # The get_incident route's URL, built directly: ``request.url_for`` searches every route.
    url = f"{request.base_url}{router.prefix.lstrip('/')}/{quote(incident.incident_id, safe='')}"
    response.headers["Location"] = url
    return Accepted(
        incident_id=incident.incident_id,
        number=incident.number,
        status=incident.status,
        created=outcome.created,
        status_url=url,
    )


@router.post("", status_code=202, response_model=Accepted, responses=PROBLEMS)
async def report_incident(
    body: NewIncident,
    request: Request,
    response: Response,
    intake: Components,
    caller: ApiCaller,
    idempotency_key: Annotated[
        str | None, Header(max_length=limits.DEDUP_KEY_CHARS, description="Retry-safe key")
    ] = None,
) -> Accepted:
    """Report a problem. 202 means the incident is stored and its event is durable in Kafka.

    With ``Idempotency-Key``, a retry with the same body returns the same incident; the same
    key with a different body is refused with 409.
    """
    report = IncidentReport(channel=Channel.API, **body.model_dump())
    try:
        outcome = await report_from_api(
            intake.incidents,
            intake.idempotency_keys,
            caller.tenant_id,
            report,
            idempotency_key=idempotency_key,
            body_digest=body_digest(await request.body()) if idempotency_key else "",
        )
    except IdempotencyConflict:
        raise Problem(
            409,
            "Idempotency-Key reused",
            "This Idempotency-Key was used with a different request body. Use a new key for a new report.",
            kind="idempotency-conflict",
        ) from None
    return _accepted(request, response, outcome)


@router.get("", response_model=IncidentPage, responses=PROBLEMS)
async def list_incidents(
    intake: Components,
    caller: ApiCaller,
    status: Annotated[list[IncidentStatus] | None, Query(description="Only these statuses")] = None,
    channel: Annotated[Channel | None, Query()] = None,
    since: Annotated[UtcDatetime | None, Query(description="Created at or after (ISO 8601)")] = None,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
    offset: Annotated[int, Query(ge=0, le=100_000)] = 0,
) -> IncidentPage:
    """Your incidents, newest first, without timelines (read one incident for its timeline)."""
    items, total = await intake.incidents.search(
        caller.tenant_id, status=status or (), channel=channel, since=since, limit=limit, offset=offset
    )
    return IncidentPage(items=items, total=total, limit=limit, offset=offset)


async def _load(store: IncidentStore, tenant_id: str, incident_id: str) -> Incident:
    try:
        return await store.get(tenant_id, incident_id)
    except IncidentNotFound:
        # The same answer whether it does not exist or belongs to another tenant.
        raise Problem(
            404, "Incident not found", f"No incident {incident_id} for your account.", kind="incident-not-found"
        ) from None


@router.get("/{incident_id}", response_model=Incident, name="get_incident", responses=PROBLEMS | {404: {}})
async def get_incident(incident_id: str, intake: Components, caller: ApiCaller) -> Incident:
    """One incident with its timeline."""
    return await _load(intake.incidents, caller.tenant_id, incident_id)


async def _move(
    intake: Components, tenant_id: str, incident_id: str, target: IncidentStatus, by: str, note: str
) -> Incident:
    try:
        outcome: Outcome = await move(
            intake.incidents, tenant_id, incident_id, target, by=by, channel=Channel.API, note=note
        )
    except IncidentNotFound:
        await _load(intake.incidents, tenant_id, incident_id)  # the same 404 as reading it
        raise
    except TransitionRefused as refused:
        raise Problem(409, "Not possible now", str(refused), kind="transition-refused") from None
    return outcome.incident


@router.post("/{incident_id}/acknowledge", response_model=Incident, responses=PROBLEMS | {404: {}, 409: {}})
async def acknowledge_incident(
    incident_id: str, body: Acknowledgement, intake: Components, caller: ApiCaller
) -> Incident:
    """Take ownership: the customer is told someone is on it."""
    return await _move(intake, caller.tenant_id, incident_id, IncidentStatus.ACKNOWLEDGED, body.by, body.note)


@router.post("/{incident_id}/resolve", response_model=Incident, responses=PROBLEMS | {404: {}, 409: {}})
async def resolve_incident(incident_id: str, body: Resolution, intake: Components, caller: ApiCaller) -> Incident:
    """Mark the problem gone."""
    return await _move(intake, caller.tenant_id, incident_id, IncidentStatus.RESOLVED, body.by, body.resolution)


@router.post("/{incident_id}/reopen", response_model=Incident, responses=PROBLEMS | {404: {}, 409: {}})
async def reopen_incident(incident_id: str, body: Reopening, intake: Components, caller: ApiCaller) -> Incident:
    """The problem came back after it was resolved."""
    return await _move(intake, caller.tenant_id, incident_id, IncidentStatus.REOPENED, body.by, body.reason)


class Closing(BaseModel):
    model_config = ConfigDict(extra="forbid")
    by: str = Field(min_length=1, max_length=limits.NAME_CHARS)
    reason: str = Field(default="", max_length=limits.NOTE_CHARS)


@router.post("/{incident_id}/close", response_model=Incident, responses=PROBLEMS | {404: {}, 409: {}})
async def close_incident(incident_id: str, body: Closing, intake: Components, caller: ApiCaller) -> Incident:
    """Finish a resolved incident (for example once the customer confirmed the fix).

    Incidents that stay resolved for AFTERCARE_INTAKE_AUTO_CLOSE_AFTER_HOURS are closed
    automatically.
    """
    return await _move(intake, caller.tenant_id, incident_id, IncidentStatus.CLOSED, body.by, body.reason)


@router.get(
    "/{incident_id}/attachments/{attachment_id}",
    response_class=Response,
    responses=PROBLEMS | {200: {"content": {"application/octet-stream": {}}}, 404: {}},
)
async def download_attachment(incident_id: str, attachment_id: str, intake: Components, caller: ApiCaller) -> Response:
    """A file that came with the incident (a faxed PDF, a screenshot), as it arrived."""
    incident = await _load(intake.incidents, caller.tenant_id, incident_id)
    found = None
    if any(ref.attachment_id == attachment_id for ref in incident.attachments):
        found = await intake.attachments.fetch(caller.tenant_id, attachment_id)
    if found is None:
        raise Problem(
            404,
            "Attachment not found",
            f"{incident.number} has no attachment {attachment_id}; "
            "the incident lists its attachments under 'attachments'.",
            kind="attachment-not-found",
        )
    ref, content = found
    # Served as a download, never rendered inline: the content comes from outside.
    # HTTP headers are Latin-1: an ASCII fallback name plus the real one in RFC 5987 form.
    fallback = ref.filename.encode("ascii", "replace").decode().replace("\\", "_").replace('"', "_")
    disposition = f"attachment; filename=\"{fallback}\"; filename*=UTF-8''{quote(ref.filename, safe='')}"
    return Response(
        content,
        media_type=ref.content_type,
        headers={"Content-Disposition": disposition, "X-Content-Type-Options": "nosniff"},
    )
