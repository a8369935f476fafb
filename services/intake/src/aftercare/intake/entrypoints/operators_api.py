"""Admin API (admin token): register the support company's operators, their roles and API tokens.

Every change is announced as ``OperatorUpserted`` / ``OperatorRemoved`` on the tenants topic;
every service keeps its own copy and checks operators' tokens itself
(``aftercare.events.operators.require_role``), so a removed operator or a revoked token is
refused everywhere as soon as the event arrives.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, FastAPI, Path, Request, Response
from pydantic import BaseModel, ConfigDict, Field

from aftercare.events.operators import Role
from aftercare.events.runtime import ServiceRuntime
from aftercare.events.web import Problem
from aftercare.intake.adapters.operator_store import EmailTaken, OperatorNotFound, OperatorStore, TooManyTokens
from aftercare.intake.domain.operator import OPERATOR_ID_PATTERN, OperatorAccount, OperatorProfile
from aftercare.intake.entrypoints.dependencies import AdminOnly

router = APIRouter(prefix="/admin/operators", tags=["admin: operators"], dependencies=[AdminOnly])

OperatorId = Annotated[
    str,
    Path(pattern=OPERATOR_ID_PATTERN, description="lowercase letters, digits, dots and dashes, e.g. 'ada.lovelace'"),
]
PROBLEMS: dict[int | str, dict[str, Any]] = {401: {}, 403: {}, 404: {}, 409: {}, 422: {}}
OUTBOX_SWEEP_SECONDS = 5.0


class TokenView(BaseModel):
    id: str
    name: str
    created_at: datetime


class OperatorView(BaseModel):
    """An operator as admins see it: never the password hash or the tokens themselves."""

    operator_id: str
    name: str
    email: str
    role: Role
    active: bool
    tenants: list[str] | None = Field(description="null: every tenant")
    has_password: bool
    tokens: list[TokenView]

    @classmethod
    def of(cls, account: OperatorAccount) -> OperatorView:
        return cls(
            operator_id=account.operator_id,
            name=account.name,
            email=account.email,
            role=account.role,
            active=account.active,
            tenants=None if account.all_tenants else account.tenants,
            has_password=account.password_hash is not None,
            tokens=[TokenView(id=t.token_id, name=t.name, created_at=t.created_at) for t in account.tokens],
        )


class NewToken(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(default="default", min_length=1, max_length=100, description="What the token is for.")


class IssuedToken(BaseModel):
    id: str
    name: str
    token: str = Field(description="Shown only now; store it. Only its SHA-256 digest is kept.")


def store(request: Request) -> OperatorStore:
    found: OperatorStore | None = getattr(request.app.state, "operator_store", None)
    if found is None:
        raise Problem(
            503,
            "Starting up",
            "Intake is still connecting to Kafka and the store; retry shortly.",
            kind="starting-up",
            headers={"Retry-After": "5"},
        )
    return found


async def start(app: FastAPI, runtime: ServiceRuntime) -> None:
    """Wire the operator store once the runtime is connected (called from bootstrap)."""
    operators = OperatorStore(runtime.db, runtime.require_producer())
    await operators.ensure_indexes()
    app.state.operator_store = operators
    # Operator endpoints of intake (``require_role``) check tokens against intake's own record.
    app.state.operator_directory = operators
    runtime.every("operator-outbox-sweep", OUTBOX_SWEEP_SECONDS, operators.sweep)


def _not_found(operator_id: str) -> Problem:
    return Problem(
        404,
        "Operator not found",
        f"No operator '{operator_id}'; register it with PUT /admin/operators/{operator_id}.",
        kind="operator-not-found",
    )


@router.put("/{operator_id}", response_model=OperatorView, responses=PROBLEMS)
async def put_operator(
    operator_id: OperatorId, profile: OperatorProfile, request: Request, response: Response
) -> OperatorView:
    """Register or change an operator: name, email (sign-in), role, password (stored as an Argon2
    hash), active, and the tenants it may see (all when left out). 201 when created."""
    try:
        account, created = await store(request).upsert(operator_id, profile)
    except EmailTaken as error:
        raise Problem(409, "Email in use", f"{error}; choose another email.", kind="email-taken") from None
    response.status_code = 201 if created else 200
    return OperatorView.of(account)


@router.get("", response_model=list[OperatorView], responses=PROBLEMS)
async def list_operators(request: Request) -> list[OperatorView]:
    """Every operator with its role and its tokens' ids (never the secrets)."""
    return [OperatorView.of(account) for account in await store(request).all()]


@router.get("/{operator_id}", response_model=OperatorView, responses=PROBLEMS)
async def get_operator(operator_id: OperatorId, request: Request) -> OperatorView:
    """One operator with its role and its tokens' ids (never the secrets)."""
    try:
        return OperatorView.of(await store(request).get(operator_id))
    except OperatorNotFound:
        raise _not_found(operator_id) from None


@router.post("/{operator_id}/tokens", status_code=201, response_model=IssuedToken, responses=PROBLEMS)
async def issue_token(operator_id: OperatorId, body: NewToken, request: Request) -> IssuedToken:
    """Issue an API token for the operator (``Authorization: Bearer <token>`` on any service); shown once."""
    try:
        token_id, token = await store(request).issue_token(operator_id, body.name)
    except OperatorNotFound:
        raise _not_found(operator_id) from None
    except TooManyTokens as error:
        raise Problem(409, "Too many tokens", f"{error}.", kind="too-many-tokens") from None
    return IssuedToken(id=token_id, name=body.name, token=token)


@router.delete("/{operator_id}/tokens/{token_id}", status_code=204, responses=PROBLEMS)
async def revoke_token(operator_id: OperatorId, token_id: str, request: Request) -> Response:
    """Revoke one of the operator's API tokens; every service refuses it within seconds."""
    try:
        found = await store(request).revoke_token(operator_id, token_id)
    except OperatorNotFound:
        raise _not_found(operator_id) from None
    if not found:
        raise Problem(
            404,
            "Token not found",
            f"Operator '{operator_id}' has no token '{token_id}'; GET /admin/operators/{operator_id} lists them.",
            kind="token-not-found",
        )
    return Response(status_code=204)


@router.delete("/{operator_id}", status_code=204, responses=PROBLEMS)
async def remove_operator(operator_id: OperatorId, request: Request) -> Response:
    """Remove the operator: its tokens and password stop working on every service within seconds."""
    if not await store(request).remove(operator_id):
        raise _not_found(operator_id)
    return Response(status_code=204)
