"""Live updates for the dashboard: every instance tails the incident topics itself (no consumer
group, from the end), applies each event to the read model (idempotent: the consumer group may
have applied it already) and pushes the incident's new row to its own connected browsers. So a
browser on any instance sees every incident, whichever instance's group consumer owns it."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Sequence
from typing import Any

import structlog
from aiokafka import AIOKafkaConsumer

from aftercare.events.catalog import EventRejected, parse_envelope
from aftercare.notifier.adapters.read_model import IncidentReadModel

log = structlog.stdlib.get_logger("aftercare.notifier.live")


class LiveFeed:
    """Fan-out of changed incident rows to subscribers (one bounded queue per browser)."""

    def __init__(self, queue_size: int = 256) -> None:
        self._subscribers: set[asyncio.Queue[dict[str, Any]]] = set()
        self._queue_size = queue_size

    def subscribe(self) -> asyncio.Queue[dict[str, Any]]:
        queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue(self._queue_size)
        self._subscribers.add(queue)
        return queue

    def unsubscribe(self, queue: asyncio.Queue[dict[str, Any]]) -> None:
        self._subscribers.discard(queue)

    @property
    def subscribers(self) -> int:
        return len(self._subscribers)

    async def publish(self, view: dict[str, Any]) -> None:
        for queue in list(self._subscribers):
            if queue.full():
                with contextlib.suppress(asyncio.QueueEmpty):
                    queue.get_nowait()  # a slow browser loses old rows, never blocks the others
            queue.put_nowait(view)


async def tail(bootstrap_servers: str, topics: Sequence[str], read_model: IncidentReadModel) -> None:
    """Apply every new event on ``topics`` to the read model (whose listeners feed the browsers)."""
    consumer = AIOKafkaConsumer(
        *topics,
        bootstrap_servers=bootstrap_servers,
        group_id=None,
        enable_auto_commit=False,
        auto_offset_reset="latest",
        fetch_max_wait_ms=50,
    )
    await consumer.start()
    try:
        while True:
            batch = await consumer.getmany(timeout_ms=500, max_records=500)
            for records in batch.values():
                for record in records:
                    try:
                        envelope = parse_envelope(record.value or b"")
                    except EventRejected:
                        continue
                    try:
                        await read_model.apply(envelope)
                    except Exception as error:  # the group consumer applies it too; only liveness is lost
                        log.warning("live update failed", error=str(error), event_id=envelope.id)
    finally:
        with contextlib.suppress(Exception):
            await consumer.stop()
