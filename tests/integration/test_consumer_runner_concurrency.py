"""The consumer runner handles different incidents at once and never stalls on a failing one.

Against the real broker and store: events of many keys (incident ids) spread over 3
partitions. The effect of a handler is the document per incident of ``test_consumer_runner``
(``count`` and the ``applied`` event ids in the order they were applied), so a lost event, a
doubled one or one out of order shows in ``applied``.
"""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

import pytest
from test_consumer_runner import (  # the shared fixtures and helpers of the runner's tests
    ConsumerProcess,
    Database,
    applied,
    apply_to,
    consumer_processes,
    field_of,
    other_db,
    producer,
    reported,
    updated,
)

from aftercare.events.consumer import ConsumerRunner, RetryPolicy
from aftercare.events.envelope import Envelope
from aftercare.events.incidents import IncidentReported, IncidentUpdated
from aftercare.events.processed import ProcessedEventLog
from aftercare.events.producer import EventProducer
from aftercare.events.retry_stage import RetryStage
from aftercare.events.topics import dead_letter_topic

from kafka_helpers import Infrastructure, committed_offsets, read_all, running, unique_name, wait_until

pytestmark = pytest.mark.integration

__all__ = ["consumer_processes", "other_db", "producer"]  # fixtures, imported to be found


def events_of(incident_id: str, count: int) -> list[Envelope[Any]]:
    return [reported(incident_id, f"{incident_id} down")] + [
        updated(incident_id, f"{incident_id} update {n}") for n in range(1, count)
    ]


def interleave(per_key: dict[str, list[Envelope[Any]]]) -> list[Envelope[Any]]:
    """Round-robin over the keys, each key's events in their order."""
    queues = [list(events) for events in per_key.values()]
    mixed: list[Envelope[Any]] = []
    while any(queues):
        for queue in queues:
            if queue:
                mixed.append(queue.pop(0))
    return mixed


async def all_applied(db: Database, per_key: dict[str, list[Envelope[Any]]]) -> bool:
    expected = sum(len(events) for events in per_key.values())
    done = 0
    async for document in db["effects"].find({"_id": {"$in": list(per_key)}}, {"count": 1}):
        done += document["count"]
    return done >= expected


async def end_offsets(infrastructure: Infrastructure, topic: str) -> dict[int, int]:
    records = await read_all(infrastructure.bootstrap_servers, topic)
    ends: dict[int, int] = {}
    for record in records:
        ends[record.partition] = max(ends.get(record.partition, 0), record.offset + 1)
    return ends


def runner(
    infrastructure: Infrastructure,
    producer: EventProducer,
    topic: str,
    group: str,
    handler: Callable[[Envelope[Any]], Awaitable[None]],
    db: Database,
    **options: Any,
) -> ConsumerRunner:
    return ConsumerRunner(
        bootstrap_servers=infrastructure.bootstrap_servers,
        group_id=group,
        topics=[topic],
        handlers={IncidentReported: [handler], IncidentUpdated: [handler]},
        processed=ProcessedEventLog(db),
        producer=producer,
        **options,
    )


# --- one failing incident, a thousand others ----------------------------------------------------


async def test_one_incident_failing_for_30_s_holds_up_only_its_own_later_events(
    infrastructure: Infrastructure,
    producer: EventProducer,
    mongo_db: Database,
    new_topic: Callable[..., Awaitable[str]],
) -> None:
    topic, group = await new_topic("one-failing"), unique_name("group")
    broken = "inc-webhook-down"
    broken_events = events_of(broken, 3)
    others = {f"inc-{n:03d}": events_of(f"inc-{n:03d}", 10) for n in range(100)}  # 1,000 events
    mixed = interleave(others)
    # The broken incident's first event comes first; its later ones among the others.
    published = [broken_events[0], *mixed[:300], broken_events[1], *mixed[300:600], broken_events[2], *mixed[600:]]

    failure_started: float | None = None
    fixed = asyncio.Event()
    tried: list[str] = []

    async def notify_customer(envelope: Envelope[Any]) -> None:
        nonlocal failure_started
        if envelope.incident_id == broken:
            tried.append(envelope.id)
            failure_started = failure_started or time.monotonic()
            # The customer's webhook is down for at least 30 s, and until the test says it is back.
            if not fixed.is_set() or time.monotonic() - failure_started < 30:
                raise RuntimeError("the customer's webhook answers 503")
        await apply_to(mongo_db, envelope)

    patient = RetryPolicy(max_attempts=200, initial_backoff_s=0.2, max_backoff_s=1.0)
    consumer = runner(infrastructure, producer, topic, group, notify_customer, mongo_db, retry=patient)
    async with running(consumer):
        await producer.publish_many(published, topic)
        await wait_until(lambda: all_applied(mongo_db, others), timeout=120, message="the 1,000 other events handled")

        # Every other incident got through while the broken one kept failing.
        assert fixed.is_set() is False and tried, "the broken incident's handler has been failing meanwhile"
        assert await applied(mongo_db, broken) == []
        assert set(tried) == {broken_events[0].id}, "its later events waited, untried"
        (waiting,) = await RetryStage(mongo_db).waiting(group)
        assert waiting["key"] == broken.encode()
        assert len(waiting["offsets"]) == 3, "the failing event and the two behind it, in the retry stage"
        assert waiting["last_error"] == "RuntimeError: the customer's webhook answers 503"

        fixed.set()
        await wait_until(
            lambda: _applied_equals(mongo_db, broken, [e.id for e in broken_events]),
            timeout=90,
            message="the broken incident's events applied once it works again",
        )

    assert failure_started is not None
    assert await applied(mongo_db, broken) == [e.id for e in broken_events], "in order, once each"
    for incident_id, events in others.items():
        assert await applied(mongo_db, incident_id) == [e.id for e in events], f"{incident_id}: in order, once each"
    assert await RetryStage(mongo_db).waiting(group) == [], "nothing left in the retry stage"
    assert await read_all(infrastructure.bootstrap_servers, dead_letter_topic(topic)) == []
    assert await committed_offsets(infrastructure.bootstrap_servers, group, topic) == await end_offsets(
        infrastructure, topic
    )


async def _applied_equals(db: Database, incident_id: str, expected: list[str]) -> bool:
    return await applied(db, incident_id) == expected


# --- concurrency is bounded, order within a key is kept --------------------------------------


@pytest.mark.parametrize("concurrency", [1, 8])
async def test_keys_are_handled_concurrently_up_to_the_limit_each_in_its_order(
    infrastructure: Infrastructure,
    producer: EventProducer,
    mongo_db: Database,
    new_topic: Callable[..., Awaitable[str]],
    concurrency: int,
) -> None:
    topic, group = await new_topic("concurrent"), unique_name("group")
    per_key = {f"inc-{n:02d}": events_of(f"inc-{n:02d}", 8) for n in range(24)}
    in_flight: set[str] = set()
    keys_in_flight: list[str] = []
    most_at_once = 0

    async def slow_probe(envelope: Envelope[Any]) -> None:
        nonlocal most_at_once
        assert envelope.incident_id is not None
        assert envelope.incident_id not in keys_in_flight, "two events of one incident at once"
        keys_in_flight.append(envelope.incident_id)
        in_flight.add(envelope.id)
        most_at_once = max(most_at_once, len(in_flight))
        try:
            await asyncio.sleep(0.01)  # the I/O of a real handler
            await apply_to(mongo_db, envelope)
        finally:
            in_flight.discard(envelope.id)
            keys_in_flight.remove(envelope.incident_id)

    consumer = runner(infrastructure, producer, topic, group, slow_probe, mongo_db, concurrency=concurrency)
    async with running(consumer):
        await producer.publish_many(interleave(per_key), topic)
        await wait_until(lambda: all_applied(mongo_db, per_key), timeout=120, message="every event handled")

    if concurrency == 1:
        assert most_at_once == 1
    else:
        assert 1 < most_at_once <= concurrency
    for incident_id, events in per_key.items():
        assert await applied(mongo_db, incident_id) == [e.id for e in events]


# --- kill -9 while many handlers are half-way ------------------------------------------------


async def test_killed_during_concurrent_handling_every_effect_stays_single(
    infrastructure: Infrastructure,
    producer: EventProducer,
    mongo_db: Database,
    new_topic: Callable[..., Awaitable[str]],
    consumer_processes: Callable[..., Awaitable[ConsumerProcess]],
) -> None:
    topic, group = await new_topic("kill-concurrent"), unique_name("group")
    per_key = {f"inc-{n:02d}": events_of(f"inc-{n:02d}", 10) for n in range(30)}
    await producer.publish_many(interleave(per_key), topic)

    doomed = await consumer_processes(
        topic,
        group,
        "--effect",
        "guarded",
        "--concurrency",
        "16",
        "--handler-delay-ms",
        "20",
        "--park-after-runs",
        "120",
    )
    await doomed.expect("PARKED")
    doomed.signal(signal.SIGKILL)
    assert await doomed.wait() == -signal.SIGKILL
    partly = sum([await field_of(mongo_db, "effects", key, "count") for key in per_key])
    assert 0 < partly < 300, "killed half-way"

    successor = await consumer_processes(topic, group, "--effect", "guarded", "--concurrency", "16")
    await wait_until(lambda: all_applied(mongo_db, per_key), timeout=120, message="the successor handled the rest")
    successor.signal(signal.SIGTERM)
    await successor.expect("STOPPED")
    assert await successor.wait() == 0

    for incident_id, events in per_key.items():
        assert await applied(mongo_db, incident_id) == [e.id for e in events], f"{incident_id}: once each, in order"
        assert await field_of(mongo_db, "effects", incident_id, "count") == len(events)
    runs = [document["runs"] async for document in mongo_db["handler_runs"].find({})]
    assert len(runs) == 300
    assert sum(runs) > 300, "some handlers ran again after the kill (their effect stayed single)"
    assert await committed_offsets(infrastructure.bootstrap_servers, group, topic) == await end_offsets(
        infrastructure, topic
    )


# --- the retry stage outlives the runner ----------------------------------------------------


async def test_a_failing_incident_in_the_retry_stage_is_taken_up_by_the_next_instance_in_order(
    infrastructure: Infrastructure,
    producer: EventProducer,
    mongo_db: Database,
    new_topic: Callable[..., Awaitable[str]],
) -> None:
    topic, group = await new_topic("stage-restart"), unique_name("group")
    failing = events_of("inc-probe", 3)
    healthy = events_of("inc-ok", 2)
    runs: list[str] = []

    async def broken_probe(envelope: Envelope[Any]) -> None:
        runs.append(envelope.id)
        if envelope.incident_id == "inc-probe":
            raise TimeoutError("probe of billing-db timed out")
        await apply_to(mongo_db, envelope)

    # Retries far apart: the first instance stops before it retries.
    slow_retries = RetryPolicy(max_attempts=5, initial_backoff_s=60, max_backoff_s=60)
    first = runner(infrastructure, producer, topic, group, broken_probe, mongo_db, retry=slow_retries)
    async with running(first):
        await producer.publish_many(interleave({"inc-probe": failing, "inc-ok": healthy}), topic)
        await wait_until(lambda: _applied_equals(mongo_db, "inc-ok", [e.id for e in healthy]), message="others flow")
        await wait_until(lambda: _waiting_offsets(mongo_db, group, 3), message="all three in the retry stage")
    assert runs.count(failing[0].id) == 1 and failing[1].id not in runs

    async def fixed_probe(envelope: Envelope[Any]) -> None:
        runs.append(envelope.id)
        await apply_to(mongo_db, envelope)

    # The next instance (a restart, or whoever gets the partition) finds the due time in the
    # store; the first retry is due in 60 s, so make it due now as time passing would.
    await mongo_db["consumer_retries"].update_many({}, {"$set": {"due_at": datetime.now(UTC)}})
    second = runner(infrastructure, producer, topic, group, fixed_probe, mongo_db, retry=slow_retries)
    async with running(second):
        await wait_until(
            lambda: _applied_equals(mongo_db, "inc-probe", [e.id for e in failing]),
            timeout=60,
            message="the next instance retried the failing incident and its waiting events",
        )
    assert await RetryStage(mongo_db).waiting(group) == []
    assert [runs.count(e.id) for e in failing] == [2, 1, 1], "each later event tried once, after the first"
    assert await applied(mongo_db, "inc-ok") == [e.id for e in healthy], "not handled again"


async def _waiting_offsets(db: Database, group: str, count: int) -> bool:
    waiting = await RetryStage(db).waiting(group)
    return len(waiting) == 1 and len(waiting[0]["offsets"]) == count
