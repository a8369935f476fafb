"""A consumer continues the publisher's trace (W3C context in Kafka headers) and logs with the
event's tenant, incident, event id and trace id bound."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

import pytest
import structlog
from pymongo.asynchronous.database import AsyncDatabase

from aftercare.events.consumer import ConsumerRunner
from aftercare.events.envelope import Envelope, envelope_for
from aftercare.events.incidents import Channel, IncidentReported
from aftercare.events.processed import ProcessedEventLog
from aftercare.events.producer import EventProducer
from aftercare.events.tracing import configure_tracing, current_trace_id, incident_trace_id, tracer

from kafka_helpers import Infrastructure, running, wait_until

pytestmark = pytest.mark.integration


async def test_the_handler_runs_in_the_publishers_trace_with_log_context_bound(
    infrastructure: Infrastructure, mongo_db: AsyncDatabase[dict[str, Any]], new_topic: Callable[..., Awaitable[str]]
) -> None:
    configure_tracing("tests")
    topic = await new_topic("traced")
    seen: list[dict[str, Any]] = []

    async def remember_context(envelope: Envelope[IncidentReported]) -> None:
        seen.append({"trace_id": current_trace_id(), "log": structlog.contextvars.get_contextvars()})

    producer = EventProducer(infrastructure.bootstrap_servers, client_id="trace-test")
    await producer.start()
    runner = ConsumerRunner(
        bootstrap_servers=infrastructure.bootstrap_servers,
        group_id=f"{topic}-group",
        topics=[topic],
        handlers={IncidentReported: [remember_context]},
        processed=ProcessedEventLog(mongo_db),
        producer=producer,
    )
    try:
        async with running(runner):
            with tracer().start_as_current_span("intake accepts a report"):
                # An incident's events are in the incident's own trace, whatever span is current.
                publisher_trace = incident_trace_id("inc-traced")
                event = envelope_for(
                    IncidentReported(
                        incident_id="inc-traced",
                        number="INC-1001",
                        title="VPN down",
                        channel=Channel.API,
                        reported_at=datetime.now(UTC),
                    ),
                    source="test",
                    tenant_id="tenant-traced",
                    incident_id="inc-traced",
                )
                published = await producer.publish(event, topic=topic)
            await wait_until(lambda: seen, message="handler ran")
    finally:
        await producer.stop()

    assert published.traceparent is not None and publisher_trace in published.traceparent
    assert seen[0]["trace_id"] == publisher_trace
    assert seen[0]["log"]["tenant_id"] == "tenant-traced"
    assert seen[0]["log"]["incident_id"] == "inc-traced"
    assert seen[0]["log"]["event_id"] == published.id
    assert seen[0]["log"]["trace_id"] == publisher_trace
