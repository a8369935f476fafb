"""Remediation settings, from the environment (prefix `AFTERCARE_REMEDIATION_`; Kafka and store addresses
are the shared `AFTERCARE_KAFKA_BOOTSTRAP_SERVERS` and `AFTERCARE_MONGO_URL`)."""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from aftercare.events.settings import ServiceSettings


class RemediationSettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="AFTERCARE_REMEDIATION_", extra="ignore", populate_by_name=True)

    service_name: str = "remediation"
    http_port: int = 8003
    database: str = "aftercare_remediation"
    public_base_url: str = Field(
        default="http://127.0.0.1:8003", description="How people reach this service: acknowledge links in pages."
    )
    credential_key: str | None = Field(
        default=None, description="Fernet key encrypting the tenants' system credentials at rest."
    )
    link_secret: str | None = Field(default=None, description="Signs acknowledge links; the credential key when unset.")
    runbook_seed_dir: str | None = Field(
        default=None, description="Runbook files stored at start-up (new versions only)."
    )
    escalation_policy_seed_dir: str | None = Field(
        default=None,
        description="Escalation policies stored at start-up for tenants that have none: <tenant_id>.yaml|.json.",
    )
    credential_seed_file: str | None = Field(
        default=None,
        description="Systems' credentials (JSON list of tenant_id, system, bearer_token) stored at start-up "
        "where none is stored; for the demo only (a real deployment stores them through the API).",
    )
    poll_interval_seconds: float = Field(
        default=0.5, gt=0, description="How often due runs and escalations are looked for."
    )
    lease_margin_seconds: float = Field(
        default=15.0,
        gt=0,
        description="A run whose process stopped is resumed this long after its step's timeout ran out.",
    )
    max_concurrent_runs: int = Field(default=64, ge=1, description="Runs this process advances at the same time.")
    consumer_concurrency: int = Field(
        default=64,
        ge=1,
        description="Incidents whose events are handled at the same time (one incident's in order); their "
        "store writes go together (incident merges, run inserts).",
    )
    max_body_bytes: int = 256 * 1024
