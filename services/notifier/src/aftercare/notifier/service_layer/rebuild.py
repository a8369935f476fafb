"""Rebuild the dashboard's read model from Kafka: drop it, read every incident, triage,
remediation and notification event from the start of each topic, fold them again. The same
pure fold that builds it live builds it here (in memory, then one write per incident), so the
result is the same (tested by dropping and comparing). Delivery state is not part of it and is
left alone: nobody is notified again."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import structlog
from aiokafka import AIOKafkaConsumer, TopicPartition

from aftercare.events.catalog import EventRejected, parse_envelope
from aftercare.notifier.adapters.read_model import IncidentReadModel
from aftercare.notifier.domain.incident_view import add_entry, entry_of, fold

log = structlog.stdlib.get_logger("aftercare.notifier.rebuild")


async def rebuild_read_model(bootstrap_servers: str, topics: Sequence[str], read_model: IncidentReadModel) -> int:
    """Returns the number of events applied."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap_servers, enable_auto_commit=False, group_id=None)
    await consumer.start()
    applied = 0
    try:
        partitions = [
            TopicPartition(topic, partition)
            for topic in topics
            for partition in sorted(consumer.partitions_for_topic(topic) or await _partitions(consumer, topic))
        ]
        consumer.assign(partitions)
        await consumer.seek_to_beginning(*partitions)
        ends = await consumer.end_offsets(partitions)
        timelines: dict[str, tuple[str, list[dict[str, Any]]]] = {}
        remaining = {tp for tp, end in ends.items() if end > 0}
        while remaining:
            batch = await consumer.getmany(*remaining, timeout_ms=1000, max_records=1000)
            for tp, records in batch.items():
                for record in records:
                    try:
                        envelope = parse_envelope(record.value or b"")
                    except EventRejected:
                        continue
                    if envelope.incident_id is not None:
                        tenant_id, entries = timelines.setdefault(envelope.incident_id, (envelope.tenant_id, []))
                        merged = add_entry(entries, entry_of(envelope))
                        if merged is not None:
                            timelines[envelope.incident_id] = (tenant_id, merged)
                            applied += 1
                if records and records[-1].offset + 1 >= ends[tp]:
                    remaining.discard(tp)
    finally:
        await consumer.stop()
    # Folded in memory, written once per incident: one write each instead of two per event.
    await read_model.replace_all(
        [
            fold(incident_id, tenant_id, entries) | {"_id": incident_id, "entries": entries, "rev": 1}
            for incident_id, (tenant_id, entries) in timelines.items()
        ]
    )
    log.info("read model rebuilt", events=applied)
    return applied


async def _partitions(consumer: AIOKafkaConsumer, topic: str) -> set[int]:
    await consumer._client.force_metadata_update()  # the first lookup of a topic fills the cache
    return consumer.partitions_for_topic(topic) or set()
