"""The customer's status page (secret link, no JavaScript needed): open incidents and their
progress, the last 90 days with the uptime of each diagnosed system, and advisories that concern
the customer's systems. Operators publish advisories here too (``POST /v1/advisories``)."""

from __future__ import annotations

import html
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any

from fastapi import APIRouter, Depends
from fastapi.responses import HTMLResponse
from pydantic import BaseModel, Field

from aftercare.events.operators import Operator, require_role
from aftercare.events.tenants import TenantUpserted
from aftercare.events.web import Problem
from aftercare.notifier.domain.advisories import InvalidVersionRange
from aftercare.notifier.domain.incident_view import is_open
from aftercare.notifier.entrypoints.dependencies import Components
from aftercare.notifier.service_layer.advisories import publish_advisory

router = APIRouter()

WINDOW = timedelta(days=90)


def _e(value: Any) -> str:
    return html.escape("" if value is None else str(value))


def uptime(incidents: list[dict[str, Any]], system: str, now: datetime) -> float:
    """Share of the last 90 days the system had no open incident (overlaps counted once)."""
    start = now - WINDOW
    spans = sorted(
        (max(v["reported_at"], start), v.get("resolved_at") or now)
        for v in incidents
        if v.get("system") == system and isinstance(v.get("reported_at"), datetime)
    )
    down = timedelta()
    cursor = start
    for begin, end in spans:
        begin = max(begin, cursor)
        if end > begin:
            down += end - begin
            cursor = end
    return max(0.0, 1 - down / WINDOW)


@router.get("/status/{slug}", response_class=HTMLResponse, tags=["status page"])
async def status_page(slug: str, notifier: Components) -> HTMLResponse:
    """A tenant's status page, reached by its secret link (the same secret as the portal's)."""
    document = await notifier.store.db["tenants"].find_one({"status_page_slug": slug})
    if document is None:
        return HTMLResponse("<!doctype html><title>Not found</title><p>No status page at this link.</p>", 404)
    tenant = TenantUpserted.model_validate({k: v for k, v in document.items() if k in TenantUpserted.model_fields})
    now = datetime.now(UTC)
    views = await notifier.read_model.list([tenant.tenant_id], limit=2000)
    recent = [v for v in views if isinstance(v.get("reported_at"), datetime) and now - v["reported_at"] <= WINDOW]
    open_rows = "".join(
        f"<tr><td>{_e(v.get('number'))}</td><td>{_e(v.get('title'))}</td><td>{_e(v.get('priority'))}</td>"
        f"<td>{_e(v.get('status'))}</td><td>{_e(v.get('reported_at'))}</td></tr>"
        for v in recent
        if is_open(v)
    )
    systems = "".join(
        f"<tr><td>{_e(s.name)}</td><td>{uptime(recent, s.name, now) * 100:.2f}%</td></tr>" for s in tenant.systems
    )
    history = "".join(
        f"<tr><td>{_e(v.get('number'))}</td><td>{_e(v.get('title'))}</td><td>{_e(v.get('status'))}</td>"
        f"<td>{_e(v.get('reported_at'))}</td><td>{_e(v.get('resolved_at'))}</td></tr>"
        for v in recent
    )
    published = [
        a async for a in notifier.store.advisories.find({"affected_tenants": tenant.tenant_id}).sort("published_at", -1)
    ]
    advisories = "".join(
        f"<li><b>{_e(a['title'])}</b> ({_e(a['severity'])}{', ' + _e(a['cve']) if a.get('cve') else ''}): "
        f"{_e(a['product'])} {_e(a['affected_versions'])} on {_e(', '.join(a['affected_systems'][tenant.tenant_id]))}"
        f". {_e(a['text'])}</li>"
        for a in published
    )
    return HTMLResponse(
        "<!doctype html><html lang='en'><head><meta charset='utf-8'>"
        f"<title>{_e(tenant.name)} status</title></head><body style='font-family:sans-serif'>"
        f"<h1>{_e(tenant.name)}: service status</h1>"
        f"<h2>Open incidents</h2><table><tr><th>Number</th><th>Title</th><th>Priority</th><th>Progress</th>"
        f"<th>Reported</th></tr>{open_rows or '<tr><td colspan=5>None: all systems operational.</td></tr>'}</table>"
        f"<h2>Uptime, last 90 days</h2><table><tr><th>System</th><th>Uptime</th></tr>{systems}</table>"
        f"<h2>Advisories</h2><ul id='advisories'>{advisories or '<li>None concern your systems.</li>'}</ul>"
        f"<h2>Last 90 days</h2><table><tr><th>Number</th><th>Title</th><th>Status</th><th>Reported</th>"
        f"<th>Resolved</th></tr>{history}</table></body></html>"
    )


class AdvisoryIn(BaseModel):
    title: str = Field(min_length=1, max_length=300)
    product: str = Field(min_length=1, max_length=200)
    affected_versions: str = Field(min_length=1, max_length=200, description="PEP 440 range, e.g. '>=2.0,<2.4.3'")
    severity: str = Field(pattern="^(critical|high|medium|low)$")
    kind: str = Field(default="vulnerability", pattern="^(vulnerability|known-error)$")
    text: str = Field(default="", max_length=5000)
    cve: str | None = Field(default=None, pattern=r"^CVE-\d{4}-\d{4,}$")


@router.post("/v1/advisories", status_code=201, tags=["advisories"])
async def post_advisory(
    advisory: AdvisoryIn,
    notifier: Components,
    operator: Annotated[Operator, Depends(require_role("responder"))],
) -> dict[str, Any]:
    """Publish a known-error or vulnerability advisory: tenants whose registered systems run the
    product at a matching version are notified and see it on their status page."""
    try:
        document = await publish_advisory(
            notifier.store,
            notifier.planner,
            notifier.relay,
            published_by=operator.operator_id,
            **advisory.model_dump(),
        )
    except InvalidVersionRange as error:
        raise Problem(422, "Invalid version range", str(error), kind="invalid-version-range") from None
    return {
        "advisory_id": document["_id"],
        "affected_tenants": document["affected_tenants"],
        "affected_systems": document["affected_systems"],
    }
