"""Intake settings, from the environment (prefix `AFTERCARE_INTAKE_`; Kafka and store addresses
are the shared `AFTERCARE_KAFKA_BOOTSTRAP_SERVERS` and `AFTERCARE_MONGO_URL`)."""

from __future__ import annotations

from pydantic_settings import SettingsConfigDict

from aftercare.events.settings import ServiceSettings


class IntakeSettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="AFTERCARE_INTAKE_", extra="ignore", populate_by_name=True)

    service_name: str = "intake"
    http_port: int = 8001
    database: str = "aftercare_intake"
