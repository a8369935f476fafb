"""Admin API (admin token): register tenants and issue the credentials their channels use."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Path, Response
from pydantic import BaseModel, ConfigDict, Field

from aftercare.events.web import Problem
from aftercare.intake.adapters.tenant_registry import CredentialTaken, TenantNotFound
from aftercare.intake.domain.tenant import TENANT_ID_PATTERN, InboundEmails, PhoneLine, Tenant, TenantProfile
from aftercare.intake.entrypoints.dependencies import AdminOnly, Components

router = APIRouter(prefix="/admin/tenants", tags=["admin"], dependencies=[AdminOnly])

TenantId = Annotated[str, Path(pattern=TENANT_ID_PATTERN, description="lowercase letters, digits and dashes")]
PROBLEMS: dict[int | str, dict[str, Any]] = {401: {}, 403: {}, 404: {}, 409: {}, 422: {}}


class NewSecret(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(default="default", min_length=1, max_length=100)
    value: str | None = Field(
        default=None,
        min_length=16,
        max_length=200,
        description="Leave out to have a random one generated (recommended).",
    )


class IssuedSecret(BaseModel):
    id: str
    name: str
    secret: str = Field(description="Shown only now; store it. Intake keeps only a digest.")


class CredentialView(BaseModel):
    kind: str
    id: str
    name: str | None


class TenantView(Tenant):
    credentials: list[CredentialView] = Field(default_factory=list)
    portal_url: str


async def _view(intake: Components, tenant: Tenant) -> TenantView:
    credentials = [
        CredentialView(
            kind=c.kind, id=c.credential_id if c.kind in ("api-key", "pagerduty") else (c.name or ""), name=c.name
        )
        for c in await intake.tenants.list_credentials(tenant.tenant_id)
        if c.kind != "portal"
    ]
    return TenantView(
        **tenant.model_dump(),
        credentials=credentials,
        portal_url=f"{intake.settings.public_base_url}/portal/{tenant.portal_slug}",
    )


async def _tenant(intake: Components, tenant_id: str) -> Tenant:
    try:
        return await intake.tenants.get(tenant_id)
    except TenantNotFound:
        raise Problem(
            404,
            "Tenant not found",
            f"No tenant '{tenant_id}'; create it with PUT /admin/tenants/{tenant_id}.",
            kind="tenant-not-found",
        ) from None


def _taken(error: CredentialTaken) -> Problem:
    return Problem(409, "Credential in use", f"{error}; choose another value.", kind="credential-taken")


@router.put("/{tenant_id}", response_model=TenantView, responses=PROBLEMS)
async def put_tenant(tenant_id: TenantId, profile: TenantProfile, intake: Components, response: Response) -> TenantView:
    """Create or replace a tenant's profile; the other services get it as TenantUpserted."""
    try:
        tenant, created = await intake.tenants.upsert(tenant_id, profile)
    except CredentialTaken as error:
        raise _taken(error) from None
    response.status_code = 201 if created else 200
    return await _view(intake, tenant)


@router.get("", response_model=list[TenantView], responses=PROBLEMS)
async def list_tenants(intake: Components) -> list[TenantView]:
    """Every tenant, with its credentials' ids (never the secrets)."""
    return [await _view(intake, tenant) for tenant in await intake.tenants.all()]


@router.get("/{tenant_id}", response_model=TenantView, responses=PROBLEMS)
async def get_tenant(tenant_id: TenantId, intake: Components) -> TenantView:
    """One tenant with its credentials' ids (never the secrets)."""
    return await _view(intake, await _tenant(intake, tenant_id))


@router.post("/{tenant_id}/api-keys", status_code=201, response_model=IssuedSecret, responses=PROBLEMS)
async def issue_api_key(tenant_id: TenantId, body: NewSecret, intake: Components) -> IssuedSecret:
    """Issue an API key for the JSON API; shown once."""
    await _tenant(intake, tenant_id)
    try:
        key_id, key = await intake.tenants.issue_api_key(tenant_id, body.name, body.value)
    except CredentialTaken as error:
        raise _taken(error) from None
    return IssuedSecret(id=key_id, name=body.name, secret=key)


@router.delete("/{tenant_id}/api-keys/{key_id}", status_code=204, responses=PROBLEMS)
async def revoke_api_key(tenant_id: TenantId, key_id: str, intake: Components) -> Response:
    """Revoke an API key at once."""
    if not await intake.tenants.revoke_api_key(tenant_id, key_id):
        raise Problem(
            404, "API key not found", f"Tenant '{tenant_id}' has no API key '{key_id}'.", kind="credential-not-found"
        )
    return Response(status_code=204)


@router.post("/{tenant_id}/pagerduty-routing-keys", status_code=201, response_model=IssuedSecret, responses=PROBLEMS)
async def issue_routing_key(tenant_id: TenantId, body: NewSecret, intake: Components) -> IssuedSecret:
    """Issue a PagerDuty Events API v2 routing key (32 hex characters); shown once."""
    await _tenant(intake, tenant_id)
    try:
        key_id, key = await intake.tenants.issue_routing_key(tenant_id, body.name, body.value)
    except CredentialTaken as error:
        raise _taken(error) from None
    return IssuedSecret(id=key_id, name=body.name, secret=key)


@router.put("/{tenant_id}/alertmanager-token", response_model=IssuedSecret, responses=PROBLEMS)
async def set_alertmanager_token(tenant_id: TenantId, body: NewSecret, intake: Components) -> IssuedSecret:
    """Set (replace) the bearer token Alertmanager sends; shown once."""
    await _tenant(intake, tenant_id)
    try:
        token = await intake.tenants.set_alertmanager_token(tenant_id, body.value)
    except CredentialTaken as error:
        raise _taken(error) from None
    return IssuedSecret(id="alertmanager", name=body.name, secret=token)


@router.put("/{tenant_id}/inbound-emails", response_model=InboundEmails, responses=PROBLEMS)
async def set_inbound_emails(tenant_id: TenantId, body: InboundEmails, intake: Components) -> InboundEmails:
    """Addresses whose mail opens incidents for this tenant (replaces the list)."""
    await _tenant(intake, tenant_id)
    try:
        return InboundEmails(addresses=await intake.tenants.set_inbound_emails(tenant_id, body))
    except CredentialTaken as error:
        raise _taken(error) from None


@router.put("/{tenant_id}/phone-line", status_code=204, responses=PROBLEMS)
async def set_phone_line(tenant_id: TenantId, body: PhoneLine, intake: Components) -> Response:
    """The tenant's support number and the telephony auth token that signs its webhooks."""
    await _tenant(intake, tenant_id)
    try:
        await intake.tenants.set_phone_line(tenant_id, body)
    except CredentialTaken as error:
        raise _taken(error) from None
    return Response(status_code=204)
