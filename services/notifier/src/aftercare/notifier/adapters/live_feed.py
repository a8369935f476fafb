"""Live updates for the dashboard: every instance tails the incident topics itself (no consumer
group, from the end) and pushes the incident's new row to its own connected browsers, before any
store write (``LiveRows``); the group consumer writes the read model. So a browser on any
instance sees every incident, whichever instance's group consumer owns it."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import structlog
from aiokafka import AIOKafkaConsumer

from aftercare.events.catalog import EventRejected, parse_envelope
from aftercare.events.envelope import Envelope
from aftercare.notifier.adapters.read_model import IncidentReadModel
from aftercare.notifier.domain.incident_view import add_entry, entry_of, fold, row_json

log = structlog.stdlib.get_logger("aftercare.notifier.live")


@dataclass(frozen=True)
class LiveRow:
    """A changed incident as every browser gets it: the server-sent event is rendered once."""

    tenant_id: str
    frame: bytes


def render_row(view: dict[str, Any], now: datetime) -> LiveRow:
    data = json.dumps(row_json(view, now), default=str, separators=(",", ":"))
    return LiveRow(str(view.get("tenant_id")), f"event: incident\ndata: {data}\n\n".encode())


class LiveFeed:
    """Fan-out of changed incident rows to subscribers (one bounded queue per browser).

    Each event is pushed once per instance: the live tail pushes it before the store has it,
    and the group consumer's write pushes only an event the tail has not (the tail starts at the
    end of the topics, so events from before it was positioned reach browsers that way)."""

    def __init__(self, queue_size: int = 256, remembered_events: int = 4096) -> None:
        self._subscribers: set[asyncio.Queue[LiveRow]] = set()
        self._queue_size = queue_size
        self._pushed: OrderedDict[str, None] = OrderedDict()
        self._remembered = remembered_events
        self.clock: Callable[[], datetime] = lambda: datetime.now(UTC)

    def subscribe(self) -> asyncio.Queue[LiveRow]:
        queue: asyncio.Queue[LiveRow] = asyncio.Queue(self._queue_size)
        self._subscribers.add(queue)
        return queue

    def unsubscribe(self, queue: asyncio.Queue[LiveRow]) -> None:
        self._subscribers.discard(queue)

    @property
    def subscribers(self) -> int:
        return len(self._subscribers)

    def publish(self, view: dict[str, Any], event_id: str) -> bool:
        """Push ``view`` (changed by event ``event_id``) to every browser, unless that event was
        pushed already; returns whether it was pushed now."""
        if event_id in self._pushed:
            return False
        self._pushed[event_id] = None
        if len(self._pushed) > self._remembered:
            self._pushed.popitem(last=False)
        if not self._subscribers:
            return True
        row = render_row(view, self.clock())
        for queue in list(self._subscribers):
            if queue.full():
                with contextlib.suppress(asyncio.QueueEmpty):
                    queue.get_nowait()  # a slow browser loses old rows, never blocks the others
            queue.put_nowait(row)
        return True


class LiveRows:
    """What the tail pushes, without writing: the incident's stored timeline, read the first time
    the tail meets the incident, plus every event the tail has seen of it since (kept for the
    ``remembered`` most recent incidents). The group consumer writes the read model; the tail
    only needs the row, so a browser waits neither for the store's write nor, after the first
    event of an incident, for its read. Rows never go backwards: the tail's own events are kept."""

    def __init__(self, read_model: IncidentReadModel, feed: LiveFeed, remembered: int = 1000) -> None:
        self._read_model = read_model
        self._feed = feed
        self._remembered = remembered
        self._timelines: OrderedDict[str, list[dict[str, Any]]] = OrderedDict()

    async def push(self, envelope: Envelope[Any]) -> None:
        incident_id = envelope.incident_id
        if incident_id is None:
            return
        entries = self._timelines.get(incident_id)
        if entries is None:
            entries = await self._read_model.timeline(incident_id)
        merged = add_entry(entries, entry_of(envelope))
        if merged is None:
            merged = entries  # stored already (the group consumer was first): browsers still need it
        self._timelines[incident_id] = merged
        self._timelines.move_to_end(incident_id)
        if len(self._timelines) > self._remembered:
            self._timelines.popitem(last=False)
        self._feed.publish(fold(incident_id, envelope.tenant_id, merged), envelope.id)


async def tail(bootstrap_servers: str, topics: Sequence[str], rows: LiveRows) -> None:
    """Push every new event on ``topics`` to this instance's browsers (one after the other, so
    an incident's rows follow its events)."""
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
                        await rows.push(envelope)
                    except Exception as error:  # the group consumer's write pushes it then; only speed is lost
                        log.warning("live update failed", error=str(error), event_id=envelope.id)
    finally:
        with contextlib.suppress(Exception):
            await consumer.stop()
