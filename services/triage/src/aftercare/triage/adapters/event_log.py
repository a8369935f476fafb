"""Reading a whole topic from Kafka, for rebuilding state that is derived from events."""

from __future__ import annotations

from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient

from aftercare.events.catalog import EventRejected, parse_envelope
from aftercare.events.envelope import Envelope


async def read_topic(bootstrap_servers: str, topic: str) -> list[Envelope[Any]]:
    """Every event on ``topic`` now, from the beginning of what the broker keeps, without a
    consumer group (nothing is committed, no running consumer is disturbed). Records that are
    not events (rejected by the catalog) are skipped: the live consumer dead-lettered them too."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap_servers, enable_auto_commit=False, request_timeout_ms=10000)
    await consumer.start()
    try:
        partitions = [TopicPartition(topic, p) for p in await _partitions(bootstrap_servers, topic)]
        if not partitions:
            return []
        consumer.assign(partitions)
        await consumer.seek_to_beginning(*partitions)
        ends = await consumer.end_offsets(partitions)
        remaining = {tp for tp in partitions if ends[tp] > 0}
        envelopes: list[Envelope[Any]] = []
        while remaining:
            batch = await consumer.getmany(*remaining, timeout_ms=1000)
            for records in batch.values():
                for record in records:
                    if record.value is None:
                        continue
                    try:
                        envelopes.append(parse_envelope(record.value))
                    except EventRejected:
                        continue
            for tp in list(remaining):
                if await consumer.position(tp) >= ends[tp]:
                    remaining.discard(tp)
        return envelopes
    finally:
        await consumer.stop()


async def _partitions(bootstrap_servers: str, topic: str) -> list[int]:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap_servers, request_timeout_ms=10000)
    await admin.start()
    try:
        descriptions = await admin.describe_topics([topic])
    finally:
        await admin.close()
    return sorted(
        int(partition["partition"])
        for description in descriptions
        if description["topic"] == topic and not description.get("error_code")
        for partition in description["partitions"]
    )
