"""OpenTelemetry tracing, with the trace context carried through Kafka headers.

The exporter is chosen by the environment (``AFTERCARE_OTEL_EXPORTER``): ``none`` (spans are
still created so trace ids appear in logs and events), ``console`` or ``otlp`` (to
``OTEL_EXPORTER_OTLP_ENDPOINT``).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from opentelemetry import propagate, trace
from opentelemetry.context import Context
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter, SpanExporter

KafkaHeaders = Sequence[tuple[str, bytes]]

_configured = False


def configure_tracing(service: str, exporter: str = "none", endpoint: str | None = None) -> None:
    """Install the tracer provider once per process."""
    global _configured
    if _configured:
        return
    provider = TracerProvider(resource=Resource.create({"service.name": f"aftercare-{service}"}))
    span_exporter: SpanExporter | None = None
    if exporter == "console":
        span_exporter = ConsoleSpanExporter()
    elif exporter == "otlp":
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        span_exporter = OTLPSpanExporter(endpoint=endpoint) if endpoint else OTLPSpanExporter()
    if span_exporter is not None:
        provider.add_span_processor(BatchSpanProcessor(span_exporter))
    trace.set_tracer_provider(provider)
    _configured = True


def tracer() -> trace.Tracer:
    return trace.get_tracer("aftercare.events")


def inject_trace_headers(context: Context | None = None) -> dict[str, str]:
    """The current (or given) trace context as W3C ``traceparent``/``tracestate`` strings."""
    carrier: dict[str, str] = {}
    propagate.inject(carrier, context=context)
    return carrier


def extract_trace_context(headers: Iterable[tuple[str, bytes]] | None) -> Context:
    """The publisher's trace context from Kafka headers (a fresh root if there is none)."""
    carrier = {
        key: value.decode("latin-1")
        for key, value in (headers or ())
        if key in ("traceparent", "tracestate") and value is not None
    }
    return propagate.extract(carrier)


def current_trace_id() -> str | None:
    context = trace.get_current_span().get_span_context()
    return format(context.trace_id, "032x") if context.is_valid else None
