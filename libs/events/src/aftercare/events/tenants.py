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
    """Incident priority, P1 (business stopped) to P4 (question or cosmetic)."""

    P1 = "P1"
    P2 = "P2"
    P3 = "P3"
    P4 = "P4"


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
    """Where a system can be probed: an HTTP health URL or a TCP host:port."""

    kind: Literal["http", "tcp"]
    address: str = Field(min_length=1, description="URL for http, host:port for tcp")
    interval_seconds: int | None = Field(default=None, gt=0, description="Scheduled diagnostics period.")


class SupportedSystem(_Part):
    """A customer system under support."""

    name: str = Field(min_length=1)
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
