"""Wires the intake service: settings, runtime (Kafka, store, consumers) and HTTP routes.

Intake: every channel in (HTTP API, PagerDuty, Alertmanager, email, phone, web form), one
incident record and its lifecycle.
"""

from __future__ import annotations

from fastapi import FastAPI

from aftercare.events.runtime import ServiceRuntime
from aftercare.intake.settings import IntakeSettings


def build_app(settings: IntakeSettings | None = None) -> FastAPI:
    settings = settings or IntakeSettings()
    runtime = ServiceRuntime(settings)
    app = FastAPI(title="Aftercare intake", version="0.1.0", lifespan=runtime.lifespan)
    app.include_router(runtime.operations_router())
    return app
