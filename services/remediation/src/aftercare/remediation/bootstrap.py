"""Wires the remediation service: settings, runtime (Kafka, store, consumers), timed work and HTTP.

Remediation: runbooks that fix known problems, verification, rollback, escalation to people.
"""

from __future__ import annotations

import logging
from pathlib import Path

from fastapi import FastAPI

from aftercare.events.runtime import ConsumerSpec, ServiceRuntime
from aftercare.events.web import BodySizeLimit, install_problem_handlers
from aftercare.remediation.components import RemediationComponents, utc_now
from aftercare.remediation.entrypoints import api, consumer, scheduled
from aftercare.remediation.service_layer import escalations, tenant_seeds
from aftercare.remediation.settings import RemediationSettings

OUTBOX_SWEEP_SECONDS = 5.0


def build_app(settings: RemediationSettings | None = None) -> FastAPI:
    settings = settings or RemediationSettings()
    app = FastAPI(
        title="Aftercare remediation",
        version="0.1.0",
        description="Runbooks that fix known problems safely, verify the fix, undo it when it did not work, "
        "and hand over to people when they cannot.",
    )
    app.state.settings = settings

    async def on_connected(runtime: ServiceRuntime) -> None:
        # httpx logs every request at INFO; the run's records already say what was called.
        logging.getLogger("httpx").setLevel(logging.WARNING)
        parts = RemediationComponents.build(runtime, settings)
        await parts.store.ensure_indexes()
        if settings.runbook_seed_dir:
            await parts.runbooks.seed(Path(settings.runbook_seed_dir))
        if settings.escalation_policy_seed_dir:
            await tenant_seeds.seed_escalation_policies(parts.store, Path(settings.escalation_policy_seed_dir), utc_now)
        if settings.credential_seed_file:
            await tenant_seeds.seed_credentials(parts.vault, Path(settings.credential_seed_file), utc_now)
        runtime.spawn(
            parts.relay.sweep_forever([parts.store.runs, parts.store.escalations], OUTBOX_SWEEP_SECONDS),
            "outbox-sweep",
        )
        store_poll_s = scheduled.store_poll_seconds(settings.poll_interval_seconds, settings.lease_margin_seconds)
        runtime.spawn(scheduled.run_forever(parts, settings.poll_interval_seconds, store_poll_s), "due-runs")
        runtime.on_due(escalations.DEADLINE, parts.escalations.deadline_due)
        app.state.remediation = parts

    async def on_shutdown(runtime: ServiceRuntime) -> None:
        parts: RemediationComponents | None = getattr(app.state, "remediation", None)
        if parts is not None:
            await parts.close()

    runtime = ServiceRuntime(
        settings,
        consumers=[
            ConsumerSpec(
                group_id=consumer.CONSUMER_GROUP,
                topics=consumer.TOPICS,
                handlers=lambda rt: consumer.handlers(app.state.remediation),
                concurrency=settings.consumer_concurrency,
            )
        ],
        on_connected=on_connected,
        on_shutdown=on_shutdown,
    )
    # Operators (and their roles) from the tenants topic: require_role checks against this copy.
    runtime.keep_operator_directory()
    app.router.lifespan_context = runtime.lifespan
    install_problem_handlers(app, service="Remediation")
    app.add_middleware(BodySizeLimit, max_bytes=settings.max_body_bytes, advice="Runbooks are small; send less.")
    app.include_router(runtime.operations_router())
    app.include_router(api.router)
    return app
