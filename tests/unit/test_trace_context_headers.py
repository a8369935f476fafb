"""The consumer reads the publisher's trace context from Kafka headers with a direct parse of the
common ``traceparent`` (version 00); it must give what OpenTelemetry's W3C propagator gives, for
good headers and bad ones alike."""

from __future__ import annotations

import pytest
from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from aftercare.events.tracing import context_with_trace, extract_trace_context

TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
SPAN = "00f067aa0ba902b7"


def seen(context: object) -> tuple[int, int, int, bool, str] | None:
    span_context = trace.get_current_span(context).get_span_context()  # type: ignore[arg-type]
    if not span_context.is_valid:
        return None
    state = span_context.trace_state.to_header() if span_context.trace_state else ""
    return (span_context.trace_id, span_context.span_id, span_context.trace_flags, span_context.is_remote, state)


@pytest.mark.parametrize(
    "headers",
    [
        [("traceparent", f"00-{TRACE}-{SPAN}-01".encode())],
        [("traceparent", f"00-{TRACE}-{SPAN}-00".encode()), ("tracestate", b"vendor=abc,other=x1")],
        [("tracestate", b"vendor=abc"), ("traceparent", f"00-{TRACE}-{SPAN}-01".encode())],
        [("traceparent", f"00-{TRACE.upper()}-{SPAN}-01".encode())],  # upper case: not W3C
        [("traceparent", f"00-{'0' * 32}-{SPAN}-01".encode())],  # invalid trace id
        [("traceparent", f"00-{TRACE}-{'0' * 16}-01".encode())],  # invalid span id
        [("traceparent", f"01-{TRACE}-{SPAN}-01-future".encode())],  # a later version, extra field
        [("traceparent", f"ff-{TRACE}-{SPAN}-01".encode())],
        [("traceparent", b"garbage")],
        [("traceparent", f"00-{TRACE}-{SPAN}-01".encode()), ("tracestate", b"not a valid state!!")],
        [("other", b"x")],
        [],
    ],
)
def test_the_publishers_trace_context_is_read_as_the_w3c_propagator_reads_it(headers: list[tuple[str, bytes]]) -> None:
    carrier = {key: value.decode("latin-1") for key, value in headers if key in ("traceparent", "tracestate")}
    expected = seen(TraceContextTextMapPropagator().extract(carrier))
    assert seen(extract_trace_context(headers)) == expected


# --- without a span per event: the context a consumer's handlers run in ------------------------


def test_a_message_with_a_trace_context_is_handled_in_the_publishers_trace() -> None:
    context = context_with_trace(extract_trace_context([("traceparent", f"00-{TRACE}-{SPAN}-01".encode())]))
    assert seen(context) == (int(TRACE, 16), int(SPAN, 16), 1, True, "")


@pytest.mark.parametrize("headers", [[], [("traceparent", b"garbage")]])
def test_a_message_without_a_usable_trace_context_is_handled_in_a_fresh_trace_of_its_own(
    headers: list[tuple[str, bytes]],
) -> None:
    first, second = seen(context_with_trace(extract_trace_context(headers))), seen(context_with_trace(Context()))
    assert first is not None and second is not None, "logs and published events get a trace id"
    assert first[0] != second[0], "a new trace for each such message"
    assert first[2] == 0 and not first[3], "unsampled, made here"
