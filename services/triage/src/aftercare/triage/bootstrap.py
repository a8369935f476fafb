"""Wires the triage service: settings, runtime (Kafka, store, consumers) and HTTP routes.

Triage: classification, priority, SLA deadlines, grouping and diagnosis of incidents.
"""

from __future__ import annotations

from fastapi import FastAPI

from aftercare.events.runtime import ConsumerSpec, ServiceRuntime
from aftercare.triage.entrypoints import consumer
from aftercare.triage.settings import TriageSettings


def build_app(settings: TriageSettings | None = None) -> FastAPI:
    settings = settings or TriageSettings()
    runtime = ServiceRuntime(
        settings,
        consumers=[ConsumerSpec(group_id=consumer.CONSUMER_GROUP, topics=consumer.TOPICS, handlers=consumer.handlers)],
    )
    app = FastAPI(title="Aftercare triage", version="0.1.0", lifespan=runtime.lifespan)
    app.include_router(runtime.operations_router())
    return app
