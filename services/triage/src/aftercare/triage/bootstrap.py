"""Wires the triage service: settings, runtime (Kafka, store, consumers) and HTTP routes.

Triage: classification, priority, SLA deadlines, grouping and diagnosis of incidents, and the
customers' regular diagnostics.
"""

from __future__ import annotations

from fastapi import FastAPI

from aftercare.events.runtime import ConsumerSpec, ServiceRuntime
from aftercare.events.web import BodySizeLimit, install_problem_handlers
from aftercare.triage.components import TriageComponents
from aftercare.triage.entrypoints import api, consumer, scheduled
from aftercare.triage.service_layer.sla_watch import SLA_BREACH
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
        runtime.spawn(
            triage.incidents.relay.sweep_forever([triage.targets.targets], OUTBOX_SWEEP_SECONDS), "outbox-sweep-targets"
        )
        if settings.regular_diagnostics_enabled:
            runtime.spawn(scheduled.run_regular_diagnostics(triage.regular), "regular-diagnostics")
        runtime.on_due(SLA_BREACH, triage.sla.breached)
        app.state.triage = triage

    async def on_shutdown(runtime: ServiceRuntime) -> None:
        triage = getattr(app.state, "triage", None)
        if triage is not None:
            await triage.prober.close()

    runtime = ServiceRuntime(
        settings,
        consumers=[
            ConsumerSpec(
                group_id=consumer.CONSUMER_GROUP,
                topics=consumer.TOPICS,
                handlers=lambda rt: consumer.handlers(app.state.triage),
                concurrency=settings.consumer_concurrency,
            )
        ],
        on_connected=on_connected,
        on_shutdown=on_shutdown,
    )
    # Operators (who may read and change rules) come from the tenants topic like tenants do.
    runtime.keep_operator_directory()
    app.router.lifespan_context = runtime.lifespan
    app.state.settings = settings
    install_problem_handlers(app, service="Triage")
    app.add_middleware(BodySizeLimit, max_bytes=1_000_000, advice="Send fewer rules at once.")
    app.include_router(runtime.operations_router())
    app.include_router(api.router)
    return app
