"""The customer web form: a server-rendered page per tenant portal link, no JavaScript needed.

* ``GET  /portal/{portal_slug}`` — the form: name, email, phone, affected system (the tenant's
  systems, or "not sure"), impact in plain words, a one-line title and a description.
* ``POST /portal/{portal_slug}`` — a plain HTML form post (url-encoded or multipart). Invalid
  input re-renders the form with 422, the entered values and one message per field; a valid
  report opens the incident and answers ``303 See Other`` to its status page.
* ``GET  /portal/{portal_slug}/incidents/{incident_id}`` — the incident number, its status and
  the public part of its timeline; the same link, reloaded, always shows the current status.

The portal slug is the secret in the link the support company gives its customer (see
``TenantProfile.portal_slug``); an unknown or inactive slug gets a 404 page saying the link is
wrong, without telling which slugs exist.

Double submit: the form carries a random one-time ``form_token`` (see ``domain/web_form.py``):
pressing "Send" twice, or the browser re-posting, leads to the same incident; a different report
sent with a used token gets the form back (409) with its text kept and a message.

CSRF: the portal has no login, cookie or session. A cross-site request therefore carries no
ambient authority the attacker lacks — whoever knows the link can already submit the form —
so there is nothing for a CSRF token to protect, and the form token is only an idempotency
key. What does matter for an unauthenticated capability link is covered by headers on every
page: ``Referrer-Policy: no-referrer`` (the slug never leaks to another site),
``frame-ancestors 'none'``/``X-Frame-Options`` (no clickjacking), a CSP that allows no script
at all and posts only to our own origin, and ``Cache-Control: no-store`` (a shared computer's
history does not keep the pages; going back fetches a fresh form and token). Every value is
HTML-escaped by Jinja2's autoescape.

Rate limit: form posts count against the portal's per-minute limit (429 page, Retry-After);
viewing pages does not.
"""

from __future__ import annotations

import re
import secrets
import uuid
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import jinja2
import structlog
from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.formparsers import MultiPartException

from aftercare.events.incidents import Channel, Reporter
from aftercare.events.web import Problem
from aftercare.intake.adapters.incident_store import IncidentNotFound
from aftercare.intake.adapters.tenant_registry import Credential, TenantNotFound
from aftercare.intake.components import IntakeComponents
from aftercare.intake.domain import field_limits as limits
from aftercare.intake.domain.impact import IMPACTS, impact_words, severity_for
from aftercare.intake.domain.incident import Incident, IncidentReport
from aftercare.intake.domain.public_timeline import public_timeline, status_label
from aftercare.intake.entrypoints.dependencies import Components, enforce_rate_limit
from aftercare.intake.service_layer.submit_web_form import FormAlreadyUsed, form_sent_before, submit_web_form

log = structlog.stdlib.get_logger("aftercare.intake.web_portal")

router = APIRouter(tags=["web portal"])

TEMPLATES_DIR = Path(__file__).resolve().parent.parent / "templates"
_templates = jinja2.Environment(
    loader=jinja2.FileSystemLoader(TEMPLATES_DIR),
    autoescape=True,  # every page, every value: customer text is shown back to customers
    undefined=jinja2.StrictUndefined,
    trim_blocks=True,
    lstrip_blocks=True,
)

SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'; "
    "frame-ancestors 'none'; base-uri 'none'",
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}

_SLUG = re.compile(r"^[A-Za-z0-9_-]{8,64}$")
_TOKEN = re.compile(r"^[0-9a-f]{32}$")
_EMAIL = re.compile(r"^[^@\s<>\"']+@[^@\s<>\"']+\.[^@\s<>\"']+$")
_PHONE = re.compile(r"^\+?[0-9 ()./-]{5,40}$")
LIMITS = {
    "name": limits.NAME_CHARS,
    "email": limits.EMAIL_ADDRESS_CHARS,
    "phone": limits.PHONE_CHARS,
    "title": limits.TITLE_CHARS,
    "description": limits.DESCRIPTION_CHARS,
}
FIELDS = ("name", "email", "phone", "system", "impact", "title", "description")


def _when(moment: datetime) -> str:
    return moment.strftime("%d %b %Y, %H:%M UTC")


_templates.filters["when"] = _when


@dataclass(frozen=True)
class Portal:
    credential: Credential
    tenant_id: str
    name: str
    systems: list[str]


@dataclass
class PortalForm:
    """What the customer typed, and what is wrong with it (field name -> message)."""

    values: dict[str, str]
    form_token: str
    errors: dict[str, str] = field(default_factory=dict)


# --- rules of the form (no I/O) ----------------------------------------------------------


def new_form_token() -> str:
    return secrets.token_hex(16)


def _clean(value: Any, *, multiline: bool = False) -> str:
    if not isinstance(value, str):
        return ""  # an uploaded file where text belongs: treated as not filled in
    # The store refuses NUL and control characters carry nothing a person typed.
    kept = "".join(ch for ch in value if ch >= " " or (multiline and ch in "\n\t"))
    return kept.strip() if not multiline else kept.replace("\r\n", "\n").strip()


def read_form(raw: Any, systems: list[str]) -> PortalForm:
    """Validate a submission server-side; every problem gets a message saying what to do."""
    values = {name: _clean(raw.get(name), multiline=name == "description") for name in FIELDS}
    errors: dict[str, str] = {}
    token = _clean(raw.get("form_token"))
    if not _TOKEN.match(token):
        token = new_form_token()
        errors["form"] = "This form had expired. Check your entries and send it again."
    if not values["name"]:
        errors["name"] = "Enter your name."
    if not values["email"]:
        errors["email"] = "Enter your email address, so we can send you updates."
    elif len(values["email"]) > LIMITS["email"] or not _EMAIL.match(values["email"]):
        errors["email"] = "Enter an email address like name@example.com."
    if values["phone"] and (not _PHONE.match(values["phone"]) or sum(c.isdigit() for c in values["phone"]) < 5):
        errors["phone"] = "Enter a phone number using digits, spaces and an optional leading +, or leave it empty."
    if values["system"] and values["system"] not in systems:
        values["system"] = ""
        errors["system"] = "Choose a system from the list, or 'Not sure'."
    if values["impact"] not in IMPACTS:
        values["impact"] = ""
        errors["impact"] = "Choose how badly the problem affects you."
    if not values["title"]:
        errors["title"] = "Describe the problem in one line."
    for name in ("name", "phone", "title", "description"):
        if name not in errors and len(values[name]) > LIMITS[name]:
            errors[name] = f"Use at most {LIMITS[name]} characters here (you used {len(values[name])})."
    return PortalForm(values=values, form_token=token, errors=errors)


def report_from(form: PortalForm) -> IncidentReport:
    values = form.values
    return IncidentReport(
        title=values["title"],
        description=values["description"],
        channel=Channel.WEB,
        severity=severity_for(values["impact"]),
        reporter=Reporter(name=values["name"], email=values["email"].lower(), phone=values["phone"] or None),
        system=values["system"] or None,
        details={"impact": impact_words(values["impact"])},
    )


# --- pages ---------------------------------------------------------------------------------


def _page(template: str, *, status: int = 200, headers: dict[str, str] | None = None, **context: Any) -> HTMLResponse:
    html = _templates.get_template(template).render(**context)
    return HTMLResponse(html, status_code=status, headers=SECURITY_HEADERS | (headers or {}))


def _message(
    status: int,
    heading: str,
    *paragraphs: str,
    portal_name: str = "",
    link_url: str = "",
    link_text: str = "",
    headers: dict[str, str] | None = None,
) -> HTMLResponse:
    return _page(
        "portal_message.html",
        status=status,
        headers=headers,
        heading=heading,
        paragraphs=list(paragraphs),
        portal_name=portal_name,
        link_url=link_url,
        link_text=link_text,
    )


def _wrong_link() -> HTMLResponse:
    return _message(
        404,
        "This link is not right",
        "We could not find a support page at this address. Check that you copied the whole link "
        "from your support provider's message, or ask them to send it again.",
    )


def _form_page(portal: Portal, form: PortalForm, *, status: int = 200) -> HTMLResponse:
    return _page(
        "portal_form.html",
        status=status,
        portal_name=portal.name,
        systems=portal.systems,
        impacts=[(key, words) for key, (words, _) in IMPACTS.items()],
        values=form.values,
        errors=form.errors,
        form_token=form.form_token,
        limits=LIMITS,
    )


def _base_url(intake: IntakeComponents) -> str:
    return str(intake.settings.public_base_url).rstrip("/")


def _form_url(intake: IntakeComponents, slug: str) -> str:
    return f"{_base_url(intake)}/portal/{slug}"


def _status_url(intake: IntakeComponents, slug: str, incident_id: str) -> str:
    return f"{_base_url(intake)}/portal/{slug}/incidents/{incident_id}"


async def _portal(intake: IntakeComponents, slug: str) -> Portal | None:
    if not _SLUG.match(slug):
        return None
    credential = await intake.tenants.by_portal_slug(slug)
    if credential is None:
        return None
    try:
        tenant = await intake.tenants.get(credential.tenant_id)
    except TenantNotFound:
        return None
    if not tenant.active:
        return None
    return Portal(
        credential=credential,
        tenant_id=tenant.tenant_id,
        name=tenant.name,
        systems=[system.name for system in tenant.systems],
    )


def _to_status_page(intake: IntakeComponents, slug: str, incident_id: str) -> RedirectResponse:
    # 303: the browser follows with a GET, so reloading the status page never re-posts the form.
    return RedirectResponse(
        _status_url(intake, slug, incident_id) + "?reported=1", status_code=303, headers=SECURITY_HEADERS
    )


@router.get("/portal/{portal_slug}", response_class=HTMLResponse, responses={404: {"content": {"text/html": {}}}})
async def report_form(portal_slug: str, intake: Components) -> HTMLResponse:
    """The web form where a customer reports a problem (plain HTML, works without JavaScript)."""
    portal = await _portal(intake, portal_slug)
    if portal is None:
        return _wrong_link()
    empty = {name: "" for name in FIELDS}
    return _form_page(portal, PortalForm(values=empty, form_token=new_form_token()))


@router.post(
    "/portal/{portal_slug}",
    response_class=HTMLResponse,
    status_code=303,
    responses={400: {}, 404: {}, 422: {"description": "The form again, with a message per field"}, 429: {}},
)
async def submit_report(portal_slug: str, request: Request, intake: Components) -> Response:
    """Open an incident from the web form; answers 303 to its status page, or the form again (422)."""
    portal = await _portal(intake, portal_slug)
    if portal is None:
        return _wrong_link()
    try:
        raw = await request.form(max_files=0, max_fields=50)
    except (StarletteHTTPException, MultiPartException):
        return _message(
            400,
            "The form could not be read",
            "Your browser sent the form in a way we could not read. Please open the form again and send it from there.",
            portal_name=portal.name,
            link_url=_form_url(intake, portal_slug),
            link_text="Open the form",
        )
    token = _clean(raw.get("form_token"))
    # The same form sent twice is not a new report, so it does not count against the limit.
    if not (_TOKEN.match(token) and await form_sent_before(intake.incidents, portal.tenant_id, token)):
        try:
            await enforce_rate_limit(intake, portal.credential)
        except Problem as refused:
            retry_after = refused.headers.get("Retry-After", "60")
            return _message(
                429,
                "Too many reports right now",
                f"This support page has received many reports in the last minute. Please wait "
                f"{retry_after} seconds and send your report again; if it is urgent, call us.",
                portal_name=portal.name,
                headers={"Retry-After": retry_after},
            )
    form = read_form(raw, portal.systems)
    if form.errors:
        return _form_page(portal, form, status=422)
    try:
        outcome = await submit_web_form(intake.incidents, portal.tenant_id, form.form_token, report_from(form))
    except FormAlreadyUsed as used:
        # A second, different report from a form already sent (another tab, the back button):
        # keep what they typed and let them send it as a new report.
        form.form_token = new_form_token()
        form.errors["form"] = (
            f"This form was already sent as incident {used.incident.number}. Your new report below "
            "was NOT sent yet: check it and press Send to report it as a new problem."
        )
        return _form_page(portal, form, status=409)
    log.info(
        "web form report",
        tenant_id=portal.tenant_id,
        incident_id=outcome.incident.incident_id,
        number=outcome.incident.number,
        created=outcome.created,
    )
    return _to_status_page(intake, portal_slug, outcome.incident.incident_id)


@router.get(
    "/portal/{portal_slug}/incidents/{incident_id}",
    response_class=HTMLResponse,
    responses={404: {"content": {"text/html": {}}}},
)
async def incident_status(
    portal_slug: str, incident_id: str, intake: Components, reported: str | None = None
) -> HTMLResponse:
    """An incident's number, current status and public timeline (reload to refresh)."""
    portal = await _portal(intake, portal_slug)
    if portal is None:
        return _wrong_link()
    incident: Incident | None = None
    try:
        uuid.UUID(incident_id)
        incident = await intake.incidents.get(portal.tenant_id, incident_id)
    except (ValueError, IncidentNotFound):
        incident = None
    if incident is None:
        # The same page whether it does not exist or belongs to another tenant.
        return _message(
            404,
            "No incident at this link",
            "We could not find this incident. Check that you copied the whole link.",
            portal_name=portal.name,
            link_url=_form_url(intake, portal_slug),
            link_text="Report a problem",
        )
    return _page(
        "portal_incident.html",
        portal_name=portal.name,
        incident=incident,
        just_reported=reported == "1",
        status_label=status_label(incident.status),
        status_url=_status_url(intake, portal_slug, incident.incident_id),
        form_url=_form_url(intake, portal_slug),
        timeline=public_timeline(incident.timeline),
    )
