"""Tenant events: a support company's customer, as the other services need to know it.

Intake registers tenants and publishes the whole tenant on the compacted tenants topic each
time it changes; every other service keeps its own copy from these events. Secrets (API keys,
routing keys, tokens) never leave intake.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from aftercare.events import topics
from aftercare.events.envelope import Event


class Priority(StrEnum):
    """Incident priority, P1 (business stopped) to P5 (planning: no one is hindered yet)."""

    P1 = "P1"
    P2 = "P2"
    P3 = "P3"
    P4 = "P4"
    P5 = "P5"


class Criticality(StrEnum):
    """How much the customer's business depends on a system."""

    CRITICAL = "critical"
    HIGH = "high"
    MEDIUM = "medium"
    LOW = "low"


class NotificationChannel(StrEnum):
    EMAIL = "email"
    SMS = "sms"
    WEBHOOK = "webhook"
    PHONE = "phone"
    CHAT = "chat"


class _Part(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SlaTarget(_Part):
    """Contracted response and resolution times for one priority."""

    priority: Priority
    response_minutes: int = Field(gt=0)
    resolution_minutes: int = Field(gt=0)


class ContractTier(_Part):
    name: str = Field(min_length=1, description="e.g. 'gold', 'standard'")
    sla: list[SlaTarget] = Field(default_factory=list)


class Contact(_Part):
    """A person at the customer who hears about incidents."""

    name: str = Field(min_length=1)
    email: str | None = None
    phone: str | None = None
    webhook_url: str | None = None
    preferred_channels: list[NotificationChannel] = Field(default_factory=list)
    language: str = Field(default="en", description="BCP 47 language tag for messages to this contact.")
    notify_on: list[Priority] = Field(
        default_factory=lambda: [Priority.P1, Priority.P2, Priority.P3, Priority.P4],
        description="Priorities this contact wants to hear about.",
    )


class DiagnosticTarget(_Part):
    """Where a system can be probed: an HTTP health URL, a TCP host:port, a TLS host:port
    (certificate expiry) or a DNS name (resolution)."""

    kind: Literal["http", "tcp", "tls", "dns"]
    address: str = Field(min_length=1, description="URL for http, host:port for tcp and tls, a name for dns")
    interval_seconds: int | None = Field(default=None, gt=0, description="Scheduled diagnostics period.")
    timeout_seconds: float | None = Field(
        default=None, gt=0, le=60, description="Per probe; triage's default if absent."
    )
    expect_status: int | None = Field(
        default=None, ge=100, le=599, description="http: the status a healthy answer has."
    )
    expect_body: str | None = Field(
        default=None, max_length=200, description="http: text a healthy answer's body contains."
    )
    latency_threshold_ms: float | None = Field(
        default=None, gt=0, description="Slower than this counts as degraded (besides the rolling baseline)."
    )
    tls_min_days: int | None = Field(
        default=None, ge=0, le=3650, description="tls: fewer days left on the certificate counts as degraded."
    )


class SupportedSystem(_Part):
    """A customer system under support."""

    name: str = Field(min_length=1)
    aliases: list[str] = Field(
        default_factory=list, description="Other names people use for it ('billing', 'the invoicing database')."
    )
    criticality: Criticality = Criticality.MEDIUM
    product: str | None = Field(default=None, description="Product name, to match vulnerability advisories.")
    version: str | None = None
    diagnostic_target: DiagnosticTarget | None = None
    admin_endpoint: str | None = Field(
        default=None, description="Base URL of the admin API that remediation runbooks may call."
    )


class TenantUpserted(Event):
    """A tenant was created or changed; carries the whole tenant (latest wins on compaction)."""

    TYPE = "tenant.upserted"
    VERSION = 1
    TOPIC = topics.TENANTS

    tenant_id: str
    name: str
    active: bool = True
    tier: ContractTier
    contacts: list[Contact] = Field(default_factory=list)
    systems: list[SupportedSystem] = Field(default_factory=list)
    status_page_slug: str | None = None
    inbound_emails: list[str] = Field(
        default_factory=list,
        description="Addresses at intake that open or join this tenant's incidents (Reply-To of customer emails).",
    )
    languages: list[str] = Field(
        default_factory=lambda: ["en"], description="Languages the tenant's people write in (BCP 47)."
    )
    probe_allowlist: list[str] = Field(
        default_factory=list,
        description="Addresses (IPs or CIDR networks) triage may probe for this tenant; nothing else is probed.",
    )
