"""An operator (a person of the support company) as intake registers it: pure rules, no I/O.

The whole operator travels to every service as ``OperatorUpserted`` (its password only as an
Argon2 hash, its API tokens only as SHA-256 digests); ``OperatorRemoved`` when it is removed.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from aftercare.events.operators import OperatorUpserted, Role

OPERATOR_ID_PATTERN = r"^[a-z0-9][a-z0-9.-]{1,62}$"
TENANT_ID_PATTERN = re.compile(r"^[a-z0-9][a-z0-9-]{1,62}$")
_EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")
MIN_PASSWORD_LENGTH = 12
MAX_TOKENS = 20


class OperatorProfile(BaseModel):
    """What an admin sends to create or change an operator."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=200)
    email: str = Field(min_length=3, max_length=254, description="Sign-in name for the dashboard; unique.")
    role: Role = Field(description="viewer < responder < admin; each includes the ones before it.")
    password: str | None = Field(
        default=None,
        min_length=MIN_PASSWORD_LENGTH,
        max_length=1024,
        description="For browser sign-in; stored only as an Argon2 hash. Leave out to keep the current "
        "one (or to have none: API tokens only).",
    )
    active: bool = Field(default=True, description="False refuses the operator everywhere without removing it.")
    tenants: list[str] | None = Field(
        default=None,
        max_length=1000,
        description="Tenants this operator may see; leave out (or null) for all tenants.",
    )

    @field_validator("email")
    @classmethod
    def _email(cls, email: str) -> str:
        if not _EMAIL.match(email):
            raise ValueError("not an email address (name@example.com)")
        return email.strip().lower()

    @field_validator("tenants")
    @classmethod
    def _tenant_ids(cls, tenants: list[str] | None) -> list[str] | None:
        if tenants is None:
            return None
        bad = [tenant for tenant in tenants if not TENANT_ID_PATTERN.match(tenant)]
        if bad:
            raise ValueError(f"not a tenant id (lowercase letters, digits, dashes): {', '.join(bad)}")
        return sorted(set(tenants))


@dataclass(frozen=True)
class IssuedToken:
    """An API token as stored: its id and name for people, its digest for checking."""

    token_id: str
    name: str
    digest: str
    created_at: datetime


@dataclass
class OperatorAccount:
    """The stored operator (intake's record, the source of every OperatorUpserted)."""

    operator_id: str
    name: str
    email: str
    role: Role
    active: bool
    all_tenants: bool
    tenants: list[str]
    password_hash: str | None = None
    tokens: list[IssuedToken] = field(default_factory=list)

    def announcement(self) -> OperatorUpserted:
        return OperatorUpserted(
            operator_id=self.operator_id,
            name=self.name,
            email=self.email,
            role=self.role,
            password_hash=self.password_hash,
            token_digests=[token.digest for token in self.tokens],
            active=self.active,
            all_tenants=self.all_tenants,
            tenants=self.tenants,
        )

    def fields(self) -> dict[str, Any]:
        """The stored form."""
        return {
            "operator_id": self.operator_id,
            "name": self.name,
            "email": self.email,
            "role": self.role.value,
            "active": self.active,
            "all_tenants": self.all_tenants,
            "tenants": self.tenants,
            "password_hash": self.password_hash,
            "tokens": [
                {"token_id": t.token_id, "name": t.name, "digest": t.digest, "created_at": t.created_at}
                for t in self.tokens
            ],
        }

    @classmethod
    def from_document(cls, document: dict[str, Any]) -> OperatorAccount:
        return cls(
            operator_id=document["operator_id"],
            name=document["name"],
            email=document["email"],
            role=Role(document["role"]),
            active=bool(document.get("active", True)),
            all_tenants=bool(document.get("all_tenants", True)),
            tenants=list(document.get("tenants") or []),
            password_hash=document.get("password_hash"),
            tokens=[
                IssuedToken(t["token_id"], t["name"], t["digest"], t["created_at"]) for t in document.get("tokens", [])
            ],
        )


def with_profile(
    operator_id: str, current: OperatorAccount | None, profile: OperatorProfile, password_hash: str | None
) -> OperatorAccount:
    """The operator after an admin sent ``profile``; ``password_hash`` is the new password's, if any."""
    return OperatorAccount(
        operator_id=operator_id,
        name=profile.name,
        email=profile.email,
        role=profile.role,
        active=profile.active,
        all_tenants=profile.tenants is None,
        tenants=profile.tenants or [],
        password_hash=password_hash or (current.password_hash if current else None),
        tokens=list(current.tokens) if current else [],
    )


def next_event_time(previous: datetime | None, now: datetime) -> datetime:
    """The time of the operator's next event: never at or before its previous one.

    Every copy keeps an operator's latest event by time (``as_of``), and the store keeps
    milliseconds, so two changes within one millisecond (or a clock step back between two
    instances) must still be ordered.
    """
    now = now.replace(microsecond=now.microsecond // 1000 * 1000)
    if previous is not None and now <= previous:
        return previous + timedelta(milliseconds=1)
    return now
