"""The largest event Kafka takes is a deliberate limit, checked before anything is stored or sent."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from aftercare.events import outbox
from aftercare.events.envelope import Envelope, envelope_for
from aftercare.events.incidents import Channel, IncidentReported
from aftercare.events.producer import MAX_MESSAGE_BYTES, EventProducer, EventTooLarge


def reported(description: str) -> Envelope[IncidentReported]:
    return envelope_for(
        IncidentReported(
            incident_id="inc-1",
            number="INC-1001",
            title="Mailbox full",
            description=description,
            channel=Channel.EMAIL,
            reported_at=datetime(2025, 3, 4, tzinfo=UTC),
        ),
        source="intake",
        tenant_id="tenant-a",
        incident_id="inc-1",
    )


def test_an_outbox_entry_over_the_limit_is_refused_before_the_write_naming_the_largest_field() -> None:
    event = reported("x" * MAX_MESSAGE_BYTES)

    with pytest.raises(EventTooLarge) as refused:
        outbox.stored(event)

    assert refused.value.largest_field == "description"
    assert refused.value.size > refused.value.limit == MAX_MESSAGE_BYTES
    assert "description" in str(refused.value)


def test_an_outbox_entry_under_the_limit_is_the_json_that_goes_on_kafka() -> None:
    event = reported("y" * (MAX_MESSAGE_BYTES // 2))

    entry = outbox.stored(event)

    assert entry["id"] == event.id
    assert entry["json"] == event.model_dump_json()


async def test_the_producer_refuses_an_oversized_event_before_sending_anything() -> None:
    # Never started: the size check comes before any contact with Kafka.
    producer = EventProducer("127.0.0.1:1", client_id="size-test", max_message_bytes=10_000)
    small, large = reported("fine"), reported("z" * 20_000)

    try:
        with pytest.raises(EventTooLarge) as refused:
            await producer.publish_many([small, large])
    finally:
        await producer.stop()

    assert refused.value.largest_field == "description" and refused.value.limit == 10_000
