"""Operators: the support company's people, their roles, and how every service checks them.

Intake registers operators (its admin API) and publishes each change as ``OperatorUpserted``
(the whole operator: role, Argon2 password hash, SHA-256 digests of its API tokens, tenants it
may see) or ``OperatorRemoved`` on the compacted tenants topic, keyed per operator, so the
latest record per operator is kept forever. Every other service keeps its own copy
(``OperatorDirectory``, enabled with ``runtime.keep_operator_directory()``) and checks
credentials itself:

    from aftercare.events.operators import Operator, require_role

    @router.post("/v1/approvals/{approval_id}/grant")
    async def grant(approval_id: str, operator: Operator = Depends(require_role("responder"))) -> ...:
        if not operator.may_see(approval.tenant_id): ...

Roles are ordered ``viewer < responder < admin``; a role includes everything below it.
``require_role`` answers 401 (no credential, unknown or removed operator's token) and 403
(role too low, operator deactivated) as RFC 9457 problems. Browser logins use
``directory.verify_login(email, password)`` (Argon2, constant work for unknown emails).

Operator events concern the support company itself, not one customer: their envelope's
``tenant_id`` is ``OPERATOR_EVENTS_TENANT``.
"""

from __future__ import annotations

import asyncio
import hashlib
import secrets
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Annotated, Any

import structlog
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from fastapi import Header, Request
from pydantic import Field
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import DuplicateKeyError

from aftercare.events import topics
from aftercare.events.envelope import Envelope, Event
from aftercare.events.web import Problem

log = structlog.stdlib.get_logger("aftercare.events.operators")

OPERATOR_EVENTS_TENANT = "_operators"
"""The envelope ``tenant_id`` of operator events (no customer's tenant id can look like it)."""

OPERATOR_TOKEN_PREFIX = "op_"


class Role(StrEnum):
    """What an operator may do; each role includes the ones before it."""

    VIEWER = "viewer"  # watch the dashboard and incidents
    RESPONDER = "responder"  # act on incidents: acknowledge, approve runbooks, escalate
    ADMIN = "admin"  # change rules, runbooks, subscriptions; manage operators

    @property
    def rank(self) -> int:
        return _RANKS[self]

    def includes(self, needed: Role | str) -> bool:
        """True if this role may do what ``needed`` may (``admin.includes("viewer")``)."""
        return self.rank >= Role(needed).rank


_RANKS = {Role.VIEWER: 0, Role.RESPONDER: 1, Role.ADMIN: 2}


# --- events ----------------------------------------------------------------------------------


class OperatorUpserted(Event):
    """An operator was registered or changed; carries the whole operator (latest wins)."""

    TYPE = "operator.upserted"
    VERSION = 1
    TOPIC = topics.TENANTS

    operator_id: str = Field(min_length=1)
    name: str = Field(min_length=1)
    email: str = Field(min_length=3, description="Login name for browser sign-in; unique among operators.")
    role: Role
    password_hash: str | None = Field(
        default=None, description="Argon2id hash (PHC string) of the password; None: no browser login."
    )
    token_digests: list[str] = Field(
        default_factory=list, description="SHA-256 hex digests of the operator's API tokens."
    )
    active: bool = Field(default=True, description="False: known but refused (deactivated).")
    all_tenants: bool = Field(default=True, description="True: may see every tenant; else only `tenants`.")
    tenants: list[str] = Field(default_factory=list, description="Tenants it may see when not all_tenants.")

    def partition_key(self) -> str:
        return operator_key(self.operator_id)


class OperatorRemoved(Event):
    """An operator was removed: every service refuses its credentials from now on."""

    TYPE = "operator.removed"
    VERSION = 1
    TOPIC = topics.TENANTS

    operator_id: str = Field(min_length=1)

    def partition_key(self) -> str:
        return operator_key(self.operator_id)


def operator_key(operator_id: str) -> str:
    """The Kafka key of an operator's events (one key per operator on the compacted topic)."""
    return f"operator:{operator_id}"


# --- credentials -------------------------------------------------------------------------------

_hasher = PasswordHasher()  # argon2id with the library's RFC 9106 low-memory defaults
# Verified against when an email is unknown, so that answer takes as long as a wrong password.
_UNKNOWN_EMAIL_HASH = _hasher.hash(secrets.token_urlsafe(16))


def new_operator_token() -> str:
    """A random API token for an operator (shown once; only its digest is kept)."""
    return OPERATOR_TOKEN_PREFIX + secrets.token_urlsafe(32)


def token_digest(token: str) -> str:
    """How an API token is stored and compared: random and long, so unsalted SHA-256 is enough."""
    return hashlib.sha256(token.encode()).hexdigest()


def hash_password(password: str) -> str:
    """Argon2id hash of a password (a PHC string with its own salt and parameters)."""
    return _hasher.hash(password)


def password_matches(password_hash: str | None, password: str) -> bool:
    """True if ``password`` is the one ``password_hash`` was made from (CPU-heavy: ~50 ms)."""
    try:
        return _hasher.verify(password_hash or _UNKNOWN_EMAIL_HASH, password) and password_hash is not None
    except (VerificationError, InvalidHashError):
        return False


# --- who is calling --------------------------------------------------------------------------


@dataclass(frozen=True)
class Operator:
    """An authenticated operator, as endpoints see it (``require_role`` returns one)."""

    operator_id: str
    name: str
    email: str
    role: Role
    tenants: frozenset[str] | None  # None: every tenant
    active: bool = True

    def can(self, needed: Role | str) -> bool:
        return self.role.includes(needed)

    def may_see(self, tenant_id: str) -> bool:
        """True if this operator may see the tenant's incidents and data."""
        return self.tenants is None or tenant_id in self.tenants

    @classmethod
    def from_event(cls, event: OperatorUpserted) -> Operator:
        return cls(
            operator_id=event.operator_id,
            name=event.name,
            email=event.email,
            role=event.role,
            tenants=None if event.all_tenants else frozenset(event.tenants),
            active=event.active,
        )


# --- a service's copy ---------------------------------------------------------------------------

OPERATORS = "operators"
OPERATOR_CREDENTIALS = "operator_credentials"


class OperatorDirectory:
    """A service's own copy of the operators, kept from the tenants topic.

    Collections (the service's database): ``operators`` (one document per operator, the latest
    event applied, removed operators kept as ``removed: true`` so a late, older upsert cannot
    bring them back) and ``operator_credentials`` (``_id`` ``token|<digest>`` or
    ``email|<address>`` → operator id), so a request's credential is found by ``_id`` alone.
    Credentials are always checked against the operator document, so a stale credential entry
    lets nobody in.
    """

    def __init__(self, database: AsyncDatabase[dict[str, Any]]) -> None:
        self._operators = database[OPERATORS]
        self._credentials = database[OPERATOR_CREDENTIALS]

    async def ensure_indexes(self) -> None:
        await self._credentials.create_index("operator_id")

    def handlers(self) -> dict[type[Event], list[Callable[[Envelope[Any]], Awaitable[None]]]]:
        """The consumer handler table that keeps this copy (for a ``ConsumerSpec`` on the tenants topic)."""
        return {OperatorUpserted: [self.apply_upserted], OperatorRemoved: [self.apply_removed]}

    async def apply_upserted(self, envelope: Envelope[Any]) -> None:
        """Store the operator unless a newer event about it is stored already.

        Idempotent and order-safe (the ``as_of`` guard, as in ``TenantCopy``).
        """
        operator: OperatorUpserted = envelope.data
        document = operator.model_dump(mode="json") | {
            "removed": False,
            "as_of": envelope.time,
            "event_id": envelope.id,
        }
        if not await self._apply(operator.operator_id, document, envelope.time):
            return
        keys = [f"token|{digest}" for digest in operator.token_digests] + [f"email|{operator.email.lower()}"]
        for key in keys:
            await self._credentials.update_one(
                {"_id": key}, {"$set": {"operator_id": operator.operator_id}}, upsert=True
            )
        # Revoked tokens and an old email: tidiness only (the operator document decides).
        await self._credentials.delete_many({"operator_id": operator.operator_id, "_id": {"$nin": keys}})

    async def apply_removed(self, envelope: Envelope[Any]) -> None:
        """Mark the operator removed (kept, so an older upsert arriving late changes nothing)."""
        removed: OperatorRemoved = envelope.data
        document = {
            "operator_id": removed.operator_id,
            "removed": True,
            "token_digests": [],
            "password_hash": None,
            "as_of": envelope.time,
            "event_id": envelope.id,
        }
        if await self._apply(removed.operator_id, document, envelope.time):
            await self._credentials.delete_many({"operator_id": removed.operator_id})

    async def _apply(self, operator_id: str, document: dict[str, Any], as_of: datetime) -> bool:
        try:
            result = await self._operators.update_one(
                {"_id": operator_id, "as_of": {"$lte": as_of}}, {"$set": document}, upsert=True
            )
        except DuplicateKeyError:
            return False  # a newer copy exists: the filter missed it and the upsert collided with it
        return result.matched_count == 1 or result.upserted_id is not None

    async def get(self, operator_id: str) -> OperatorUpserted | None:
        """The operator as last announced; None if unknown or removed."""
        document = await self._operators.find_one({"_id": operator_id})
        if document is None or document.get("removed"):
            return None
        fields = {key: value for key, value in document.items() if key in OperatorUpserted.model_fields}
        return OperatorUpserted.model_validate(fields)

    async def by_token(self, token: str) -> Operator | None:
        """The operator an API token belongs to; None if unknown, revoked or removed."""
        digest = token_digest(token)
        operator = await self._by_credential(f"token|{digest}")
        if operator is None or digest not in operator.token_digests:
            return None
        return Operator.from_event(operator)

    async def verify_login(self, email: str, password: str) -> Operator | None:
        """The operator whose email and password these are; None otherwise (browser sign-in).

        Argon2 runs in a worker thread (it is CPU-heavy); an unknown email costs the same work,
        so answer times do not tell which emails exist. A deactivated operator is returned with
        ``active=False``: refuse it, saying why.
        """
        operator = await self._by_credential(f"email|{email.strip().lower()}")
        if operator is not None and operator.email.lower() != email.strip().lower():
            operator = None
        matches = await asyncio.to_thread(password_matches, operator.password_hash if operator else None, password)
        return Operator.from_event(operator) if operator is not None and matches else None

    async def _by_credential(self, key: str) -> OperatorUpserted | None:
        credential = await self._credentials.find_one({"_id": key})
        if credential is None:
            return None
        return await self.get(credential["operator_id"])


# --- the FastAPI dependency --------------------------------------------------------------------


def _directory(request: Request) -> OperatorDirectory:
    directory: OperatorDirectory | None = getattr(request.app.state, "operator_directory", None)
    runtime = getattr(request.app.state, "runtime", None)
    if directory is None and runtime is not None:
        directory = getattr(runtime, "operators", None)
        if directory is None:
            raise RuntimeError(
                "this service keeps no operator directory: call runtime.keep_operator_directory() before start"
            )
    if directory is None or (runtime is not None and not runtime.connected.is_set()):
        raise Problem(
            503,
            "Starting up",
            "The service is still connecting to Kafka and the store; retry shortly.",
            kind="starting-up",
            headers={"Retry-After": "5"},
        )
    return directory


def _unauthenticated(title: str, detail: str) -> Problem:
    return Problem(401, title, detail, kind="unauthenticated", headers={"WWW-Authenticate": 'Bearer realm="operators"'})


def require_role(role: Role | str) -> Callable[..., Awaitable[Operator]]:
    """FastAPI dependency: the operator calling with ``Authorization: Bearer <operator token>``,
    if its role includes ``role``.

    ``operator: Operator = Depends(require_role("responder"))``. Answers 401 without a token or
    with one no operator holds (unknown, revoked, removed operator); 403 when the operator's
    role is lower than ``role`` or the operator is deactivated; 503 while the service starts.
    The app's problem handlers must be installed (``aftercare.events.web``).
    """
    needed = Role(role)

    async def operator_with_role(
        request: Request,
        authorization: Annotated[str | None, Header(description="Bearer <operator API token>")] = None,
    ) -> Operator:
        token = None
        if authorization and authorization[:7].lower() == "bearer ":
            token = authorization[7:].strip() or None
        if token is None:
            raise _unauthenticated(
                "Operator token required",
                "Send your operator API token as 'Authorization: Bearer <token>'; an admin issues tokens "
                "with POST /admin/operators/{operator_id}/tokens on intake.",
            )
        directory = _directory(request)
        operator = await directory.by_token(token)
        if operator is None:
            raise _unauthenticated(
                "Unknown operator token",
                "This token belongs to no operator (revoked, removed or mistyped); ask an admin for a new one.",
            )
        if not operator.active:
            raise Problem(
                403,
                "Operator deactivated",
                f"Operator '{operator.operator_id}' is deactivated; an admin can reactivate it.",
                kind="operator-deactivated",
            )
        if not operator.can(needed):
            raise Problem(
                403,
                "Role too low",
                f"This needs the {needed.value} role (or higher); operator '{operator.operator_id}' "
                f"is a {operator.role.value}. Ask an admin to change the role.",
                kind="role-too-low",
                required_role=needed.value,
                operator_role=operator.role.value,
            )
        structlog.contextvars.bind_contextvars(operator_id=operator.operator_id)
        return operator

    operator_with_role.__name__ = f"require_{needed.value}"
    return operator_with_role
