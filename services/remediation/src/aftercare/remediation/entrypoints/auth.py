"""Who is calling: operators with a role (viewer < responder < admin), from a bearer token.

Interim: the operators come from settings until the shared operator directory
(``aftercare.events.operators``) is on main; the dependency's name and result stay the same.
"""

from __future__ import annotations

import secrets
from collections.abc import Awaitable, Callable
from typing import Literal

from fastapi import Request

from aftercare.events.web import Problem
from aftercare.remediation.settings import OperatorConfig

Role = Literal["viewer", "responder", "admin"]
RANK: dict[str, int] = {"viewer": 1, "responder": 2, "admin": 3}


def require_role(role: Role) -> Callable[[Request], Awaitable[OperatorConfig]]:
    async def dependency(request: Request) -> OperatorConfig:
        header = request.headers.get("authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise Problem(
                401,
                "Not authenticated",
                "Send Authorization: Bearer <your operator token>.",
                headers={"WWW-Authenticate": "Bearer"},
            )
        operators: list[OperatorConfig] = request.app.state.settings.operators
        operator = next((o for o in operators if secrets.compare_digest(o.token, token.strip())), None)
        if operator is None:
            raise Problem(
                401, "Not authenticated", "The operator token is not valid.", headers={"WWW-Authenticate": "Bearer"}
            )
        if RANK[operator.role] < RANK[role]:
            raise Problem(
                403, "Not allowed", f"This needs the {role} role; you are a {operator.role}.", kind="forbidden"
            )
        return operator

    return dependency
