"""Remediation settings, from the environment (prefix `AFTERCARE_REMEDIATION_`; Kafka and store addresses
are the shared `AFTERCARE_KAFKA_BOOTSTRAP_SERVERS` and `AFTERCARE_MONGO_URL`)."""

from __future__ import annotations

from pydantic_settings import SettingsConfigDict

from aftercare.events.settings import ServiceSettings


class RemediationSettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="AFTERCARE_REMEDIATION_", extra="ignore", populate_by_name=True)

    service_name: str = "remediation"
    http_port: int = 8003
    database: str = "aftercare_remediation"
