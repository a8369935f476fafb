"""A tenant (a customer of the support company) as intake registers it.

The profile (tier, contacts, systems) travels to the other services as TenantUpserted. The
credentials each channel checks (API keys, PagerDuty routing keys, the Alertmanager token,
inbound email addresses, the support phone line) stay in intake; secrets that only need
comparing are stored as SHA-256 digests and shown once when issued.
"""

from __future__ import annotations

import hashlib
import ipaddress
import re
import secrets

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from aftercare.events.tenants import Contact, ContractTier, SupportedSystem

TENANT_ID_PATTERN = r"^[a-z0-9][a-z0-9-]{1,62}$"
E164_PATTERN = r"^\+[1-9][0-9]{6,14}$"
_EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")

# Contract times beyond a year mean a typo, and numbers past 64 bits cannot even be stored.
MAX_SLA_MINUTES = 366 * 24 * 60
MAX_PROBE_INTERVAL_SECONDS = 366 * 24 * 3600


class TenantProfile(BaseModel):
    """What an admin sends to create or change a tenant."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=200)
    active: bool = True
    tier: ContractTier
    contacts: list[Contact] = Field(default_factory=list, max_length=100)
    systems: list[SupportedSystem] = Field(default_factory=list, max_length=500)
    languages: list[str] = Field(
        default_factory=lambda: ["en"], max_length=20, description="Languages its people write in."
    )
    probe_allowlist: list[str] = Field(
        default_factory=list,
        max_length=100,
        description="IP addresses or CIDR networks triage may probe for this tenant (nothing else is probed).",
    )
    portal_slug: str | None = Field(
        default=None,
        pattern=r"^[A-Za-z0-9_-]{8,64}$",
        description="Secret part of the web-form link given to the customer; generated if absent.",
    )

    @field_validator("probe_allowlist")
    @classmethod
    def _networks(cls, entries: list[str]) -> list[str]:
        for entry in entries:
            try:
                ipaddress.ip_network(entry.strip(), strict=False)
            except ValueError:
                raise ValueError(f"probe_allowlist entry {entry!r} is not an IP address or CIDR network") from None
        return entries

    @model_validator(mode="after")
    def _storable_numbers(self) -> TenantProfile:
        for target in self.tier.sla:
            for name in ("response_minutes", "resolution_minutes"):
                if getattr(target, name) > MAX_SLA_MINUTES:
                    raise ValueError(
                        f"tier.sla {target.priority.value} {name} must be at most {MAX_SLA_MINUTES} (a year)"
                    )
        for system in self.systems:
            probe = system.diagnostic_target
            if (
                probe is not None
                and probe.interval_seconds is not None
                and probe.interval_seconds > MAX_PROBE_INTERVAL_SECONDS
            ):
                raise ValueError(
                    f"systems {system.name}: diagnostic_target.interval_seconds must be at most "
                    f"{MAX_PROBE_INTERVAL_SECONDS} (a year)"
                )
        return self


class Tenant(TenantProfile):
    model_config = ConfigDict(extra="ignore")

    tenant_id: str


class PhoneLine(BaseModel):
    """The tenant's support number at the telephony provider, with the token that signs its webhooks."""

    model_config = ConfigDict(extra="forbid")

    number: str = Field(pattern=E164_PATTERN, description="E.164, e.g. +15551234567")
    auth_token: str = Field(min_length=8, max_length=200)


class InboundEmails(BaseModel):
    model_config = ConfigDict(extra="forbid")

    addresses: list[str] = Field(min_length=1, max_length=20)

    @field_validator("addresses")
    @classmethod
    def _valid(cls, addresses: list[str]) -> list[str]:
        bad = [address for address in addresses if not _EMAIL.match(address)]
        if bad:
            raise ValueError(f"not an email address: {', '.join(bad)}")
        return [address.lower() for address in addresses]


def digest(secret: str) -> str:
    """How a secret is stored: it is random and long, so an unsalted SHA-256 is enough."""
    return hashlib.sha256(secret.encode()).hexdigest()


def new_api_key() -> str:
    return "ak_" + secrets.token_urlsafe(32)


def new_routing_key() -> str:
    # PagerDuty integration keys are 32 hexadecimal characters; senders may validate that.
    return secrets.token_hex(16)


def new_bearer_token() -> str:
    return secrets.token_urlsafe(32)


def new_portal_slug() -> str:
    return secrets.token_urlsafe(16)
