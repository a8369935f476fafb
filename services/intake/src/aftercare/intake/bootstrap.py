"""Wires the intake service: settings, runtime (Kafka, store, consumers) and every channel.

Intake: every channel in (HTTP API, PagerDuty, Alertmanager, email, phone, web form), one
incident record and its lifecycle.
"""

from __future__ import annotations

from fastapi import FastAPI
from fastapi.telemetry import TelemetryConfig

from aftercare.events.runtime import ConsumerSpec, ServiceRuntime, retry_until_ready
from aftercare.events.web import BodySizeLimit, PathLimit, install_problem_handlers
from aftercare.intake import housekeeping
from aftercare.intake.adapters.tenant_changes import follow_tenant_changes
from aftercare.intake.components import IntakeComponents
from aftercare.intake.entrypoints import (
    admin_api,
    alertmanager_api,
    classification_api,
    consumer,
    incidents_api,
    operators_api,
    pagerduty_api,
    phone_api,
    web_portal,
)
from aftercare.intake.entrypoints.email_server import InboundEmailServer
from aftercare.intake.settings import IntakeSettings

OUTBOX_SWEEP_SECONDS = 5.0


def http_telemetry(settings: IntakeSettings) -> TelemetryConfig:
    """FastAPI's own OpenTelemetry: a span per request only when an exporter sends spans somewhere.

    Without one (``AFTERCARE_OTEL_EXPORTER=none``) spans are not recorded (see
    ``aftercare.events.tracing``), yet FastAPI still made a request span and one per dependency,
    endpoint and serialisation: ~15 % of intake's CPU per report under load (py-spy). Events and
    log lines carry the incident's own trace id either way. Per-operation spans stay off always
    (nobody reads spans of dependency resolution); request counts and latencies are in /metrics.
    """
    traced = settings.otel_exporter != "none"
    return {"tracing": traced, "operation_spans": False, "metrics": False, "logs": traced}


def build_app(settings: IntakeSettings | None = None) -> FastAPI:
    settings = settings or IntakeSettings()
    app = FastAPI(
        title="Aftercare intake",
        version="0.1.0",
        description="Every channel a support company's customers and systems use, into one incident.",
        telemetry=http_telemetry(settings),
    )

    async def on_store_and_kafka(runtime: ServiceRuntime) -> None:
        intake = IntakeComponents.build(runtime, settings)
        await intake.ensure_indexes()
        if settings.seed_file is not None:
            seed_file = settings.seed_file
            # Idempotent, so retried: the first publishes to a broker that has just started (or
            # just created its topics) can outlast the publish deadline while leaders are elected.
            await retry_until_ready(
                "the seed tenants stored and announced",
                lambda: intake.tenants.load_seed(seed_file),
                timeout_s=settings.startup_timeout_seconds,
            )
        # Publish whatever a crash left in outboxes, then keep sweeping in the background.
        runtime.spawn(
            intake.incidents.relay.sweep_forever(
                [intake.incidents.collection, intake.tenants.tenants], OUTBOX_SWEEP_SECONDS
            ),
            "outbox-sweep",
        )
        # Every instance forgets cached credentials of a tenant that changed (e.g. deactivated).
        runtime.spawn(
            follow_tenant_changes(settings.kafka_bootstrap_servers, intake.tenants.cache),
            "tenant-changes",
        )
        runtime.every("housekeeping", settings.housekeeping_interval_seconds, lambda: housekeeping.run_once(intake))
        app.state.intake = intake
        await operators_api.start(app, runtime)
        if settings.smtp_enabled:
            email = InboundEmailServer(intake)
            await email.start()
            app.state.email_server = email

    async def on_shutdown(runtime: ServiceRuntime) -> None:
        email = getattr(app.state, "email_server", None)
        if email is not None:
            await email.stop()

    runtime = ServiceRuntime(
        settings,
        consumers=[
            ConsumerSpec(
                group_id=consumer.CONSUMER_GROUP,
                topics=consumer.TOPICS,
                handlers=lambda rt: consumer.handlers(app.state.intake.incidents),
            )
        ],
        on_connected=on_store_and_kafka,
        on_shutdown=on_shutdown,
    )
    app.router.lifespan_context = runtime.lifespan
    install_problem_handlers(
        app,
        service="Intake",
        retry_advice="Retry later; send an Idempotency-Key so that a retry can never open a second incident.",
    )
    app.add_middleware(
        BodySizeLimit,
        max_bytes=settings.max_body_bytes,
        advice="Send less (attachments go by email) or ask the operator to raise AFTERCARE_INTAKE_MAX_BODY_BYTES.",
        paths=[
            PathLimit(alertmanager_api.router.prefix, settings.max_alertmanager_body_bytes),
            # PagerDuty's clients parse PagerDuty's error format, also for a body that is too large.
            PathLimit("/v2/", settings.max_body_bytes, refusal=pagerduty_api.body_too_large),
        ],
    )
    app.include_router(runtime.operations_router())
    app.include_router(incidents_api.router)
    app.include_router(classification_api.router)
    app.include_router(admin_api.router)
    app.include_router(operators_api.router)
    app.include_router(pagerduty_api.router)
    app.include_router(alertmanager_api.router)
    app.include_router(phone_api.router)
    app.include_router(web_portal.router)
    return app
