"""What every intake request costs besides its own work: no worker-thread hop for a dependency,
no FastAPI spans when nothing records them (bench/intake_accept_rate.py with py-spy found both
on the accept path of an alert storm)."""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterator
from typing import Any

from fastapi import FastAPI
from fastapi.dependencies.models import Dependant
from fastapi.routing import APIRoute

from aftercare.intake.bootstrap import build_app, http_telemetry
from aftercare.intake.settings import IntakeSettings


def _api_routes(routes: Any) -> Iterator[APIRoute]:
    for route in routes:
        if isinstance(route, APIRoute):
            yield route
            continue
        included = getattr(route, "original_router", None) or getattr(route, "routes", None)
        if included is not None:
            yield from _api_routes(getattr(included, "routes", included))


def _dependencies(dependant: Dependant) -> Iterator[Callable[..., Any]]:
    for dependency in dependant.dependencies:
        if dependency.call is not None:
            yield dependency.call
        yield from _dependencies(dependency)


def _runs_on_the_event_loop(call: Callable[..., Any]) -> bool:
    if inspect.iscoroutinefunction(call):
        return True
    method = type(call).__dict__.get("__call__")  # a dependency that is a callable object
    return method is not None and inspect.iscoroutinefunction(method)


def test_no_intake_endpoint_resolves_a_dependency_in_a_worker_thread() -> None:
    # FastAPI runs a plain ``def`` dependency through a thread pool: a thread hop per request.
    app: FastAPI = build_app(IntakeSettings())
    routes = list(_api_routes(app.router.routes))
    assert any(route.path == "/v1/incidents" and "POST" in route.methods for route in routes)
    threaded = sorted(
        {
            f"{call.__module__}.{getattr(call, '__qualname__', call)} (for {route.path})"
            for route in routes
            for call in _dependencies(route.dependant)
            if not _runs_on_the_event_loop(call)
        }
    )
    assert threaded == []


def test_fastapi_makes_no_spans_when_no_exporter_records_them() -> None:
    quiet = http_telemetry(IntakeSettings(otel_exporter="none"))
    assert quiet["tracing"] is False
    assert quiet["operation_spans"] is False


def test_request_spans_are_made_when_an_exporter_sends_them_somewhere() -> None:
    exported = http_telemetry(IntakeSettings(otel_exporter="otlp"))
    assert exported["tracing"] is True
    # Spans of dependency resolution and serialisation are noise even then.
    assert exported["operation_spans"] is False
