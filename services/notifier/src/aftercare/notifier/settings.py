"""Notifier settings, from the environment (prefix `AFTERCARE_NOTIFIER_`; Kafka and store addresses
are the shared `AFTERCARE_KAFKA_BOOTSTRAP_SERVERS` and `AFTERCARE_MONGO_URL`)."""

from __future__ import annotations

from pydantic_settings import SettingsConfigDict

from aftercare.events.settings import ServiceSettings


class NotifierSettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="AFTERCARE_NOTIFIER_", extra="ignore", populate_by_name=True)

    service_name: str = "notifier"
    http_port: int = 8004
    database: str = "aftercare_notifier"
