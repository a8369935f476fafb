"""Remediation's HTTP API: runbooks, runs and approvals, escalations, per-tenant settings, audit.

Parse, call a use case, render: the decisions live in ``domain`` and ``service_layer``.
"""

from __future__ import annotations

import html
import json
from datetime import timedelta
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request, Response
from fastapi.encoders import jsonable_encoder
from fastapi.responses import HTMLResponse, JSONResponse
from pydantic import BaseModel, Field

from aftercare.events.operators import Operator, require_role
from aftercare.events.web import Problem
from aftercare.remediation.adapters.credentials import CredentialKeyMissing
from aftercare.remediation.components import RemediationComponents, utc_now
from aftercare.remediation.domain.escalation import EscalationPolicy
from aftercare.remediation.domain.runbook import IncidentFacts, RunbookInvalid
from aftercare.remediation.service_layer.escalations import LinkRefused
from aftercare.remediation.service_layer.runs import ApprovalProblem

router = APIRouter(prefix="/v1")

Viewer = Annotated[Operator, Depends(require_role("viewer"))]
Responder = Annotated[Operator, Depends(require_role("responder"))]
Admin = Annotated[Operator, Depends(require_role("admin"))]

HIDDEN = {"outbox", "outbox_pending", "_id", "rev"}


def components(request: Request) -> RemediationComponents:
    found: RemediationComponents | None = getattr(request.app.state, "remediation", None)
    if found is None:
        raise Problem(
            503,
            "Not ready",
            "Remediation is still connecting to the store and Kafka; retry in a few seconds.",
            kind="unavailable",
            headers={"Retry-After": "5"},
        )
    return found


Parts = Annotated[RemediationComponents, Depends(components)]


def may_see(operator: Operator, tenant_id: str | None) -> None:
    """Operators limited to some tenants see nothing of the others (404, as if it did not exist)."""
    if tenant_id is not None and not operator.may_see(tenant_id):
        raise Problem(404, "Not found", "There is nothing here you may see.", kind="not-found")


def encoded(value: Any) -> dict[str, Any]:
    result: dict[str, Any] = jsonable_encoder(value)
    return result


def public(document: dict[str, Any]) -> dict[str, Any]:
    return encoded({key: value for key, value in document.items() if key not in HIDDEN})


def invalid_runbook(error: RunbookInvalid) -> Problem:
    return Problem(
        422,
        "Invalid runbook",
        f"The runbook was not stored: {error}. Fix each entry in 'errors' and send it again.",
        kind="invalid-runbook",
        errors=error.errors,
    )


async def runbook_source(request: Request) -> str | dict[str, Any]:
    raw = await request.body()
    if not raw.strip():
        raise Problem(400, "Empty runbook", "Send the runbook as YAML (application/yaml) or JSON.", kind="empty-body")
    try:
        text = raw.decode()
    except UnicodeDecodeError:
        raise Problem(400, "Not text", "The runbook must be UTF-8 YAML or JSON.", kind="invalid-encoding") from None
    if "json" in request.headers.get("content-type", ""):
        try:
            document = json.loads(text)
        except json.JSONDecodeError as error:
            raise Problem(400, "Invalid JSON", f"The body is not valid JSON: {error}.", kind="invalid-json") from None
        if not isinstance(document, dict):
            raise invalid_runbook(RunbookInvalid([{"field": "(runbook)", "message": "a runbook is a JSON object"}]))
        return document
    return text


# --- runbooks ------------------------------------------------------------------------------


@router.get("/runbooks", tags=["runbooks"])
async def list_runbooks(_: Viewer, parts: Parts) -> dict[str, Any]:
    """Every runbook with its current version."""
    return {"runbooks": [public(doc) | {"name": doc["_id"]} for doc in await parts.store.list_runbooks()]}


@router.post("/runbooks/validate", tags=["runbooks"])
async def validate_runbook(request: Request, _: Viewer) -> dict[str, Any]:
    """Check a runbook without storing it: 200 with the parsed runbook, or a 422 problem."""
    from aftercare.remediation.domain.runbook import parse_runbook

    try:
        runbook = parse_runbook(await runbook_source(request))
    except RunbookInvalid as error:
        raise invalid_runbook(error) from None
    return {"valid": True, "runbook": runbook.model_dump(mode="json")}


@router.put(
    "/runbooks/{name}",
    tags=["runbooks"],
    status_code=201,
    responses={200: {"description": "Unchanged: the current version is the same"}, 422: {"description": "Invalid"}},
)
async def put_runbook(name: str, request: Request, operator: Admin, parts: Parts, response: Response) -> dict[str, Any]:
    """Store a new version of a runbook (YAML or JSON body); refused with what is wrong if invalid."""
    try:
        runbook, version = await parts.runbooks.save(await runbook_source(request), by=operator.operator_id, name=name)
    except RunbookInvalid as error:
        raise invalid_runbook(error) from None
    if version is None:
        response.status_code = 200
        found = await parts.store.current_runbook(name)
        version = found[1] if found else None
    return {"name": runbook.name, "version": version}


@router.get("/runbooks/{name}", tags=["runbooks"])
async def get_runbook(name: str, _: Viewer, parts: Parts) -> dict[str, Any]:
    """The current version of a runbook, as stored and as written."""
    found = await parts.store.current_runbook(name)
    if found is None:
        raise Problem(404, "No such runbook", f"There is no runbook named {name!r}; GET /v1/runbooks lists them.")
    runbook, version, document = found
    return encoded(
        {
            "name": name,
            "version": version,
            "runbook": runbook.model_dump(mode="json"),
            "source": document.get("source"),
            "created_by": document.get("created_by"),
            "created_at": document.get("created_at"),
        }
    )


@router.get("/runbooks/{name}/versions", tags=["runbooks"])
async def runbook_versions(name: str, _: Viewer, parts: Parts) -> dict[str, Any]:
    """Every stored version: who stored it and when."""
    return {"versions": [public(doc) for doc in await parts.store.runbook_history(name)]}


@router.get("/runbooks/{name}/versions/{version}", tags=["runbooks"])
async def runbook_version(name: str, version: int, _: Viewer, parts: Parts) -> dict[str, Any]:
    """One stored version of a runbook."""
    document = await parts.store.runbook_version(name, version)
    if document is None:
        raise Problem(404, "No such version", f"Runbook {name!r} has no version {version}.")
    return public(document)


@router.delete("/runbooks/{name}", tags=["runbooks"], status_code=204)
async def delete_runbook(name: str, operator: Admin, parts: Parts) -> Response:
    """Retire a runbook: no new runs use it; its versions and runs stay for the audit."""
    if not await parts.store.delete_runbook(name, operator.operator_id, utc_now()):
        raise Problem(404, "No such runbook", f"There is no runbook named {name!r}.")
    return Response(status_code=204)


class DryRunIncident(BaseModel):
    tenant_id: str = Field(min_length=1)
    incident_id: str = "dry-run"
    number: str = "INC-DRY-RUN"
    system: str | None = None
    category: str | None = None
    priority: str | None = None
    severity: str | None = None
    source: str | None = None
    labels: dict[str, str] = Field(default_factory=dict)


@router.post("/runbooks/{name}/dry-run", tags=["runbooks"])
async def dry_run(name: str, incident: DryRunIncident, operator: Viewer, parts: Parts) -> dict[str, Any]:
    """What the runbook would do for such an incident, parameters filled, without doing it."""
    may_see(operator, incident.tenant_id)
    plan = await parts.runbooks.dry_run(name, IncidentFacts(**incident.model_dump()))
    if plan is None:
        raise Problem(404, "No such runbook", f"There is no runbook named {name!r}.")
    return plan


def run_summary(document: dict[str, Any]) -> dict[str, Any]:
    keep = public(document)
    keep.pop("runbook", None)
    return keep | {"runbook_name": document.get("runbook_name"), "incident_id": document["_id"]}


@router.get("/runbooks/{name}/audit", tags=["audit"])
async def runbook_audit(
    name: str, _: Viewer, parts: Parts, limit: Annotated[int, Query(ge=1, le=500)] = 100
) -> dict[str, Any]:
    """Runs of this runbook, oldest first: each step's inputs, outputs and timing, approvals."""
    return {"runs": [run_summary(doc) for doc in await parts.store.runs_of({"runbook_name": name}, limit=limit)]}


@router.get("/runbooks/{name}/stats", tags=["audit"])
async def runbook_stats(name: str, _: Viewer, parts: Parts) -> dict[str, Any]:
    """The runbook's success rate over the last 30 days (finished runs only)."""
    since = utc_now() - timedelta(days=30)
    runs = await parts.store.runs_of({"runbook_name": name, "created_at": {"$gte": since}}, limit=100000)
    outcomes: dict[str, int] = {}
    for document in runs:
        outcomes[document["status"]] = outcomes.get(document["status"], 0) + 1
    finished = sum(outcomes.get(status, 0) for status in ("succeeded", "escalated", "rejected"))
    return {
        "runbook": name,
        "since": since.isoformat(),
        "runs": len(runs),
        "finished": finished,
        "outcomes": outcomes,
        "success_rate": (outcomes.get("succeeded", 0) / finished) if finished else None,
    }


# --- runs and approvals ----------------------------------------------------------------------


@router.get("/runs/{run_id}", tags=["runs"])
async def get_run(run_id: str, operator: Viewer, parts: Parts) -> dict[str, Any]:
    """One run: status, cursor, every step's record, approval."""
    document = await parts.store.find_run(run_id)
    if document is None or not operator.may_see(str(document.get("tenant_id"))):
        raise Problem(404, "No such run", f"There is no run {run_id}.")
    return run_summary(document) | {"runbook": document.get("runbook")}


class Decision(BaseModel):
    note: str = Field(default="", max_length=2000)


async def _decide(
    parts: RemediationComponents, run_id: str, approved: bool, operator: Operator, note: str
) -> dict[str, Any]:
    try:
        run = await parts.engine.decide_approval(run_id, approved, operator.operator_id, operator.email, note)
    except ApprovalProblem as error:
        titles = {403: "Not an approver", 404: "No such run", 409: "Not waiting for approval"}
        raise Problem(error.status, titles.get(error.status, "Refused"), str(error)) from None
    return encoded({"run_id": run.run_id, "status": run.status, "approval": run.approval})


@router.post("/runs/{run_id}/approve", tags=["runs"])
async def approve(run_id: str, operator: Responder, parts: Parts, decision: Decision | None = None) -> dict[str, Any]:
    """Approve a run waiting for a person: it queues for a slot and runs."""
    return await _decide(parts, run_id, True, operator, (decision or Decision()).note)


@router.post("/runs/{run_id}/reject", tags=["runs"])
async def reject(run_id: str, operator: Responder, parts: Parts, decision: Decision | None = None) -> dict[str, Any]:
    """Reject a run waiting for a person: it ends without touching the system."""
    return await _decide(parts, run_id, False, operator, (decision or Decision()).note)


# --- escalations -------------------------------------------------------------------------------


@router.get("/incidents/{incident_id}/audit", tags=["audit"])
async def incident_audit(incident_id: str, operator: Viewer, parts: Parts) -> dict[str, Any]:
    """Everything remediation did for an incident: its run (steps, approvals) and escalations."""
    loaded = await parts.store.runs_of({"_id": incident_id}, limit=1)
    escalations = await parts.store.escalations_of(incident_id)
    incident = await parts.store.incident(incident_id)
    tenant_id = (incident or (loaded[0] if loaded else None) or (escalations[0] if escalations else {})).get(
        "tenant_id"
    )
    if (not loaded and not escalations and incident is None) or not operator.may_see(str(tenant_id)):
        raise Problem(404, "Unknown incident", f"Remediation has nothing on incident {incident_id}.")
    return {
        "incident": public(incident or {}),
        "run": run_summary(loaded[0]) if loaded else None,
        "escalations": [public(doc) for doc in escalations],
    }


class Acknowledgement(BaseModel):
    note: str = Field(default="", max_length=2000)


@router.post("/incidents/{incident_id}/acknowledge", tags=["escalations"])
async def acknowledge(incident_id: str, operator: Responder, parts: Parts) -> dict[str, Any]:
    """Acknowledge the incident's escalations: nobody further is paged."""
    incident = await parts.store.incident(incident_id)
    may_see(operator, (incident or {}).get("tenant_id"))
    count = await parts.escalations.acknowledge_incident(incident_id, operator.operator_id, "api")
    return {"incident_id": incident_id, "acknowledged": count}


def _ack_page(title: str, body: str, status: int = 200) -> HTMLResponse:
    return HTMLResponse(
        f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title></head>"
        f"<body><h1>{html.escape(title)}</h1>{body}</body></html>",
        status_code=status,
    )


@router.get("/escalations/{escalation_id}/acknowledge", tags=["escalations"], response_class=HTMLResponse)
async def acknowledge_page(escalation_id: str, token: str, parts: Parts) -> HTMLResponse:
    """The page a paged person opens from the link: one button acknowledges (a GET changes
    nothing, so mail scanners that follow links cannot acknowledge by accident)."""
    document = await parts.store.escalation_by_id(escalation_id)
    if document is None or token != parts.escalations.link_token(escalation_id):
        return _ack_page("Link not valid", "<p>This acknowledge link is wrong or mistyped.</p>", 404)
    reason = html.escape(str(document.get("reason", "")))
    return _ack_page(
        f"Escalation for incident {document['incident_id']}",
        f"<p>{reason}</p><p>Status: {html.escape(str(document.get('status')))}</p>"
        f"<form method='post'><input type='hidden' name='token' value='{html.escape(token)}'>"
        "<button type='submit'>I am on it: acknowledge</button></form>",
    )


@router.post("/escalations/{escalation_id}/acknowledge", tags=["escalations"])
async def acknowledge_link(escalation_id: str, request: Request, parts: Parts) -> Response:
    """Acknowledge through the page's link (the secret token in the query or the form)."""
    token = request.query_params.get("token")
    if token is None and "form" in request.headers.get("content-type", ""):
        form = await request.form()
        value = form.get("token")
        token = value if isinstance(value, str) else None
    try:
        escalation = await parts.escalations.acknowledge_link(escalation_id, token or "")
    except LinkRefused as error:
        raise Problem(404, "Link not valid", str(error), kind="invalid-link") from None
    if "text/html" in request.headers.get("accept", ""):
        return _ack_page("Acknowledged", "<p>Thank you: nobody else will be paged for this escalation.</p>")
    return JSONResponse(jsonable_encoder({"escalation_id": escalation_id, "status": escalation.status}))


# --- tenants: escalation policy, kill switch, credentials --------------------------------------


@router.put("/tenants/{tenant_id}/escalation-policy", tags=["tenants"])
async def put_policy(tenant_id: str, policy: EscalationPolicy, operator: Admin, parts: Parts) -> dict[str, Any]:
    """Set the tenant's escalation levels (contacts, acknowledgement timeouts)."""
    may_see(operator, tenant_id)
    await parts.store.save_policy(tenant_id, policy, operator.operator_id, utc_now())
    return {"tenant_id": tenant_id, "policy": policy.model_dump(mode="json")}


@router.get("/tenants/{tenant_id}/escalation-policy", tags=["tenants"])
async def get_policy(tenant_id: str, operator: Viewer, parts: Parts) -> dict[str, Any]:
    """The tenant's escalation levels."""
    may_see(operator, tenant_id)
    policy = await parts.store.policy(tenant_id)
    if policy is None:
        raise Problem(404, "No policy", f"Tenant {tenant_id} has no escalation policy; the default pages 'on-call'.")
    return {"tenant_id": tenant_id, "policy": policy.model_dump(mode="json")}


class KillSwitch(BaseModel):
    paused: bool
    reason: str = Field(default="", max_length=500)


@router.put("/tenants/{tenant_id}/kill-switch", tags=["tenants"])
async def put_kill_switch(tenant_id: str, switch: KillSwitch, operator: Admin, parts: Parts) -> dict[str, Any]:
    """Pause (or resume) all automation for a tenant: runs not yet touching a system escalate instead."""
    may_see(operator, tenant_id)
    await parts.store.set_kill_switch(tenant_id, switch.paused, switch.reason, operator.operator_id, utc_now())
    parts.engine.forget_tenant_settings(tenant_id)
    return {"tenant_id": tenant_id, "paused": switch.paused, "reason": switch.reason}


@router.get("/tenants/{tenant_id}/kill-switch", tags=["tenants"])
async def get_kill_switch(tenant_id: str, operator: Viewer, parts: Parts) -> dict[str, Any]:
    """Whether automation is paused for the tenant."""
    may_see(operator, tenant_id)
    paused = await parts.store.automation_paused(tenant_id)
    return encoded(
        {
            "tenant_id": tenant_id,
            "paused": bool(paused),
            **({"since": paused.get("at"), "reason": paused.get("reason"), "by": paused.get("by")} if paused else {}),
        }
    )


class Credential(BaseModel):
    bearer_token: str = Field(min_length=1, max_length=4096)


@router.put("/tenants/{tenant_id}/systems/{system}/credential", tags=["tenants"], status_code=204)
async def put_credential(
    tenant_id: str, system: str, credential: Credential, operator: Admin, parts: Parts
) -> Response:
    """Store the credential runbooks use on this system's admin endpoint (encrypted; never shown again)."""
    may_see(operator, tenant_id)
    try:
        await parts.vault.store(tenant_id, system, credential.bearer_token, operator.operator_id, utc_now())
    except CredentialKeyMissing as error:
        raise Problem(503, "Credentials cannot be stored", str(error), kind="no-credential-key") from None
    return Response(status_code=204)


@router.get("/tenants/{tenant_id}/systems/{system}/credential", tags=["tenants"])
async def get_credential(tenant_id: str, system: str, operator: Admin, parts: Parts) -> dict[str, Any]:
    """Whether a credential is stored, who set it and when (never the credential)."""
    may_see(operator, tenant_id)
    described = await parts.vault.describe(tenant_id, system)
    if described is None:
        raise Problem(404, "No credential", f"No credential is stored for {system} of tenant {tenant_id}.")
    return encoded(described)


@router.delete("/tenants/{tenant_id}/systems/{system}/credential", tags=["tenants"], status_code=204)
async def delete_credential(tenant_id: str, system: str, operator: Admin, parts: Parts) -> Response:
    """Forget the credential."""
    may_see(operator, tenant_id)
    if not await parts.vault.remove(tenant_id, system):
        raise Problem(404, "No credential", f"No credential is stored for {system} of tenant {tenant_id}.")
    return Response(status_code=204)
