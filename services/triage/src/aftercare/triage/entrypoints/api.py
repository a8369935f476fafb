"""Triage's HTTP API: the rules (read: viewer; change: admin), the dry run, diagnostic targets
and their probe history (for the dashboard's sparkline)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Header, Request, Response
from pydantic import BaseModel, ConfigDict, Field

from aftercare.events.incidents import Channel, Severity
from aftercare.events.operators import Operator, require_role
from aftercare.events.web import Problem
from aftercare.triage.adapters.rule_store import RuleConflict
from aftercare.triage.components import TriageComponents
from aftercare.triage.domain.rules import RuleSpec
from aftercare.triage.service_layer.rules_admin import RulesAdmin, SampleIncident, UnknownTenant

router = APIRouter(tags=["triage"])

Viewer = Annotated[Operator, Depends(require_role("viewer"))]
Admin = Annotated[Operator, Depends(require_role("admin"))]


def components(request: Request) -> TriageComponents:
    triage: TriageComponents | None = getattr(request.app.state, "triage", None)
    if triage is None:
        raise Problem(
            503,
            "Starting",
            "Triage is still connecting to the store and Kafka; retry shortly.",
            kind="unavailable",
            headers={"Retry-After": "2"},
        )
    return triage


Triage = Annotated[TriageComponents, Depends(components)]


def rule_view(document: dict[str, Any]) -> dict[str, Any]:
    return {
        "name": document["_id"],
        "version": document["version"],
        "deleted": document.get("deleted", False),
        "changed_by": document.get("changed_by"),
        "changed_at": document.get("changed_at"),
        "rule": document.get("spec"),
    }


def _conflict(error: RuleConflict) -> Problem:
    return Problem(409, "Rule conflict", str(error), kind="rule-conflict")


@router.get("/v1/rules", summary="List the rules")
async def list_rules(triage: Triage, _: Viewer) -> dict[str, Any]:
    """Every current rule with its version and who changed it last."""
    return {"rules": [rule_view(document) for document in await triage.rule_store.all()]}


@router.get("/v1/rules/{name}", summary="One rule")
async def get_rule(name: str, triage: Triage, _: Viewer) -> dict[str, Any]:
    """The rule's current version."""
    document = await triage.rule_store.get(name)
    if document is None or document.get("deleted"):
        raise Problem(
            404, "No such rule", f"There is no rule named {name!r}; GET /v1/rules lists them.", kind="not-found"
        )
    return rule_view(document)


@router.get("/v1/rules/{name}/versions", summary="Every version of a rule")
async def rule_versions(name: str, triage: Triage, _: Viewer) -> dict[str, Any]:
    """Every version of the rule, oldest first, with who made each change and when."""
    history = await triage.rule_store.history(name)
    if not history:
        raise Problem(404, "No such rule", f"There is no rule named {name!r}.", kind="not-found")
    return {
        "versions": [
            {
                "version": doc["version"],
                "action": doc.get("action"),
                "changed_by": doc.get("changed_by"),
                "changed_at": doc.get("changed_at"),
                "deleted": doc.get("deleted", False),
                "rule": doc.get("spec"),
            }
            for doc in history
        ]
    }


@router.post("/v1/rules", status_code=201, summary="Create a rule")
async def create_rule(spec: RuleSpec, triage: Triage, who: Admin, response: Response) -> dict[str, Any]:
    """Add a rule (version 1). A rule that does not parse, names an unknown field or has a regex
    that could run away is refused with 422 saying what is wrong; an existing name with 409."""
    try:
        document = await triage_rules(triage).change(spec, by=who.email, expect_version=0, action="created")
    except RuleConflict as error:
        raise _conflict(error) from None
    response.headers["Location"] = f"/v1/rules/{spec.name}"
    return rule_view(document)


@router.put("/v1/rules/{name}", summary="Change a rule")
async def update_rule(
    name: str,
    spec: RuleSpec,
    triage: Triage,
    who: Admin,
    if_match: Annotated[str | None, Header(description="The version you read; refused with 409 if it moved on")] = None,
) -> dict[str, Any]:
    """Replace the rule with a new version. Send the version you changed in ``If-Match`` to be
    told (409) when someone else changed it meanwhile."""
    if spec.name != name:
        raise Problem(
            422,
            "Name mismatch",
            f"The body names {spec.name!r} but the URL {name!r}; rename by delete and create.",
            kind="invalid-request",
        )
    expected: int | None = None
    if if_match is not None:
        text = if_match.strip().strip('"')
        if not text.isdigit():
            raise Problem(
                400, "Bad If-Match", 'If-Match must be the rule\'s version number, e.g. "3".', kind="invalid-request"
            )
        expected = int(text)
    try:
        document = await triage_rules(triage).change(spec, by=who.email, expect_version=expected, action="updated")
    except RuleConflict as error:
        raise _conflict(error) from None
    return rule_view(document)


@router.delete("/v1/rules/{name}", summary="Delete a rule")
async def delete_rule(name: str, triage: Triage, who: Admin) -> dict[str, Any]:
    """Retire the rule; its versions stay readable."""
    try:
        document = await triage_rules(triage).change(
            None, name=name, by=who.email, expect_version=None, action="deleted"
        )
    except RuleConflict as error:
        raise Problem(404, "No such rule", str(error), kind="not-found") from None
    return rule_view(document)


class SampleIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    tenant_id: str = Field(min_length=1)
    title: str = Field(min_length=1, max_length=1000)
    description: str = Field(default="", max_length=20000)
    channel: Channel = Channel.API
    severity: Severity = Severity.ERROR
    source: str | None = None
    system: str | None = None
    labels: dict[str, str] = Field(default_factory=dict)


class DryRunIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    rules: list[RuleSpec] = Field(
        default_factory=list, max_length=500, description="Rules to add or replace (by name)."
    )
    remove: list[str] = Field(default_factory=list, description="Names of rules to leave out.")
    incident: SampleIn | None = Field(default=None, description="A sample incident; or leave out and set 'last'.")
    last: int = Field(default=20, ge=1, le=500, description="Without a sample: the last N real incidents.")


@router.post("/v1/rules:dry-run", summary="What a rule set would decide")
async def dry_run(body: DryRunIn, triage: Triage, _: Viewer) -> dict[str, Any]:
    """Decide a sample incident (or the last N real ones) with the current rules changed as
    proposed, beside what the current rules decide (sample) or what was decided (real ones),
    and list the differences. Changes nothing."""
    sample = SampleIncident(**body.incident.model_dump()) if body.incident else None
    try:
        outcomes = await triage_rules(triage).dry_run(
            changes=body.rules, removed=body.remove, sample=sample, last=body.last
        )
    except UnknownTenant as error:
        raise Problem(
            422,
            "Unknown tenant",
            f"Triage knows no tenant {error.args[0]!r}; use a tenant_id registered at intake.",
            kind="unknown-tenant",
        ) from None
    changed = sum(1 for outcome in outcomes if outcome["differences"])
    return {"incidents": outcomes, "changed": changed}


def triage_rules(triage: TriageComponents) -> RulesAdmin:
    return RulesAdmin(triage.rule_store, triage.rules, triage.tenants, triage.incidents)


@router.get("/v1/targets", summary="Registered diagnostic targets and their health")
async def list_targets(triage: Triage, _: Viewer) -> dict[str, Any]:
    """Every target regular diagnostics probe, with the last result and current health."""
    return {
        "targets": [
            {
                "id": document["_id"],
                "tenant_id": document["tenant_id"],
                "system": document["system"],
                "target": document["target"],
                "interval_s": document["interval_s"],
                "health": document.get("health"),
                "last": document.get("last"),
            }
            for document in await triage.targets.all()
        ]
    }


@router.get("/v1/targets/{tenant_id}/{system}/history", summary="A target's probes of the last 24 hours")
async def target_history(tenant_id: str, system: str, triage: Triage, _: Viewer, hours: int = 24) -> dict[str, Any]:
    """Each probe's time, status and latency, oldest first: the dashboard's sparkline."""
    if not 1 <= hours <= 24:
        raise Problem(
            422,
            "Invalid request",
            "hours must be between 1 and 24 (history is kept for 24 hours).",
            kind="invalid-request",
        )
    identifier = f"{tenant_id}|{system}"
    if await triage.targets.get(identifier) is None:
        raise Problem(
            404, "No such target", f"{system!r} of {tenant_id!r} has no registered diagnostic target.", kind="not-found"
        )
    samples = await triage.targets.samples(identifier, datetime.now(UTC), hours)
    return {"target": identifier, "samples": samples}
