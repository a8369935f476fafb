"""Wires the notifier service: settings, runtime (Kafka, store, consumers) and HTTP routes.

Notifier: customer notifications and the operators' live dashboard.
"""

from __future__ import annotations

from fastapi import FastAPI

from aftercare.events.runtime import ConsumerSpec, ServiceRuntime
from aftercare.notifier.entrypoints import consumer
from aftercare.notifier.settings import NotifierSettings


def build_app(settings: NotifierSettings | None = None) -> FastAPI:
    settings = settings or NotifierSettings()
    runtime = ServiceRuntime(
        settings,
        consumers=[ConsumerSpec(group_id=consumer.CONSUMER_GROUP, topics=consumer.TOPICS, handlers=consumer.handlers)],
    )
    app = FastAPI(title="Aftercare notifier", version="0.1.0", lifespan=runtime.lifespan)
    app.include_router(runtime.operations_router())
    return app
