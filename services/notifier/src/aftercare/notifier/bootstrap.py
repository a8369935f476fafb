"""Wires the notifier service: settings, runtime (Kafka, store, consumers) and HTTP routes.

Notifier: customer notifications (email, webhooks, SMS, chat), the operators' live dashboard and
the customers' status pages.
"""

from __future__ import annotations

from fastapi import FastAPI

from aftercare.events.runtime import ConsumerSpec, ServiceRuntime
from aftercare.events.web import install_problem_handlers
from aftercare.notifier.adapters import live_feed
from aftercare.notifier.adapters.templates import MessageTemplates
from aftercare.notifier.components import NotifierComponents
from aftercare.notifier.entrypoints import api, consumer, dashboard, scheduled, status_page
from aftercare.notifier.service_layer import notify
from aftercare.notifier.settings import NotifierSettings

OUTBOX_SWEEP_SECONDS = 5.0


def build_app(settings: NotifierSettings | None = None) -> FastAPI:
    settings = settings or NotifierSettings()
    # Checked before anything connects: a broken template stops the service at start-up.
    templates = MessageTemplates()
    templates.check()
    app = FastAPI(
        title="Aftercare notifier",
        version="0.1.0",
        description="Tells customers about their incidents, exactly once; the operators' live dashboard.",
    )
    app.state.settings = settings

    async def on_connected(runtime: ServiceRuntime) -> None:
        notifier = NotifierComponents.build(runtime, settings, templates)
        await notifier.store.ensure_indexes()
        app.state.notifier = notifier
        runtime.spawn(
            notifier.relay.sweep_forever([notifier.store.deliveries, notifier.store.advisories], OUTBOX_SWEEP_SECONDS),
            "outbox-sweep",
        )
        runtime.spawn(scheduled.run_forever(notifier, settings.delivery_poll_seconds), "deliveries")
        # Stored due times of the platform (collection due_times, one leased poller).
        runtime.on_due(notify.PERIODIC_UPDATE, notifier.planner.fire_periodic_update)
        runtime.on_due(notify.DIGEST, notifier.digests.send)
        runtime.spawn(
            live_feed.tail(
                settings.kafka_bootstrap_servers,
                consumer.DASHBOARD_TOPICS,
                live_feed.LiveRows(notifier.read_model, notifier.live),
            ),
            "dashboard-live-tail",
        )

    async def on_shutdown(runtime: ServiceRuntime) -> None:
        notifier = getattr(app.state, "notifier", None)
        if notifier is not None:
            await notifier.close()

    runtime = ServiceRuntime(
        settings,
        consumers=[
            ConsumerSpec(
                group_id=consumer.CONSUMER_GROUP,
                topics=consumer.TOPICS,
                handlers=lambda rt: consumer.handlers(app.state.notifier),
            )
        ],
        on_connected=on_connected,
        on_shutdown=on_shutdown,
    )
    runtime.keep_operator_directory()
    app.router.lifespan_context = runtime.lifespan
    install_problem_handlers(app, service="The notifier")
    app.include_router(runtime.operations_router())
    app.include_router(api.router)
    app.include_router(dashboard.router)
    app.include_router(status_page.router)
    return app
