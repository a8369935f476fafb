"""Wires the triage service: settings, runtime (Kafka, store, consumers) and HTTP routes.

Triage: classification, priority, SLA deadlines, grouping and diagnosis of incidents, and the
customers' regular diagnostics.
"""

from __future__ import annotations

from fastapi import FastAPI

from aftercare.events.runtime import ConsumerSpec, ServiceRuntime
from aftercare.triage.components import TriageComponents
from aftercare.triage.entrypoints import consumer
from aftercare.triage.settings import TriageSettings

OUTBOX_SWEEP_SECONDS = 5.0


def build_app(settings: TriageSettings | None = None) -> FastAPI:
    settings = settings or TriageSettings()
    app = FastAPI(
        title="Aftercare triage",
        version="0.1.0",
        description="Classifies, prioritises, groups and diagnoses incidents; runs the customers' regular diagnostics.",
    )

    async def on_connected(runtime: ServiceRuntime) -> None:
        triage = TriageComponents.build(runtime, settings)
        await triage.prepare()
        runtime.spawn(
            triage.incidents.relay.sweep_forever([triage.incidents.collection], OUTBOX_SWEEP_SECONDS), "outbox-sweep"
        )
        app.state.triage = triage

    runtime = ServiceRuntime(
        settings,
        consumers=[
            ConsumerSpec(
                group_id=consumer.CONSUMER_GROUP,
                topics=consumer.TOPICS,
                handlers=lambda rt: consumer.handlers(app.state.triage),
            )
        ],
        on_connected=on_connected,
    )
    app.router.lifespan_context = runtime.lifespan
    app.include_router(runtime.operations_router())
    return app
