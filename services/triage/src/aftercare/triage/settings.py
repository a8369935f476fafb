"""Triage settings, from the environment (prefix `AFTERCARE_TRIAGE_`; Kafka and store addresses
are the shared `AFTERCARE_KAFKA_BOOTSTRAP_SERVERS` and `AFTERCARE_MONGO_URL`)."""

from __future__ import annotations

from pathlib import Path

from pydantic_settings import SettingsConfigDict

from aftercare.events.settings import ServiceSettings


class TriageSettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="AFTERCARE_TRIAGE_", extra="ignore", populate_by_name=True)

    service_name: str = "triage"
    http_port: int = 8002
    database: str = "aftercare_triage"
    rules_seed_file: Path | None = None
    regular_diagnostics_enabled: bool = True
    probe_concurrency: int = 200
    # Incidents handled side by side; their store calls share round trips (adapters/batching.py).
    # 16 (the runner's default): at 64, a rebalance under load waited for so many events in hand
    # that an instance lost its group membership and 15 of 18 incidents were handled twice
    # (test_two_instances, load 20); the bench gained little from more (64: 10/s, 256: 8/s).
    consumer_concurrency: int = 16
