"""What the notifier's HTTP endpoints depend on: the components, and who is calling."""

from __future__ import annotations

import hmac
from typing import Annotated

from fastapi import Depends, Header, Request

from aftercare.events.web import Problem
from aftercare.notifier.components import NotifierComponents


def components(request: Request) -> NotifierComponents:
    found: NotifierComponents | None = getattr(request.app.state, "notifier", None)
    if found is None:
        raise Problem(
            503,
            "Starting up",
            "The notifier is still connecting to Kafka and the store; retry shortly.",
            kind="starting-up",
            headers={"Retry-After": "5"},
        )
    return found


Components = Annotated[NotifierComponents, Depends(components)]


async def require_admin(
    notifier: Components,
    authorization: Annotated[str | None, Header(description="Bearer <admin token>")] = None,
) -> None:
    expected = notifier.settings.admin_token
    if not expected:
        raise Problem(
            403, "Admin API disabled", "Set AFTERCARE_NOTIFIER_ADMIN_TOKEN to enable it.", kind="admin-disabled"
        )
    scheme, _, token = (authorization or "").partition(" ")
    if scheme.lower() != "bearer" or not token:
        raise Problem(
            401,
            "Admin token required",
            "Send 'Authorization: Bearer <admin token>'.",
            kind="unauthenticated",
            headers={"WWW-Authenticate": "Bearer"},
        )
    if not hmac.compare_digest(token.strip().encode(), expected.encode()):
        raise Problem(403, "Wrong admin token", "The admin token is not valid for this notifier.", kind="forbidden")


Admin = Depends(require_admin)
