"""Notifier settings, from the environment (prefix `AFTERCARE_NOTIFIER_`; Kafka and store addresses
are the shared `AFTERCARE_KAFKA_BOOTSTRAP_SERVERS` and `AFTERCARE_MONGO_URL`)."""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from aftercare.events.settings import ServiceSettings


class NotifierSettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="AFTERCARE_NOTIFIER_", extra="ignore", populate_by_name=True)

    service_name: str = "notifier"
    http_port: int = 8004
    database: str = "aftercare_notifier"

    admin_token: str = Field(default="", description="Bearer token of the admin API (subscriptions, advisories).")
    public_base_url: str = Field(default="http://127.0.0.1:8004", description="Where customers reach status pages.")
    portal_base_url: str = Field(
        default="http://127.0.0.1:8001", description="Intake's public address: customer links go to its portal."
    )
    remediation_base_url: str = Field(default="http://127.0.0.1:8003", description="For approve/reject buttons.")

    # Email through any SMTP relay.
    smtp_host: str = "127.0.0.1"
    smtp_port: int = 1025
    smtp_tls: bool = Field(default=False, description="Implicit TLS (port 465 style).")
    smtp_starttls: bool = Field(default=False, description="Upgrade with STARTTLS after connecting.")
    smtp_username: str | None = None
    smtp_password: str | None = None
    smtp_timeout_seconds: float = 30.0
    smtp_validate_certs: bool = True
    smtp_connections: int = Field(default=2, ge=1, le=32)
    mail_from: str = "Aftercare Support <support@aftercare.example>"
    message_id_domain: str = "notifier.aftercare.example"

    # SMS through Twilio's Messages API (or anything with its shape).
    sms_base_url: str = "https://api.twilio.com"
    twilio_account_sid: str = ""
    twilio_auth_token: str = ""
    sms_from: str = ""

    # Webhooks: which addresses a registered URL may resolve to.
    webhook_allow_private_addresses: bool = Field(
        default=False, description="Allow loopback/private targets (tests, on-premises receivers)."
    )
    webhook_allow_http: bool = Field(default=False, description="Allow plain http:// webhook URLs.")
    webhook_timeout_seconds: float = 10.0

    # Delivery timing.
    delivery_poll_seconds: float = Field(default=1.0, gt=0)
    delivery_concurrency: int = Field(default=8, ge=1, le=256)
    sending_lease_seconds: float = Field(
        default=120.0, gt=0, description="A claim older than this belongs to a process that died."
    )
    max_attempts: int = Field(default=8, ge=1)
    retry_initial_seconds: float = Field(default=30.0, gt=0)
    retry_max_seconds: float = Field(default=3600.0, gt=0)
    throttle_minutes: int = Field(default=15, ge=0)
    # Minutes as decimals (0.1 = 6 s) so tests and demos can see a digest or an update go out.
    digest_interval_minutes: float = Field(default=24 * 60, gt=0)
    periodic_update_minutes_p1: float = Field(default=30, gt=0)
    periodic_update_minutes_p2: float = Field(default=60, gt=0)

    # Dashboard extras.
    trace_url_template: str = Field(
        default="",
        description="Link for a trace id, e.g. 'http://127.0.0.1:16686/trace/{trace_id}'; empty: shown only.",
    )
    demo_system_url: str = Field(
        default="",
        description="Demo mode only: the demo customer system's base URL; admins get a 'break it' button.",
    )

    # Dashboard sessions.
    session_secret: str = Field(default="", description="Signs dashboard sessions; random per process if empty.")
    session_hours: float = 12.0
