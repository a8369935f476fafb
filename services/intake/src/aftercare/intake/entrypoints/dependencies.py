"""What HTTP endpoints depend on: the intake components, the caller's tenant, the rate limit."""

from __future__ import annotations

import hmac
from typing import Annotated

from fastapi import Depends, Header, Request

from aftercare.events.web import Problem
from aftercare.intake.adapters.tenant_registry import Credential
from aftercare.intake.components import IntakeComponents


async def components(request: Request) -> IntakeComponents:
    # async: FastAPI runs a plain ``def`` dependency in a worker thread, a thread hop per request.
    found: IntakeComponents | None = getattr(request.app.state, "intake", None)
    if found is None:
        raise Problem(
            503,
            "Starting up",
            "Intake is still connecting to Kafka and the store; retry shortly.",
            kind="starting-up",
            headers={"Retry-After": "5"},
        )
    return found


Components = Annotated[IntakeComponents, Depends(components)]


def bearer(authorization: str | None) -> str | None:
    if authorization and authorization[:7].lower() == "bearer ":
        return authorization[7:].strip() or None
    return None


def inactive_tenant(credential: Credential, door: str) -> Problem:
    """The answer to a deactivated tenant's credential (a 403: retrying will not help)."""
    return Problem(
        403,
        "Account deactivated",
        f"The account this {door} belongs to ({credential.tenant_id}) is deactivated, so nothing it sends "
        "opens or changes incidents. Ask your support provider to reactivate it.",
        kind="tenant-inactive",
    )


async def enforce_rate_limit(intake: IntakeComponents, credential: Credential) -> None:
    verdict = await intake.limiter.hit(f"{credential.kind}|{credential.credential_id}")
    if not verdict.allowed:
        raise Problem(
            429,
            "Too many requests",
            f"This integration may send {intake.limiter.per_minute} requests a minute; "
            f"retry after {verdict.retry_after_s} s.",
            kind="rate-limited",
            headers={"Retry-After": str(verdict.retry_after_s)},
        )


async def api_key_credential(
    intake: Components,
    authorization: Annotated[str | None, Header(description="Bearer <API key>")] = None,
    x_api_key: Annotated[str | None, Header(description="The API key, if not sent as a Bearer token")] = None,
) -> Credential:
    key = bearer(authorization) or x_api_key
    if not key:
        raise Problem(
            401,
            "API key required",
            "Send your API key as 'Authorization: Bearer <key>' or 'X-API-Key'.",
            kind="unauthenticated",
            headers={"WWW-Authenticate": "Bearer"},
        )
    credential = await intake.tenants.by_api_key(key)
    if credential is None:
        raise Problem(
            401,
            "Unknown API key",
            "The API key is not valid (revoked or mistyped); ask your support contact for a new one.",
            kind="unauthenticated",
            headers={"WWW-Authenticate": "Bearer"},
        )
    if not credential.active:
        raise inactive_tenant(credential, "API key")
    await enforce_rate_limit(intake, credential)
    return credential


ApiCaller = Annotated[Credential, Depends(api_key_credential)]


async def require_admin(
    intake: Components,
    authorization: Annotated[str | None, Header(description="Bearer <admin token>")] = None,
) -> None:
    expected = intake.settings.admin_token
    if not expected:
        raise Problem(
            403,
            "Admin API disabled",
            "Set AFTERCARE_INTAKE_ADMIN_TOKEN to enable the admin API.",
            kind="admin-disabled",
        )
    token = bearer(authorization)
    if token is None:
        raise Problem(
            401,
            "Admin token required",
            "Send 'Authorization: Bearer <admin token>'.",
            kind="unauthenticated",
            headers={"WWW-Authenticate": "Bearer"},
        )
    if not hmac.compare_digest(token.encode(), expected.encode()):
        raise Problem(
            403, "Wrong admin token", "The admin token does not match AFTERCARE_INTAKE_ADMIN_TOKEN.", kind="forbidden"
        )


AdminOnly = Depends(require_admin)
