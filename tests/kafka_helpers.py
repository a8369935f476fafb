"""Helpers for tests that talk to the real broker: unique topics, reading records back, waiting.

Importable from any test suite (``tests`` is on pytest's ``pythonpath``):

    from kafka_helpers import Infrastructure, create_topics, read_all, unique_name, wait_until
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeAlias

from aiokafka import AIOKafkaConsumer, ConsumerRecord, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient

from aftercare.events.consumer import ConsumerRunner
from aftercare.events.runtime import ensure_topics
from aftercare.events.topics import topic_specs

Record: TypeAlias = ConsumerRecord[bytes, bytes]


@dataclass
class Infrastructure:
    """Where the tests' Kafka broker and MongoDB-compatible store answer (fixture ``infrastructure``)."""

    bootstrap_servers: str
    mongo_url: str
    kind: str  # "env", "testcontainers" or "local"
    log_files: list[Path] = field(default_factory=list)


def unique_name(prefix: str = "test") -> str:
    """A name no other test (or earlier run against the same broker/store) has used."""
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


async def create_topics(bootstrap_servers: str, *names: str, partitions: int = 3) -> None:
    """Create ``names`` and their dead-letter twins (the broker does not auto-create topics)."""
    await ensure_topics(bootstrap_servers, topic_specs(list(names)), partitions=partitions)


async def partitions_of(bootstrap_servers: str, topic: str) -> list[int]:
    """The partition numbers of ``topic``; ``LookupError`` if the broker does not know it."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap_servers, request_timeout_ms=10000)
    await admin.start()
    try:
        (description,) = await admin.describe_topics([topic])
    finally:
        await admin.close()
    partitions = sorted(p.get("partition_index", p.get("partition")) for p in description["partitions"])
    if description["error_code"] != 0 or not partitions:
        raise LookupError(
            f"topic {topic!r} does not exist on {bootstrap_servers} (error code {description['error_code']})"
        )
    return partitions


async def read_all(
    bootstrap_servers: str,
    topic: str,
    timeout: float = 30.0,  # noqa: ASYNC109
    *,
    at_least: int = 0,
) -> list[Record]:
    """Every record on ``topic`` right now, all partitions, each partition's in offset order.

    Reads without a consumer group (commits nothing, disturbs no one). With ``at_least``, keeps
    reading until that many records are there; raises ``TimeoutError`` (saying how many it
    found) if they are not within ``timeout`` seconds.
    """
    deadline = time.monotonic() + timeout
    partitions = [TopicPartition(topic, p) for p in await partitions_of(bootstrap_servers, topic)]
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap_servers,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        request_timeout_ms=10000,
    )
    await consumer.start()
    try:
        consumer.assign(partitions)
        await consumer.seek_to_beginning(*partitions)
        records: dict[TopicPartition, list[Record]] = {tp: [] for tp in partitions}
        while True:
            end = await consumer.end_offsets(partitions)
            while not await _reached(consumer, end):
                remaining_ms = int((deadline - time.monotonic()) * 1000)
                if remaining_ms <= 0:
                    break
                batch = await consumer.getmany(timeout_ms=min(remaining_ms, 500))
                for tp, items in batch.items():
                    records[tp].extend(items)
            found = [record for tp in partitions for record in records[tp]]
            if len(found) >= at_least:
                return found
            if time.monotonic() >= deadline:
                raise TimeoutError(
                    f"expected at least {at_least} records on {topic!r} within {timeout}s, found {len(found)}"
                )
            await asyncio.sleep(0.1)
    finally:
        await consumer.stop()


async def _reached(consumer: AIOKafkaConsumer, end: dict[TopicPartition, int]) -> bool:
    for tp, offset in end.items():
        if await consumer.position(tp) < offset:
            return False
    return True


async def committed_offsets(bootstrap_servers: str, group_id: str, topic: str) -> dict[int, int]:
    """The offsets ``group_id`` has committed on ``topic``: partition -> next offset to read.

    Partitions the group never committed on are left out.
    """
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap_servers, request_timeout_ms=10000)
    await admin.start()
    try:
        offsets = await admin.list_consumer_group_offsets(group_id)
    finally:
        await admin.close()
    return {tp.partition: meta.offset for tp, meta in offsets.items() if tp.topic == topic and meta.offset >= 0}


async def commit_end_offsets(bootstrap_servers: str, group: str, names: list[str]) -> None:
    """Start ``group`` at the end of ``names``: a service started late in the test session (a new
    deployment) then skips the hundreds of incidents earlier tests left on the shared topics,
    which are not its test's business. Topics not named (tenants) are still read from the start."""
    await ensure_topics(bootstrap_servers, topic_specs(), partitions=3)
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap_servers, group_id=group, enable_auto_commit=False)
    await consumer.start()
    try:
        partitions = [TopicPartition(name, p) for name in names for p in await partitions_of(bootstrap_servers, name)]
        consumer.assign(partitions)
        ends = await consumer.end_offsets(partitions)
        await consumer.commit({tp: offset for tp, offset in ends.items()})
    finally:
        await consumer.stop()


def headers_of(record: Record) -> dict[str, bytes]:
    """A record's headers as a dict (the last value wins if a name repeats)."""
    return dict(record.headers or ())


_CHECK_FLOOR_S = 30.0


async def wait_until(
    check: Callable[[], Any],
    timeout: float = 30.0,  # noqa: ASYNC109
    interval: float = 0.1,
    message: str = "condition",
) -> Any:
    """Call ``check`` until it returns something truthy and return that; fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while True:
        last = check()
        if inspect.isawaitable(last):
            # Bounded too: a check stuck on a hung store would otherwise outlive ``timeout`` silently.
            # At least 30 s: one slow answer near the deadline on a loaded machine is not a hang.
            allowed = max(deadline - time.monotonic(), _CHECK_FLOOR_S)
            try:
                last = await asyncio.wait_for(last, timeout=allowed)
            except TimeoutError:
                raise AssertionError(f"{message}: the check did not answer within {allowed:.0f}s") from None
        if last:
            return last
        if time.monotonic() >= deadline:
            raise AssertionError(f"{message} not met within {timeout}s (last value: {last!r})")
        await asyncio.sleep(interval)


@contextlib.asynccontextmanager
async def running(runner: ConsumerRunner, assigned_timeout: float = 60.0) -> AsyncIterator[asyncio.Task[None]]:
    """Run a ``ConsumerRunner`` in the background until the block ends, then stop it cleanly.

    Waits until the group gave it its partitions before entering the block, and re-raises
    whatever the loop itself raised.
    """
    task = asyncio.create_task(runner.run(), name=f"runner-{runner.group_id}")
    try:
        waiter = asyncio.ensure_future(runner.wait_assigned(assigned_timeout))
        await asyncio.wait({task, waiter}, return_when=asyncio.FIRST_COMPLETED)
        if task.done():
            waiter.cancel()
            task.result()
            raise AssertionError("the consumer loop ended before it was assigned partitions")
        await waiter
        yield task
    finally:
        runner.stop()
        await asyncio.wait_for(task, timeout=60)
