"""Intake settings, from the environment (prefix `AFTERCARE_INTAKE_`; Kafka and store addresses
are the shared `AFTERCARE_KAFKA_BOOTSTRAP_SERVERS` and `AFTERCARE_MONGO_URL`)."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from aftercare.events.settings import ServiceSettings


class IntakeSettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="AFTERCARE_INTAKE_", extra="ignore", populate_by_name=True)

    service_name: str = "intake"
    http_port: int = 8001
    database: str = "aftercare_intake"

    public_base_url: str = Field(
        default="http://127.0.0.1:8001", description="How customers reach intake; used in status links and TwiML."
    )
    admin_token: str | None = Field(default=None, description="Bearer token for /admin; admin API is off if unset.")
    seed_file: Path | None = Field(default=None, description="JSON tenants to register at start (demo, tests).")
    max_body_bytes: int = Field(default=1_048_576, ge=1024, description="Largest HTTP request body accepted.")
    max_alertmanager_body_bytes: int = Field(
        default=33_554_432,
        ge=1024,
        description="Largest Alertmanager notification accepted: a mass outage's group is taken whole "
        "(Alertmanager retries only 5xx, so a refused group is lost).",
    )
    credential_cache_seconds: float = Field(
        default=30.0,
        ge=0,
        description="How long a credential lookup is reused at most; a tenant's change (deactivation, a "
        "revoked key) makes every instance forget it at once through the tenants topic.",
    )
    rate_limit_per_minute: int = Field(default=600, ge=1, description="Requests per minute per integration key.")

    auto_close_after_hours: float = Field(
        default=72.0, gt=0, description="A resolved incident is closed after this long."
    )
    housekeeping_interval_seconds: float = Field(
        default=600.0, gt=0, description="How often auto-close and clean-up run."
    )

    smtp_host: str = "127.0.0.1"
    smtp_port: int = 2525
    smtp_enabled: bool = True
    max_email_bytes: int = Field(default=26_214_400, description="Largest email accepted (552 above).")
    max_attachment_bytes: int = Field(default=10_485_760, description="Largest single attachment kept.")
