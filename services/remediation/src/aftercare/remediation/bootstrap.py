"""Wires the remediation service: settings, runtime (Kafka, store, consumers) and HTTP routes.

Remediation: runbooks that fix known problems, verification, escalation to people.
"""

from __future__ import annotations

from fastapi import FastAPI

from aftercare.events.runtime import ConsumerSpec, ServiceRuntime
from aftercare.remediation.entrypoints import consumer
from aftercare.remediation.settings import RemediationSettings


def build_app(settings: RemediationSettings | None = None) -> FastAPI:
    settings = settings or RemediationSettings()
    runtime = ServiceRuntime(
        settings,
        consumers=[ConsumerSpec(group_id=consumer.CONSUMER_GROUP, topics=consumer.TOPICS, handlers=consumer.handlers)],
    )
    app = FastAPI(title="Aftercare remediation", version="0.1.0", lifespan=runtime.lifespan)
    app.include_router(runtime.operations_router())
    return app
