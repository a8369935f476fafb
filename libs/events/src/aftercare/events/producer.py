"""Publishing events to Kafka: idempotent, acks=all, keyed by incident id.

``publish`` returns only once the broker has the event on every in-sync replica, so a caller
that answers "accepted" after it can promise the event is durable.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Iterable, Sequence
from typing import Any

from aiokafka import AIOKafkaProducer
from opentelemetry import trace
from opentelemetry.trace import SpanKind

from aftercare.events.catalog import serialize
from aftercare.events.envelope import Envelope
from aftercare.events.metrics import EVENTS_PUBLISHED
from aftercare.events.tracing import inject_trace_headers, tracer

# Header names carried with every event, so a consumer or a person reading a dead-letter topic
# can route and trace a message without parsing its value.
HEADER_EVENT_ID = "event_id"
HEADER_EVENT_TYPE = "event_type"
HEADER_EVENT_VERSION = "event_version"
HEADER_TENANT_ID = "tenant_id"


def event_headers(envelope: Envelope[Any]) -> list[tuple[str, bytes]]:
    headers = [
        (HEADER_EVENT_ID, envelope.id.encode()),
        (HEADER_EVENT_TYPE, envelope.type.encode()),
        (HEADER_EVENT_VERSION, str(envelope.version).encode()),
        (HEADER_TENANT_ID, envelope.tenant_id.encode()),
    ]
    if envelope.traceparent:
        headers.append(("traceparent", envelope.traceparent.encode()))
    if envelope.tracestate:
        headers.append(("tracestate", envelope.tracestate.encode()))
    return headers


class EventProducer:
    """The one way services put events on Kafka."""

    def __init__(
        self, bootstrap_servers: str, *, client_id: str, linger_ms: int = 5, request_timeout_ms: int = 30000
    ) -> None:
        self._kafka = AIOKafkaProducer(
            bootstrap_servers=bootstrap_servers,
            client_id=client_id,
            # Idempotence makes the broker drop duplicates of a retried send; acks=all waits for
            # every in-sync replica, so an acknowledged event survives a broker restart.
            enable_idempotence=True,
            acks="all",
            linger_ms=linger_ms,
            request_timeout_ms=request_timeout_ms,
        )

    @property
    def kafka(self) -> AIOKafkaProducer:
        return self._kafka

    async def start(self) -> None:
        await self._kafka.start()

    async def stop(self) -> None:
        await self._kafka.stop()

    async def publish(self, envelope: Envelope[Any], topic: str | None = None) -> Envelope[Any]:
        """Publish one event and wait until Kafka acknowledged it.

        The topic is the event type's own unless given. The envelope gets the current trace
        context if it has none; the published envelope is returned.
        """
        (published,) = await self.publish_many([envelope], topic=topic)
        return published

    async def publish_many(self, envelopes: Iterable[Envelope[Any]], topic: str | None = None) -> list[Envelope[Any]]:
        """Publish several events in one round of batches; returns once all are acknowledged.

        Events with the same key keep their order (one partition, idempotent producer).
        """
        batch = list(envelopes)
        published: list[Envelope[Any]] = []
        pending: list[asyncio.Future[Any]] = []
        counts: Counter[tuple[str, str]] = Counter()
        # One PRODUCER span per call, not per event: events published together belong to one
        # operation (an accepted report and its follow-ups), and a span per event cost more
        # than the rest of publishing. Every event carries this span's trace context.
        name = f"publish {batch[0].type}" if len(batch) == 1 else f"publish {len(batch)} events"
        with tracer().start_as_current_span(name, kind=SpanKind.PRODUCER) as span:
            trace_context: dict[str, str] = {}
            # Without tracing configured the span is a no-op: nothing to inject, nothing to copy.
            if span.get_span_context().is_valid:
                trace_context = inject_trace_headers()
            if span.is_recording() and batch:
                _annotate(span, batch, topic or batch[0].data.TOPIC)
            for envelope in batch:
                target = topic or envelope.data.TOPIC
                if envelope.traceparent is None and trace_context:
                    envelope = envelope.model_copy(
                        update={
                            "traceparent": trace_context.get("traceparent"),
                            "tracestate": trace_context.get("tracestate"),
                        }
                    )
                pending.append(
                    await self._kafka.send(
                        target,
                        value=serialize(envelope),
                        key=envelope.key.encode(),
                        headers=event_headers(envelope),
                    )
                )
                published.append(envelope)
                counts[(target, envelope.type)] += 1
            await asyncio.gather(*pending)
        for (target, event_type), count in counts.items():
            EVENTS_PUBLISHED.labels(topic=target, type=event_type).inc(count)
        return published

    async def send_raw(
        self, topic: str, value: bytes | None, key: bytes | None, headers: Sequence[tuple[str, bytes]]
    ) -> None:
        """Send bytes as they are (used for dead letters, which may not be valid events)."""
        await self._kafka.send_and_wait(topic, value=value, key=key, headers=list(headers))


def _annotate(span: trace.Span, batch: list[Envelope[Any]], topic: str) -> None:
    first = batch[0]
    attributes: dict[str, str | int] = {
        "messaging.system": "kafka",
        "messaging.destination.name": topic,
        "messaging.batch.message_count": len(batch),
        "aftercare.event_type": first.type,
        "aftercare.tenant_id": first.tenant_id,
    }
    if len(batch) == 1:
        attributes["messaging.message.id"] = first.id
    if first.incident_id:
        attributes["aftercare.incident_id"] = first.incident_id
    span.set_attributes(attributes)  # one call: the SDK takes its lock once, not six times
