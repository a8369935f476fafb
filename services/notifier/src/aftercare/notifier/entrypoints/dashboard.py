"""The operators' dashboard: sign-in, the live incident list (server-sent events), an incident's
timeline across services, pending approvals with approve/reject, incidents per hour.

Sessions live in the notifier's store (any instance answers any browser); the cookie holds only
a random session id. Every form carries the session's CSRF token. Operators see only the tenants
they may see; ``viewer`` sees, ``responder`` acts. Approve/reject call remediation's API as the
signed-in operator, with the operator API token given at sign-in (kept in the session document,
never in the browser), since operator tokens are issued by intake and only their digests travel.
"""

from __future__ import annotations

import html
import json
import secrets
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import urlencode

import httpx
from fastapi import APIRouter, Form, Query, Request
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response, StreamingResponse

from aftercare.events.operators import Operator, Role
from aftercare.events.web import Problem
from aftercare.notifier.components import NotifierComponents
from aftercare.notifier.domain.incident_view import opened_per_hour, pending_approvals, row_json
from aftercare.notifier.domain.target_latency import latency_line
from aftercare.notifier.entrypoints.dependencies import Components

router = APIRouter(prefix="/dashboard", include_in_schema=False)

SESSION_COOKIE = "aftercare_session"
LOGIN_CSRF_COOKIE = "aftercare_login_csrf"
HEARTBEAT_S = 15.0

STYLE = """
body{font-family:system-ui,sans-serif;margin:1.5em;color:#222}
table{border-collapse:collapse;width:100%}td,th{padding:.3em .5em;border-bottom:1px solid #ddd;text-align:left}
.breached{color:#fff;background:#c0392b;font-weight:bold}.running{color:#1e8449}
.P1{color:#c0392b;font-weight:bold}.P2{color:#d35400}.new{animation:flash 2s}
@keyframes flash{from{background:#fff3b0}to{background:none}}
nav a{margin-right:1em}.muted{color:#777}form.inline{display:inline}
"""


def _page(title: str, body: str) -> HTMLResponse:
    return HTMLResponse(
        f"<!doctype html><html lang='en'><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
        f"<style>{STYLE}</style></head><body>{body}</body></html>"
    )


def _e(value: Any) -> str:
    return html.escape("" if value is None else str(value))


async def _session(request: Request, notifier: NotifierComponents) -> tuple[dict[str, Any], Operator] | None:
    session_id = request.cookies.get(SESSION_COOKIE)
    if not session_id:
        return None
    session = await notifier.store.db["sessions"].find_one({"_id": session_id})
    if session is None or session["expires_at"] < datetime.now(UTC):
        return None
    directory = notifier.operators
    operator_event = await directory.get(session["operator_id"]) if directory else None
    if operator_event is None or not operator_event.active:
        return None
    return session, Operator.from_event(operator_event)


def _login_page(error: str = "", csrf: str | None = None) -> HTMLResponse:
    token = csrf or secrets.token_urlsafe(24)
    page = _page(
        "Sign in - Aftercare",
        "<h1>Aftercare operators</h1>"
        + (f"<p class='breached'>{_e(error)}</p>" if error else "")
        + "<form method='post' action='/dashboard/login'>"
        f"<input type='hidden' name='csrf' value='{token}'>"
        "<p><label>Email <input name='email' type='email' required autocomplete='username'></label></p>"
        "<p><label>Password <input name='password' type='password' required autocomplete='current-password'>"
        "</label></p>"
        "<p><label>Operator API token (responders: lets the dashboard approve and reject as you) "
        "<input name='api_token' type='password' autocomplete='off'></label></p>"
        "<p><button type='submit'>Sign in</button></p></form>",
    )
    page.set_cookie(LOGIN_CSRF_COOKIE, token, httponly=True, samesite="strict", path="/dashboard")
    return page


@router.get("/login")
async def login_form() -> HTMLResponse:
    """The sign-in form."""
    return _login_page()


@router.post("/login")
async def login(
    request: Request,
    notifier: Components,
    email: Annotated[str, Form(max_length=254)],
    password: Annotated[str, Form(max_length=1024)],
    csrf: Annotated[str, Form(max_length=100)],
    api_token: Annotated[str, Form(max_length=200)] = "",
) -> Response:
    """Check the operator's password (Argon2, the operator directory) and open a session."""
    if not secrets.compare_digest(csrf, request.cookies.get(LOGIN_CSRF_COOKIE, "")):
        return _login_page("The form expired; please sign in again.")
    directory = notifier.operators
    operator = await directory.verify_login(email, password) if directory else None
    response: Response
    if operator is None:
        response = _login_page("Unknown email or wrong password.")
        response.status_code = 401
        return response
    if not operator.active:
        response = _login_page("This operator is deactivated; ask an admin.")
        response.status_code = 403
        return response
    if api_token:
        holder = await directory.by_token(api_token) if directory else None
        if holder is None or holder.operator_id != operator.operator_id:
            response = _login_page("That API token is not yours; leave it empty or use your own.")
            response.status_code = 401
            return response
    session_id = secrets.token_urlsafe(32)
    await notifier.store.db["sessions"].insert_one(
        {
            "_id": session_id,
            "operator_id": operator.operator_id,
            "api_token": api_token or None,
            "csrf": secrets.token_urlsafe(24),
            "expires_at": datetime.now(UTC) + timedelta(hours=notifier.settings.session_hours),
        }
    )
    response = RedirectResponse("/dashboard", status_code=303)
    response.set_cookie(SESSION_COOKIE, session_id, httponly=True, samesite="lax", path="/")
    response.delete_cookie(LOGIN_CSRF_COOKIE, path="/dashboard")
    return response


@router.post("/logout")
async def logout(request: Request, notifier: Components, csrf: Annotated[str, Form(max_length=100)]) -> Response:
    """End the session."""
    found = await _session(request, notifier)
    if found is not None and secrets.compare_digest(csrf, found[0]["csrf"]):
        await notifier.store.db["sessions"].delete_one({"_id": found[0]["_id"]})
    response = RedirectResponse("/dashboard/login", status_code=303)
    response.delete_cookie(SESSION_COOKIE, path="/")
    return response


def _visible(operator: Operator) -> list[str] | None:
    return None if operator.tenants is None else sorted(operator.tenants)


def _approval_html(approval: dict[str, Any], csrf: str, can_act: bool) -> str:
    # Same markup as dashboard.js builds for approvals that arrive live.
    buttons = ""
    if can_act:
        for action in ("approve", "reject"):
            buttons += (
                f"<form class='inline decide' method='post' action='/dashboard/runs/{_e(approval['run_id'])}/{action}'>"
                f"<input type='hidden' name='csrf' value='{_e(csrf)}'>"
                f"<button type='submit' name='{action}'>{action.title()}</button></form> "
            )
    return (
        f"<li id='approval-{_e(approval['approval_id'])}' data-incident='{_e(approval['incident_id'])}'>"
        f"<b>{_e(approval['number'])}</b> {_e(approval['step'])}: {_e(approval['reason'])} {buttons}</li>"
    )


def _matches(view: dict[str, Any], tenant: str | None, status: str | None, priority: str | None) -> bool:
    return (
        (not tenant or view.get("tenant_id") == tenant)
        and (not status or view.get("status") == status)
        and (not priority or view.get("priority") == priority)
    )


def _hourly_chart(views: list[dict[str, Any]], now: datetime) -> str:
    hours = Counter(
        int((now - v["reported_at"]).total_seconds() // 3600)
        for v in views
        if isinstance(v.get("reported_at"), datetime) and now - v["reported_at"] < timedelta(hours=24)
    )
    peak = max(hours.values(), default=1)
    bars = "".join(
        f"<rect x='{(23 - h) * 12}' y='{40 - 38 * hours.get(h, 0) / peak:.1f}' width='10' "
        f"height='{38 * hours.get(h, 0) / peak:.1f}' fill='#2e86c1'><title>{hours.get(h, 0)} incidents "
        f"{h}h ago</title></rect>"
        for h in range(24)
    )
    return f"<svg id='per-hour' width='288' height='42' role='img' aria-label='incidents per hour'>{bars}</svg>"


def sparkline(tenant_id: str, series: list[int]) -> str:
    """An inline SVG line of incidents opened per hour (oldest hour left), scaled to its own peak."""
    peak = max(max(series, default=0), 1)
    step = 120 / max(len(series) - 1, 1)
    points = " ".join(f"{i * step:.1f},{22 - 20 * count / peak:.1f}" for i, count in enumerate(series))
    total = sum(series)
    return (
        f"<svg class='spark' id='spark-{_e(tenant_id)}' width='122' height='24' role='img' "
        f"aria-label='{total} incidents opened in the last 24 hours' data-counts='{','.join(map(str, series))}'>"
        f"<title>{_e(tenant_id)}: {total} incidents opened in the last 24 h (peak {peak} an hour)</title>"
        f"<polyline fill='none' stroke='#2e86c1' stroke-width='1.5' points='{points}'/></svg>"
    )


def _tenant_sparklines(views: list[dict[str, Any]], now: datetime) -> str:
    rows = "".join(
        f"<tr><td>{_e(tenant)}</td><td>{sparkline(tenant, series)}</td><td>{sum(series)}</td></tr>"
        for tenant, series in opened_per_hour(views, now).items()
    )
    if not rows:
        return "<p class='muted'>No incidents in the last 24 hours.</p>"
    return (
        "<table id='per-tenant' style='width:auto'><tr><th>Tenant</th><th>Opened per hour, 24 h</th>"
        f"<th>Total</th></tr>{rows}</table>"
    )


def latency_sparkline(document: dict[str, Any]) -> str:
    """An inline SVG line of one target's latest probe latencies (``domain/target_latency.py``)."""
    line = latency_line(list(document.get("samples") or []))
    key = f"{document.get('tenant_id', '')}-{document.get('system', '')}"
    latest = "no answer" if line.latest_ms is None else f"{line.latest_ms:.0f} ms"
    title = (
        f"{document.get('system', '')}: last {line.samples} probes, latest {latest}, "
        f"peak {line.peak_ms:.0f} ms, {line.failed} without an answer"
    )
    colour = "#c0392b" if document.get("status") in ("down", "refused") else "#2e86c1"
    return (
        f"<svg class='latency' id='latency-{_e(key)}' width='122' height='24' role='img' aria-label='{_e(title)}'>"
        f"<title>{_e(title)}</title><polyline fill='none' stroke='{colour}' stroke-width='1.5' "
        f"points='{line.points}'/></svg>"
    )


def _target_latencies(documents: list[dict[str, Any]], now: datetime) -> str:
    # A target not probed for a day was removed or its schedule stopped: it is not news.
    recent = [
        d for d in documents if isinstance(d.get("probed_at"), datetime) and now - d["probed_at"] < timedelta(hours=24)
    ]
    if not recent:
        return "<p class='muted'>No scheduled diagnostics in the last 24 hours.</p>"
    rows = "".join(
        f"<tr><td>{_e(d.get('tenant_id'))}</td><td>{_e(d.get('system'))}</td><td>{latency_sparkline(d)}</td>"
        f"<td>{_e(d.get('status') or '')}</td><td class='muted'>{_e(d.get('target'))}</td></tr>"
        for d in recent
    )
    return (
        "<table id='target-latency' style='width:auto'><tr><th>Tenant</th><th>System</th>"
        f"<th>Probe latency, latest probes</th><th>Now</th><th>Target</th></tr>{rows}</table>"
    )


def _demo_controls(notifier: NotifierComponents, operator: Operator, csrf: str) -> str:
    # Demo mode only (a configured demo system) and only for admins: it breaks a real system.
    if not notifier.settings.demo_system_url or not operator.can(Role.ADMIN):
        return ""
    buttons = "".join(
        f"<form class='inline' method='post' action='/dashboard/demo/break'>"
        f"<input type='hidden' name='csrf' value='{_e(csrf)}'><input type='hidden' name='mode' value='{mode}'>"
        f"<button type='submit' id='demo-break-{mode}'>{label}</button></form> "
        for mode, label in (("soft", "Break the demo system"), ("hard", "Break it beyond its runbook"))
    )
    return f"<h2>Demo</h2><p id='demo'>{buttons}<span class='muted'>{_e(notifier.settings.demo_system_url)}</span></p>"


@router.get("")
async def dashboard(
    request: Request,
    notifier: Components,
    tenant: Annotated[str | None, Query(max_length=100)] = None,
    status: Annotated[str | None, Query(max_length=40)] = None,
    priority: Annotated[str | None, Query(max_length=4)] = None,
) -> Response:
    """The live incident list with filters, pending approvals and incidents per hour."""
    found = await _session(request, notifier)
    if found is None:
        return RedirectResponse("/dashboard/login", status_code=303)
    session, operator = found
    now = datetime.now(UTC)
    # Before the store is read: the live connection sends every row pushed from here on, so an
    # incident that changes while the page loads is not missed.
    since = notifier.live.stamp()
    views = await notifier.read_model.list(_visible(operator))
    shown = [v for v in views if _matches(v, tenant, status, priority)]
    rows = "".join(_row_html(row_json(v, now)) for v in shown)
    can_act = operator.can(Role.RESPONDER)
    approvals = "".join(
        _approval_html(approval, session["csrf"], can_act) for view in views for approval in pending_approvals(view)
    )
    notice = _e(request.query_params.get("notice", ""))
    body = (
        f"<nav><b>Aftercare</b> <span class='muted'>{_e(operator.name)} ({operator.role.value})</span> "
        f"<form class='inline' method='post' action='/dashboard/logout'><input type='hidden' name='csrf' "
        f"value='{session['csrf']}'><button>Sign out</button></form></nav>"
        + f"<p id='notice' role='status'>{notice}</p>"
        + _demo_controls(notifier, operator, session["csrf"])
        + f"<h2>Incidents per hour (24 h)</h2>{_hourly_chart(views, now)}"
        + f"<h2>Opened per tenant</h2>{_tenant_sparklines(views, now)}"
        + "<h2>Scheduled diagnostics</h2>"
        + _target_latencies(await notifier.target_latencies.of_tenants(_visible(operator)), now)
        + f"<h2>Pending approvals</h2><ul id='approvals'>{approvals}</ul>"
        + "<h2>Incidents</h2><form method='get'>"
        f"<input name='tenant' placeholder='tenant' value='{_e(tenant)}'> "
        f"<input name='status' placeholder='status' value='{_e(status)}'> "
        f"<input name='priority' placeholder='P1..P4' value='{_e(priority)}'> <button>Filter</button></form>"
        "<table><thead><tr><th>Number</th><th>Tenant</th><th>Title</th><th>Priority</th><th>Status</th>"
        "<th>SLA</th><th>Channel</th><th>Diagnosis</th><th>Sent</th></tr></thead>"
        f"<tbody id='incidents'>{rows}</tbody></table>"
        f"<script>const FILTER={json.dumps({'tenant': tenant, 'status': status, 'priority': priority})};"
        f"const CSRF={json.dumps(session['csrf'])};const CAN_ACT={json.dumps(can_act)};const SINCE={since:.6f};"
        f"{LIVE_JS}</script>"
    )
    return _page("Dashboard - Aftercare", body)


def _row_html(row: dict[str, Any]) -> str:
    sla = row["sla"]
    return (
        f"<tr id='row-{_e(row['incident_id'])}' data-tenant='{_e(row['tenant_id'])}'>"
        f"<td><a href='/dashboard/incidents/{_e(row['incident_id'])}'>{_e(row['number'])}</a></td>"
        f"<td>{_e(row['tenant_id'])}</td><td>{_e(row['title'])}</td>"
        f"<td class='{_e(row['priority'])}'>{_e(row['priority'])}</td><td>{_e(row['status'])}</td>"
        f"<td class='sla {sla}' data-due='{_e(row['sla_due'] or '')}' data-state='{sla}'>{sla}</td>"
        f"<td>{_e(row['channel'])}</td><td>{_e(row['verdict'])}</td><td>{row['notifications_sent']}</td></tr>"
    )


# The browser side: rows arrive as server-sent events; SLA countdowns tick locally and turn red.
LIVE_JS = (Path(__file__).resolve().parent.parent / "templates" / "dashboard.js").read_text()


@router.get("/events")
async def events(
    request: Request,
    notifier: Components,
    since: Annotated[float | None, Query(description="The page's stamp: rows from then on are sent first.")] = None,
) -> Response:
    """Server-sent events: each changed incident the operator may see, as a JSON row; first the
    rows since the page was made (``since``) or since the last one this browser got
    (Last-Event-ID, sent by the browser when it reconnects)."""
    found = await _session(request, notifier)
    if found is None:
        return Response(status_code=401)
    _, operator = found
    last_event_id = request.headers.get("last-event-id")
    if last_event_id:
        try:
            since = float(last_event_id)
        except ValueError:
            raise Problem(
                400,
                "Invalid Last-Event-ID",
                f"Last-Event-ID {last_event_id[:40]!r} is not one this dashboard sent (seconds since the epoch)",
            ) from None
    subscription = notifier.live.subscribe(since)

    async def stream() -> Any:
        try:
            yield b": connected\n\n"
            while True:
                rows = subscription.take()
                if rows is None:
                    # Rows this browser missed are no longer in memory: the page, read again, is whole.
                    yield b"event: reload\ndata: missed rows\n\n"
                    return
                for row in rows:
                    if operator.may_see(row.tenant_id):
                        yield row.frame  # rendered once for every browser (adapters/live_feed.py)
                if not rows and not await subscription.wait(HEARTBEAT_S):
                    yield b": heartbeat\n\n"
        finally:
            notifier.live.unsubscribe(subscription)

    return StreamingResponse(stream(), media_type="text/event-stream", headers={"Cache-Control": "no-store"})


@router.get("/incidents/{incident_id}")
async def incident_timeline(incident_id: str, request: Request, notifier: Components) -> Response:
    """One incident's whole timeline across services, notifications included."""
    found = await _session(request, notifier)
    if found is None:
        return RedirectResponse("/dashboard/login", status_code=303)
    _, operator = found
    view = await notifier.read_model.get(incident_id)
    if view is None or not operator.may_see(str(view.get("tenant_id"))):
        page = _page("Not found", "<p>No such incident, or not one you may see.</p>")
        page.status_code = 404
        return page
    entries = await notifier.read_model.timeline(incident_id)
    items = "".join(
        f"<tr><td>{_e(entry['time'])}</td><td>{_e(entry['source'])}</td><td>{_e(entry['type'])}</td>"
        f"<td>{_e(entry['summary'])}</td></tr>"
        for entry in entries
    )
    return _page(
        f"{view.get('number')} - Aftercare",
        f"<p><a href='/dashboard'>&larr; all incidents</a></p><h1>{_e(view.get('number'))} {_e(view.get('title'))}</h1>"
        f"<p>{_e(view.get('tenant_id'))} &middot; {_e(view.get('priority'))} &middot; {_e(view.get('status'))}</p>"
        f"{_trace_line(view.get('trace_id'), notifier.settings.trace_url_template)}"
        f"<table id='timeline'><tr><th>When</th><th>Service</th><th>Event</th><th>What</th></tr>{items}</table>",
    )


def _trace_line(trace_id: str | None, template: str) -> str:
    if not trace_id:
        return "<p class='muted' id='trace'>No trace id (the report carried no trace context).</p>"
    shown = f"<code>{_e(trace_id)}</code>"
    if template:
        shown = f"<a href='{_e(template.replace('{trace_id}', trace_id))}'>{shown}</a>"
    return f"<p id='trace'>Trace {shown} <span class='muted'>(every service's logs carry it as trace_id)</span></p>"


@router.post("/demo/break")
async def break_demo_system(
    request: Request,
    notifier: Components,
    csrf: Annotated[str, Form(max_length=100)],
    mode: Annotated[str, Form(pattern="^(soft|hard)$")] = "soft",
) -> Response:
    """Demo mode: break the demo customer system (admins only), as ``make demo-break`` does."""
    found = await _session(request, notifier)
    if found is None:
        return RedirectResponse("/dashboard/login", status_code=303)
    session, operator = found
    if not secrets.compare_digest(csrf, session["csrf"]):
        page = _page("Refused", "<p>This form is stale or forged (CSRF check failed); reload the dashboard.</p>")
        page.status_code = 403
        return page
    base = notifier.settings.demo_system_url
    if not base or not operator.can(Role.ADMIN):
        page = _page("Refused", "<p>Only an admin may break the demo system, and only in demo mode.</p>")
        page.status_code = 403
        return page
    try:
        reply = await notifier.http.post(f"{base.rstrip('/')}/admin/break", params={"mode": mode})
        outcome = (
            f"The demo system is broken ({mode}); regular diagnostics will notice it shortly."
            if reply.status_code < 300
            else f"The demo system answered {reply.status_code}."
        )
    except httpx.HTTPError as error:
        outcome = f"The demo system is unreachable ({type(error).__name__}) at {base}."
    return RedirectResponse("/dashboard?" + urlencode({"notice": outcome}), status_code=303)


@router.post("/runs/{run_id}/{action}")
async def decide(
    run_id: str,
    action: str,
    request: Request,
    notifier: Components,
    csrf: Annotated[str, Form(max_length=100)],
) -> Response:
    """Approve or reject a remediation run, as the signed-in operator (remediation's API).

    A plain form post is answered with a redirect to the dashboard carrying the outcome; the
    dashboard's script posts the same form with ``Accept: application/json`` and gets the outcome
    as JSON, so the page stays put and the approval leaves the list when remediation's
    ApprovalGranted/ApprovalRejected reaches the read model (server-sent events)."""
    wants_json = "application/json" in request.headers.get("accept", "")

    def answer(outcome: str, status: int, remediation_status: int | None = None) -> Response:
        if wants_json:
            return JSONResponse(
                {"outcome": outcome, "remediation_status": remediation_status, "run_id": run_id}, status_code=status
            )
        if status in (401, 403) and remediation_status is None:
            page = _page("Refused", f"<p>{_e(outcome)}</p><p><a href='/dashboard'>Back to the dashboard</a></p>")
            page.status_code = status
            return page
        return RedirectResponse("/dashboard?" + urlencode({"notice": outcome}), status_code=303)

    found = await _session(request, notifier)
    if found is None:
        if wants_json:
            return answer("Your session ended; sign in again.", 401)
        return RedirectResponse("/dashboard/login", status_code=303)
    session, operator = found
    if action not in ("approve", "reject") or not secrets.compare_digest(csrf, session["csrf"]):
        return answer("This form is stale or forged (CSRF check failed); reload the dashboard.", 403)
    if not operator.can(Role.RESPONDER):
        return answer(f"Approving and rejecting needs the responder role; you are {operator.role.value}.", 403)
    if not session.get("api_token"):
        return answer("Approving needs your operator API token at sign-in; sign out and in again with it.", 403)
    url = f"{notifier.settings.remediation_base_url.rstrip('/')}/v1/runs/{run_id}/{action}"
    try:
        reply = await notifier.http.post(
            url,
            json={"note": f"from the dashboard by {operator.name}"},
            headers={"Authorization": f"Bearer {session['api_token']}"},
        )
    except httpx.HTTPError as error:
        return answer(f"{action} failed: remediation unreachable ({type(error).__name__}); try again.", 502)
    outcome = f"{action}: remediation answered {reply.status_code}"
    if reply.status_code >= 400 and reply.headers.get("content-type", "").endswith("json"):
        outcome += f" ({reply.json().get('detail', '')})"
    status = 200 if reply.status_code < 400 else reply.status_code if reply.status_code < 500 else 502
    return answer(outcome, status, reply.status_code)
