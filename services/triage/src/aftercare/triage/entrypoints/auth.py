"""Who may read and change triage's rules and targets.

Until the shared operator directory (``aftercare.events.operators``) is on main, triage knows
two bearer tokens from its settings: the admin token (may change rules) and the viewer token
(may read). The dependency has the agreed shape, ``require_role(role)`` returning who acts, so
switching to the operator directory changes this file only.
"""

from __future__ import annotations

import hmac
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Literal

from fastapi import Request

from aftercare.events.web import Problem

Role = Literal["viewer", "responder", "admin"]
RANK = {"viewer": 1, "responder": 2, "admin": 3}


@dataclass(frozen=True)
class Operator:
    id: str
    name: str
    role: Role


def require_role(role: Role) -> Callable[[Request], Awaitable[Operator]]:
    async def operator(request: Request) -> Operator:
        settings = request.app.state.settings
        header = request.headers.get("authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token:
            raise Problem(
                401,
                "Not signed in",
                "Send 'Authorization: Bearer <operator token>'.",
                kind="unauthenticated",
                headers={"WWW-Authenticate": "Bearer"},
            )
        found: Operator | None = None
        if settings.admin_token and hmac.compare_digest(token, settings.admin_token):
            found = Operator("admin", "admin", "admin")
        elif settings.viewer_token and hmac.compare_digest(token, settings.viewer_token):
            found = Operator("viewer", "viewer", "viewer")
        if found is None:
            raise Problem(
                401,
                "Not signed in",
                "That token belongs to no operator.",
                kind="unauthenticated",
                headers={"WWW-Authenticate": "Bearer"},
            )
        if RANK[found.role] < RANK[role]:
            raise Problem(403, "Not allowed", f"This needs the {role} role; you are {found.role}.", kind="forbidden")
        return found

    return operator
