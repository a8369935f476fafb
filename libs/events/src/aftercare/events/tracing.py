"""OpenTelemetry tracing, with the trace context carried through Kafka headers.

One incident is one trace: every event about an incident carries the incident's own trace id,
``incident_trace_id(incident_id)``, a digest of the incident id, wherever it is made (a request,
a timer, a run resumed from its stored due time, a handler of the message before). A consumer
continues the trace from the message's headers, so every service's spans and log lines about an
incident carry that one id, and an operator computes it from the incident id alone
(``aftercare trace-id <incident id>``).

The exporter is chosen by the environment (``AFTERCARE_OTEL_EXPORTER``): ``none`` (spans are
not recorded, and the consumer runner makes none per event; trace ids still appear in logs and
events), ``console`` or ``otlp`` (to ``OTEL_EXPORTER_OTLP_ENDPOINT``).
"""

from __future__ import annotations

import hashlib
import random
import re
import secrets
from collections.abc import Iterable, Sequence

from opentelemetry import propagate, trace
from opentelemetry.context import Context
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter, SpanExporter
from opentelemetry.sdk.trace.sampling import ALWAYS_OFF, ALWAYS_ON
from opentelemetry.trace.span import TraceState

KafkaHeaders = Sequence[tuple[str, bytes]]

_TRACEPARENT_V00 = re.compile(r"00-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})")

_configured = False


def configure_tracing(service: str, exporter: str = "none", endpoint: str | None = None) -> None:
    """Install the tracer provider once per process."""
    global _configured
    if _configured:
        return
    span_exporter: SpanExporter | None = None
    if exporter == "console":
        span_exporter = ConsoleSpanExporter()
    elif exporter == "otlp":
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        span_exporter = OTLPSpanExporter(endpoint=endpoint) if endpoint else OTLPSpanExporter()
    # Without an exporter nobody reads what a span records, so spans are not recorded: they keep
    # their trace and span ids (logs and published events still carry them), but cost a fraction
    # (recording was the largest part of the consumer's CPU per event). The exporter setting is
    # one for the whole deployment, so no service records children of these unsampled spans.
    provider = TracerProvider(
        resource=Resource.create({"service.name": f"aftercare-{service}"}),
        sampler=ALWAYS_ON if span_exporter is not None else ALWAYS_OFF,
    )
    if span_exporter is not None:
        provider.add_span_processor(BatchSpanProcessor(span_exporter))
    trace.set_tracer_provider(provider)
    _configured = True


def tracer() -> trace.Tracer:
    return trace.get_tracer("aftercare.events")


def spans_recorded() -> bool:
    """Whether the installed tracer provider records spans (an exporter reads them).

    False without an exporter (``ALWAYS_OFF``, see ``configure_tracing``) and before any
    provider is installed (the API's no-op tracer): then a span per consumed event is pure cost.
    """
    provider = trace.get_tracer_provider()
    if not isinstance(provider, TracerProvider):
        return False
    return provider.sampler is not ALWAYS_OFF


def context_with_trace(context: Context) -> Context:
    """``context`` if it holds a valid span, else ``context`` with a fresh unsampled root: what a
    new span made under it would give logs and published events (a trace id), without the span."""
    if trace.get_current_span(context).get_span_context().is_valid:
        return context
    root = trace.SpanContext(
        trace_id=random.getrandbits(128) or 1,
        span_id=random.getrandbits(64) or 1,
        is_remote=False,
        trace_flags=trace.TraceFlags(trace.TraceFlags.DEFAULT),
    )
    return trace.set_span_in_context(trace.NonRecordingSpan(root), context)


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
    if not carrier:
        return Context()  # what the propagators give for nothing, without asking each of them
    # The common case read directly (the propagator's generic path was a tenth of a consumer's
    # CPU per event); anything else (another version, odd values) goes the generic way.
    match = _TRACEPARENT_V00.fullmatch(carrier.get("traceparent", ""))
    if match is None:
        return propagate.extract(carrier)
    trace_id, span_id = int(match[1], 16), int(match[2], 16)
    if not trace_id or not span_id:
        return propagate.extract(carrier)
    tracestate = carrier.get("tracestate")
    span_context = trace.SpanContext(
        trace_id=trace_id,
        span_id=span_id,
        is_remote=True,
        trace_flags=trace.TraceFlags(int(match[3], 16)),
        trace_state=TraceState.from_header([tracestate]) if tracestate is not None else None,
    )
    return trace.set_span_in_context(trace.NonRecordingSpan(span_context), Context())


def current_trace_id() -> str | None:
    context = trace.get_current_span().get_span_context()
    return format(context.trace_id, "032x") if context.is_valid else None


def incident_trace_id(incident_id: str) -> str:
    """The trace id of everything that happens to one incident (32 lowercase hex digits)."""
    return hashlib.sha256(b"aftercare-incident:" + incident_id.encode()).hexdigest()[:32]


def incident_traceparent(incident_id: str, current: trace.SpanContext | None = None) -> str:
    """A W3C traceparent in the incident's trace: child of ``current`` when that span is in the
    incident's trace (the message being handled), else of a fresh span id (the first event, or
    one made by a request or timer)."""
    trace_id = incident_trace_id(incident_id)
    if current is not None and current.is_valid and format(current.trace_id, "032x") == trace_id:
        return f"00-{trace_id}-{format(current.span_id, '016x')}-01"
    return f"00-{trace_id}-{secrets.token_hex(8)}-01"
