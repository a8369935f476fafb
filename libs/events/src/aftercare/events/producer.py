"""Publishing events to Kafka: idempotent, acks=all, keyed by incident id.

``publish`` returns only once the broker has the event on every in-sync replica, so a caller
that answers "accepted" after it can promise the event is durable.

Two limits make a publish fail fast instead of hanging or failing forever:

* a **deadline** (``publish_deadline_s``, a few seconds): when Kafka does not acknowledge in
  time, ``PublishFailed`` is raised. The caller answers "unavailable, retry" and the event stays
  in its outbox, where the sweep publishes it once Kafka is back;
* a **maximum message size** (``MAX_MESSAGE_BYTES``), set below the broker's own limit and
  checked before anything is sent (``check_size``). The outbox checks it when an event is
  stored, i.e. before the store write, so an event that could never be published is never
  written as pending.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Iterable, Sequence
from typing import Any

from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError, KafkaTimeoutError
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


# The largest event (value + key + headers) intake and the services put on Kafka. The broker
# refuses record batches over ``message.max.bytes`` (1,048,588 by default, which the local
# broker and the topics keep); an event alone this size leaves room for the batch framing. Each
# channel bounds its fields far below this, so reaching it means a channel lacks a bound: the
# event is refused before it is stored (``EventTooLarge``), never stored as unpublishable.
MAX_MESSAGE_BYTES = 1_000_000

# How long a publish may wait for Kafka's acknowledgement before the caller is told to retry.
DEFAULT_PUBLISH_DEADLINE_S = 5.0


class PublishFailed(Exception):
    """Kafka did not acknowledge in time (or is unreachable): a temporary outage.

    What was being published stays wherever it came from (an outbox); retrying later is right.
    """


class EventTooLarge(ValueError):
    """An event larger than ``MAX_MESSAGE_BYTES``: Kafka would refuse it, now and on every retry."""

    def __init__(self, event_type: str, size: int, limit: int, largest_field: str | None) -> None:
        self.event_type = event_type
        self.size = size
        self.limit = limit
        self.largest_field = largest_field
        where = f"; its largest field is '{largest_field}'" if largest_field else ""
        super().__init__(f"{event_type} event is {size} bytes, over the {limit}-byte limit{where}")


def message_size(value: bytes, key: bytes | None, headers: Sequence[tuple[str, bytes]]) -> int:
    """The bytes a record carries (what Kafka's size limit counts, less the batch framing)."""
    return len(value) + len(key or b"") + sum(len(name) + len(content) for name, content in headers)


def check_size(envelope: Envelope[Any], value: bytes, limit: int = MAX_MESSAGE_BYTES) -> None:
    """Raise ``EventTooLarge`` if ``envelope`` serialised as ``value`` would exceed ``limit``."""
    if len(value) <= limit - 2048:  # the usual case: no need to count key and headers
        return
    size = message_size(value, envelope.key.encode(), event_headers(envelope))
    if size > limit:
        raise EventTooLarge(envelope.type, size, limit, _largest_field(envelope))


def _largest_field(envelope: Envelope[Any]) -> str | None:
    """The data field taking the most room, so the refusal can say what to shorten."""
    sizes: dict[str, int] = {}
    for name, value in envelope.data.model_dump(mode="json").items():
        sizes[name] = len(value.encode()) if isinstance(value, str) else len(repr(value).encode())
    return max(sizes, key=lambda name: sizes[name]) if sizes else None


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
        self,
        bootstrap_servers: str,
        *,
        client_id: str,
        linger_ms: int = 5,
        request_timeout_ms: int = 30000,
        publish_deadline_s: float = DEFAULT_PUBLISH_DEADLINE_S,
        max_message_bytes: int = MAX_MESSAGE_BYTES,
    ) -> None:
        """``publish_deadline_s`` bounds every publish (``PublishFailed`` after it);
        ``max_message_bytes`` is the largest event accepted (``EventTooLarge`` above)."""
        self.publish_deadline_s = publish_deadline_s
        self.max_message_bytes = max_message_bytes
        self._kafka = AIOKafkaProducer(
            bootstrap_servers=bootstrap_servers,
            client_id=client_id,
            # Idempotence makes the broker drop duplicates of a retried send; acks=all waits for
            # every in-sync replica, so an acknowledged event survives a broker restart.
            enable_idempotence=True,
            acks="all",
            linger_ms=linger_ms,
            request_timeout_ms=request_timeout_ms,
            # Room for one event at the limit plus the request's framing; our own check
            # (check_size) refuses larger events first, with a reason a person can act on.
            max_request_size=max_message_bytes + 48_576,
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

        Events with the same key keep their order (one partition, idempotent producer). Raises
        ``EventTooLarge`` before sending anything if one event is over the size limit, and
        ``PublishFailed`` if Kafka has not acknowledged them all within the publish deadline
        (some may still arrive: consumers deduplicate by event id, so publishing them again
        from the outbox is harmless).
        """
        batch = list(envelopes)
        if not batch:
            return []
        published: list[Envelope[Any]] = []
        values: list[bytes] = []
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
            if span.is_recording():
                _annotate(span, batch, topic or batch[0].data.TOPIC)
            for envelope in batch:
                if envelope.traceparent is None and trace_context:
                    envelope = envelope.model_copy(
                        update={
                            "traceparent": trace_context.get("traceparent"),
                            "tracestate": trace_context.get("tracestate"),
                        }
                    )
                value = serialize(envelope)
                check_size(envelope, value, self.max_message_bytes)  # all checked before any is sent
                published.append(envelope)
                values.append(value)
            await self._send_all(
                [
                    (topic or envelope.data.TOPIC, value, envelope)
                    for envelope, value in zip(published, values, strict=True)
                ]
            )
        for envelope in published:
            counts[(topic or envelope.data.TOPIC, envelope.type)] += 1
        for (target, event_type), count in counts.items():
            EVENTS_PUBLISHED.labels(topic=target, type=event_type).inc(count)
        return published

    async def publish_serialized(self, records: Sequence[tuple[str, bytes, Envelope[Any]]]) -> None:
        """Publish events already serialised (e.g. the exact JSON an outbox stored), in order.

        Each record is (topic, value, envelope); the envelope gives key and headers. Same
        guarantees and errors as ``publish_many``.
        """
        for _, value, envelope in records:
            check_size(envelope, value, self.max_message_bytes)
        await self._send_all(records)
        counts: Counter[tuple[str, str]] = Counter((target, envelope.type) for target, _, envelope in records)
        for (target, event_type), count in counts.items():
            EVENTS_PUBLISHED.labels(topic=target, type=event_type).inc(count)

    async def _send_all(self, records: Sequence[tuple[str, bytes, Envelope[Any]]]) -> None:
        pending: list[asyncio.Future[Any]] = []
        try:
            async with asyncio.timeout(self.publish_deadline_s):
                for target, value, envelope in records:
                    pending.append(
                        await self._kafka.send(
                            target, value=value, key=envelope.key.encode(), headers=event_headers(envelope)
                        )
                    )
                await asyncio.gather(*pending)
        except TimeoutError as error:
            for future in pending:
                # Nobody awaits these any more; fetch their outcome so none is reported unretrieved.
                future.add_done_callback(_ignore_outcome)
            raise PublishFailed(
                f"Kafka did not acknowledge {len(records)} event(s) within {self.publish_deadline_s:g} s"
            ) from error
        except KafkaError as error:
            for future in pending:
                future.add_done_callback(_ignore_outcome)
            if getattr(error, "retriable", False) or isinstance(error, KafkaTimeoutError):
                raise PublishFailed(f"Kafka is unavailable: {error!r}") from error
            raise

    async def send_raw(
        self, topic: str, value: bytes | None, key: bytes | None, headers: Sequence[tuple[str, bytes]]
    ) -> None:
        """Send bytes as they are (used for dead letters, which may not be valid events)."""
        await self._kafka.send_and_wait(topic, value=value, key=key, headers=list(headers))


def _ignore_outcome(future: asyncio.Future[Any]) -> None:
    if not future.cancelled():
        future.exception()


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
