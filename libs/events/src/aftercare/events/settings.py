"""Settings every service shares, read from the environment (pydantic-settings).

The addresses of Kafka and the store are the same variables for every service
(``AFTERCARE_KAFKA_BOOTSTRAP_SERVERS``, ``AFTERCARE_MONGO_URL``), so one environment can run
the whole system; what differs per service carries the service's prefix
(``AFTERCARE_INTAKE_HTTP_PORT``). docker-compose.yml and ``make run`` pass the same names.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal, Self

from pydantic import AliasChoices, Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


def _shared(name: str) -> AliasChoices:
    return AliasChoices(f"AFTERCARE_{name}", name.lower())


class ServiceSettings(BaseSettings):
    """Base for a service's settings; subclasses set ``env_prefix`` and their defaults."""

    model_config = SettingsConfigDict(env_prefix="AFTERCARE_SERVICE_", extra="ignore", populate_by_name=True)

    service_name: str = "service"
    http_host: str = "127.0.0.1"
    http_port: int = 8000
    database: str = Field(default="aftercare", description="This service's own MongoDB database.")
    consumer_group_prefix: str = Field(
        default="",
        description="Put before the service's consumer group names. Instances of one deployment share "
        "their groups (and split the partitions); two deployments on one broker need different prefixes.",
    )

    tls_certfile: Path | None = Field(
        default=None,
        description="PEM certificate (chain) to serve HTTPS with, e.g. AFTERCARE_INTAKE_TLS_CERTFILE; "
        "plain HTTP when unset. infra/devcert.py makes one for a laptop.",
    )
    tls_keyfile: Path | None = Field(default=None, description="The certificate's PEM private key.")

    kafka_bootstrap_servers: str = Field(default="127.0.0.1:9092", validation_alias=_shared("KAFKA_BOOTSTRAP_SERVERS"))
    mongo_url: str = Field(default="mongodb://127.0.0.1:27017/", validation_alias=_shared("MONGO_URL"))
    topic_partitions: int = Field(default=3, ge=1, validation_alias=_shared("TOPIC_PARTITIONS"))
    topic_replication_factor: int = Field(default=1, ge=1, validation_alias=_shared("TOPIC_REPLICATION_FACTOR"))
    log_level: str = Field(default="INFO", validation_alias=_shared("LOG_LEVEL"))
    otel_exporter: Literal["none", "console", "otlp"] = Field(default="none", validation_alias=_shared("OTEL_EXPORTER"))
    otel_endpoint: str | None = Field(
        default=None, validation_alias=AliasChoices("OTEL_EXPORTER_OTLP_ENDPOINT", "otel_endpoint")
    )
    publish_deadline_seconds: float = Field(
        default=5.0,
        gt=0,
        validation_alias=_shared("PUBLISH_DEADLINE_SECONDS"),
        description="How long a publish waits for Kafka's acknowledgement; after it the request is "
        "answered 503 with Retry-After and the event stays in the outbox for the sweep.",
    )
    # Start-up waits this long in total for Kafka and the store before giving up with an error.
    startup_timeout_seconds: float = Field(default=300.0, validation_alias=_shared("STARTUP_TIMEOUT_SECONDS"))
    # Single-instance work (aftercare.events.schedule): a holder that stops renewing its lease for
    # this long is replaced; due times are looked for this often.
    lease_seconds: float = Field(default=15.0, gt=0, description="Lease period of single-instance jobs.")
    due_poll_seconds: float = Field(default=1.0, gt=0, description="How often stored due times are looked for.")
    due_max_attempts: int = Field(
        default=12,
        ge=1,
        description="Failed attempts after which a stored due time is dead (listed by `aftercare "
        "dead-due-times list`, replayed with `aftercare dead-due-times replay`) instead of retried.",
    )

    @model_validator(mode="after")
    def _tls_files_together(self) -> Self:
        if (self.tls_certfile is None) != (self.tls_keyfile is None):
            raise ValueError("set both TLS_CERTFILE and TLS_KEYFILE (for HTTPS) or neither (plain HTTP)")
        for path in (self.tls_certfile, self.tls_keyfile):
            if path is not None and not path.is_file():
                raise ValueError(f"TLS file {path} does not exist or is not a file")
        return self
