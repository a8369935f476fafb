"""The consumer runner against the real broker and store: what it promises every service.

Each test gets its own topics (3 partitions and a dead-letter twin), consumer group and
database. The events of one test share an incident id, hence a Kafka key and a partition, so
their order is the order they were published in.

The effect a handler has is a document per incident in ``effects``: ``count`` incremented with
``$inc`` and the event id pushed onto ``applied``, so a doubled effect shows as a repeated id.
"""

from __future__ import annotations

import asyncio
import json
import signal
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from prometheus_client import REGISTRY
from pymongo import AsyncMongoClient
from pymongo.asynchronous.database import AsyncDatabase

from aftercare.events.catalog import serialize
from aftercare.events.consumer import (
    DLQ_ATTEMPTS,
    DLQ_ERROR,
    DLQ_ERROR_TYPE,
    DLQ_GROUP,
    DLQ_ORIGIN,
    ConsumerRunner,
    RetryPolicy,
)
from aftercare.events.envelope import Envelope, envelope_for
from aftercare.events.incidents import Channel, IncidentReported, IncidentUpdated
from aftercare.events.processed import COLLECTION as PROCESSED_COLLECTION
from aftercare.events.processed import STARTED_COLLECTION, ProcessedEventLog, record_id
from aftercare.events.producer import EventProducer
from aftercare.events.topics import dead_letter_topic

from kafka_helpers import Infrastructure, committed_offsets, headers_of, read_all, running, unique_name, wait_until
from service_process import ScriptProcess

pytestmark = pytest.mark.integration

Database = AsyncDatabase[dict[str, Any]]
CONSUMER_PROCESS = Path(__file__).with_name("consumer_process.py")
FAST_RETRY = RetryPolicy(max_attempts=3, initial_backoff_s=0.01, max_backoff_s=0.05)


def reported(incident_id: str, title: str) -> Envelope[IncidentReported]:
    return envelope_for(
        IncidentReported(
            incident_id=incident_id, number="INC-1", title=title, channel=Channel.API, reported_at=datetime.now(UTC)
        ),
        source="test",
        tenant_id="acme",
        incident_id=incident_id,
    )


def updated(incident_id: str, message: str) -> Envelope[IncidentUpdated]:
    return envelope_for(
        IncidentUpdated(
            incident_id=incident_id,
            number="INC-1",
            channel=Channel.EMAIL,
            kind="comment",
            message=message,
            last_seen_at=datetime.now(UTC),
        ),
        source="test",
        tenant_id="acme",
        incident_id=incident_id,
    )


async def applied(db: Database, incident_id: str) -> list[str]:
    """Event ids applied to the incident's effect document, in the order they were applied."""
    document = await db["effects"].find_one({"_id": incident_id})
    return list(document["applied"]) if document else []


async def apply_to(db: Database, envelope: Envelope[Any]) -> None:
    """The plain, unguarded effect: run it twice and it counts twice."""
    await db["effects"].update_one(
        {"_id": envelope.incident_id}, {"$inc": {"count": 1}, "$push": {"applied": envelope.id}}, upsert=True
    )


def consumed(group: str, topic: str, outcome: str) -> float:
    return (
        REGISTRY.get_sample_value(
            "aftercare_events_consumed_total", {"group": group, "topic": topic, "outcome": outcome}
        )
        or 0.0
    )


@pytest_asyncio.fixture(loop_scope="session")
async def producer(infrastructure: Infrastructure) -> AsyncIterator[EventProducer]:
    events = EventProducer(infrastructure.bootstrap_servers, client_id="consumer-runner-tests")
    await events.start()
    try:
        yield events
    finally:
        await events.stop()


@pytest_asyncio.fixture(loop_scope="session")
async def other_db(mongo_client: AsyncMongoClient[dict[str, Any]]) -> AsyncIterator[Database]:
    """A second fresh database, for a runner that must not share the first one's processed log."""
    database = mongo_client[unique_name("test_other").replace("-", "_")]
    try:
        yield database
    finally:
        await mongo_client.drop_database(database.name)


def runner_for(
    infrastructure: Infrastructure,
    producer: EventProducer,
    topic: str,
    group: str,
    handler: Callable[[Envelope[Any]], Awaitable[None]],
    processed_db: Database,
    **options: Any,
) -> ConsumerRunner:
    return ConsumerRunner(
        bootstrap_servers=infrastructure.bootstrap_servers,
        group_id=group,
        topics=[topic],
        handlers={IncidentReported: [handler], IncidentUpdated: [handler]},
        processed=ProcessedEventLog(processed_db),
        producer=producer,
        **options,
    )


def record_with_event_id(records: list[Any], event_id: str) -> Any:
    (record,) = [r for r in records if headers_of(r).get("event_id") == event_id.encode()]
    return record


# --- a. the same event delivered twice has its effect once ----------------------------------


@pytest.mark.parametrize("max_batch", [1, 200], ids=["duplicate-in-a-later-batch", "duplicate-in-the-same-batch"])
async def test_an_event_delivered_twice_has_its_effect_once(
    infrastructure: Infrastructure,
    producer: EventProducer,
    mongo_db: Database,
    new_topic: Callable[..., Awaitable[str]],
    max_batch: int,
) -> None:
    topic, group = await new_topic("twice"), unique_name("group")
    event, after = reported("inc-a", "Disk full on db-01"), updated("inc-a", "still full")
    await producer.publish(event, topic)
    await producer.publish(event, topic)  # e.g. a publisher retried after a lost acknowledgement
    await producer.publish(after, topic)

    async def handle(envelope: Envelope[Any]) -> None:
        await apply_to(mongo_db, envelope)

    runner = runner_for(infrastructure, producer, topic, group, handle, mongo_db, max_batch=max_batch)
    async with running(runner):
        await wait_until(lambda: _contains(mongo_db, "inc-a", after.id), message="the later event applied")

    on_kafka = await read_all(infrastructure.bootstrap_servers, topic)
    assert [headers_of(r)["event_id"] for r in on_kafka] == [event.id.encode()] * 2 + [after.id.encode()]
    assert await applied(mongo_db, "inc-a") == [event.id, after.id]
    assert await field_of(mongo_db, "effects", "inc-a", "count") == 2
    assert consumed(group, topic, "duplicate") == 1


async def _contains(db: Database, incident_id: str, event_id: str) -> bool:
    return event_id in await applied(db, incident_id)


# --- b. a handler that keeps failing: dead letter, then the next message --------------------


async def test_a_handler_that_keeps_failing_dead_letters_the_message_and_goes_on(
    infrastructure: Infrastructure,
    producer: EventProducer,
    mongo_db: Database,
    new_topic: Callable[..., Awaitable[str]],
) -> None:
    topic, group = await new_topic("failing"), unique_name("group")
    poison, good = reported("inc-b", "poison"), updated("inc-b", "a normal comment")
    await producer.publish_many([poison, good], topic)
    attempts: list[str] = []

    async def handle(envelope: Envelope[Any]) -> None:
        if envelope.id == poison.id:
            attempts.append(envelope.id)
            raise RuntimeError(f"the CMDB does not answer for {envelope.incident_id}")
        await apply_to(mongo_db, envelope)

    runner = runner_for(infrastructure, producer, topic, group, handle, mongo_db, retry=FAST_RETRY)
    async with running(runner):
        await wait_until(lambda: _contains(mongo_db, "inc-b", good.id), message="the next message handled")

    assert attempts == [poison.id] * FAST_RETRY.max_attempts
    assert await applied(mongo_db, "inc-b") == [good.id]
    original = record_with_event_id(await read_all(infrastructure.bootstrap_servers, topic), poison.id)
    (dead,) = await read_all(infrastructure.bootstrap_servers, dead_letter_topic(topic), at_least=1)
    assert (dead.key, dead.value) == (original.key, original.value)
    assert dead.headers[: len(original.headers)] == original.headers, "original headers kept, first"
    headers = headers_of(dead)
    assert headers[DLQ_ERROR].decode() == "RuntimeError: the CMDB does not answer for inc-b"
    assert headers[DLQ_ERROR_TYPE] == b"RuntimeError"
    assert headers[DLQ_ATTEMPTS] == str(FAST_RETRY.max_attempts).encode()
    assert headers[DLQ_GROUP] == group.encode()
    assert headers[DLQ_ORIGIN] == f"{topic}/{original.partition}/{original.offset}".encode()
    assert headers["dead_letter.handler"].decode().endswith("handle")
    # Dead-lettered counts as done: the group moved past both messages.
    assert await committed_offsets(infrastructure.bootstrap_servers, group, topic) == {
        original.partition: original.offset + 2
    }


# --- d. a malformed message goes to the dead-letter topic, the next good one is handled -----


async def test_malformed_messages_are_dead_lettered_and_the_next_good_one_is_handled(
    infrastructure: Infrastructure,
    producer: EventProducer,
    mongo_db: Database,
    new_topic: Callable[..., Awaitable[str]],
) -> None:
    topic, group = await new_topic("malformed"), unique_name("group")
    key = b"inc-d"
    unknown = json.loads(serialize(reported("inc-d", "from the future")))
    unknown["type"] = "incident.exploded"
    invalid = json.loads(serialize(reported("inc-d", "no title")))
    del invalid["data"]["title"]
    good = reported("inc-d", "a real incident")
    await producer.send_raw(topic, b"<fax>not json</fax>", key, [("origin", b"fax-gateway")])
    await producer.send_raw(topic, json.dumps(unknown).encode(), key, [("origin", b"partner-api")])
    await producer.send_raw(topic, json.dumps(invalid).encode(), key, [])
    await producer.publish(good, topic)
    handled: list[str] = []

    async def handle(envelope: Envelope[Any]) -> None:
        handled.append(envelope.id)
        await apply_to(mongo_db, envelope)

    runner = runner_for(infrastructure, producer, topic, group, handle, mongo_db, retry=FAST_RETRY)
    async with running(runner):
        await wait_until(lambda: _contains(mongo_db, "inc-d", good.id), message="the good message handled")

    assert handled == [good.id]
    dead = await read_all(infrastructure.bootstrap_servers, dead_letter_topic(topic), at_least=3)
    assert len(dead) == 3
    not_json, unknown_type, invalid_data = (headers_of(record) for record in dead)
    assert dead[0].value == b"<fax>not json</fax>"
    assert not_json["origin"] == b"fax-gateway"
    assert not_json[DLQ_ERROR_TYPE] == b"InvalidEvent"
    assert b"message value is not JSON" in not_json[DLQ_ERROR]
    assert unknown_type["origin"] == b"partner-api"
    assert unknown_type[DLQ_ERROR_TYPE] == b"UnknownEventType"
    assert b"unknown event type 'incident.exploded'" in unknown_type[DLQ_ERROR]
    assert invalid_data[DLQ_ERROR_TYPE] == b"InvalidEvent"
    assert b"incident.reported v1 failed validation" in invalid_data[DLQ_ERROR]
    assert b"title" in invalid_data[DLQ_ERROR]
    assert {h[DLQ_ATTEMPTS] for h in (not_json, unknown_type, invalid_data)} == {b"0"}, "never retried"


# --- e. stop(): finish the message in hand, commit, close -------------------------------------


async def test_stop_finishes_the_message_in_hand_commits_and_the_group_does_not_get_it_again(
    infrastructure: Infrastructure,
    producer: EventProducer,
    mongo_db: Database,
    other_db: Database,
    new_topic: Callable[..., Awaitable[str]],
) -> None:
    topic, group = await new_topic("stop"), unique_name("group")
    in_hand, second, third = reported("inc-e", "slow"), updated("inc-e", "two"), updated("inc-e", "three")
    await producer.publish_many([in_hand, second, third], topic)
    picked_up, release = asyncio.Event(), asyncio.Event()

    async def slow_handle(envelope: Envelope[Any]) -> None:
        if envelope.id == in_hand.id:
            picked_up.set()
            await release.wait()
        await apply_to(mongo_db, envelope)

    first_runner = runner_for(infrastructure, producer, topic, group, slow_handle, mongo_db)
    task = asyncio.create_task(first_runner.run())
    await asyncio.wait_for(picked_up.wait(), timeout=60)
    first_runner.stop()
    release.set()
    await asyncio.wait_for(task, timeout=60)

    assert await applied(mongo_db, "inc-e") == [in_hand.id], "only the message in hand was finished"
    on_kafka = await read_all(infrastructure.bootstrap_servers, topic)
    first = record_with_event_id(on_kafka, in_hand.id)
    assert await committed_offsets(infrastructure.bootstrap_servers, group, topic) == {
        first.partition: first.offset + 1
    }

    # A new instance of the group, with a processed log of its own so that a redelivery could not
    # hide behind the first runner's processed records.
    delivered: list[str] = []

    async def record_delivery(envelope: Envelope[Any]) -> None:
        delivered.append(envelope.id)
        await apply_to(mongo_db, envelope)

    second_runner = runner_for(infrastructure, producer, topic, group, record_delivery, other_db)
    async with running(second_runner):
        await wait_until(lambda: len(delivered) >= 2, message="the two unfinished messages delivered")

    assert delivered == [second.id, third.id]
    assert await applied(mongo_db, "inc-e") == [in_hand.id, second.id, third.id]


async def test_stop_while_idle_returns_promptly_and_closes(
    infrastructure: Infrastructure,
    producer: EventProducer,
    mongo_db: Database,
    new_topic: Callable[..., Awaitable[str]],
) -> None:
    topic = await new_topic("idle")

    async def handle(envelope: Envelope[Any]) -> None:
        await apply_to(mongo_db, envelope)

    runner = runner_for(infrastructure, producer, topic, unique_name("group"), handle, mongo_db)
    async with running(runner) as task:
        pass
    assert task.done() and task.exception() is None


# --- the processed-event log itself ----------------------------------------------------------


async def test_processed_records_written_again_are_kept_once_and_the_others_still_written(mongo_db: Database) -> None:
    processed = ProcessedEventLog(mongo_db)
    await processed.ensure_indexes()
    await processed.mark("group", "notify", "e1")

    # e.g. a batch redelivered after a rebalance, partly handled by the previous owner already
    batch = [("notify", "e1"), ("notify", "e2"), ("audit", "e1"), ("notify", "e1")]
    await processed.begin(record_id("group", handler, event) for handler, event in batch)
    await processed.mark_many("group", batch)
    await processed.mark("group", "notify", "e2")

    asked = [
        record_id("group", "notify", "e1"),
        record_id("group", "notify", "e2"),
        record_id("group", "audit", "e1"),
        record_id("group", "notify", "e3"),
        record_id("other-group", "notify", "e1"),
    ]
    assert await processed.already_processed(asked) == set(asked[:3])
    assert await processed.begin(asked) == set(asked[:3])
    assert await mongo_db[PROCESSED_COLLECTION].count_documents({}) == 3


async def test_begin_tells_new_from_processed_however_often_it_is_repeated(mongo_db: Database) -> None:
    processed = ProcessedEventLog(mongo_db)
    await processed.ensure_indexes()
    a, b, c = (record_id("group", "notify", event) for event in ("a", "b", "c"))

    assert await processed.begin([a, b]) == set()
    assert await processed.begin([a, b, b]) == set(), "begun but not processed: still to do"
    await processed.mark_many("group", [("notify", "a")])
    assert await processed.begin([c, a, b]) == {a}
    assert await processed.begin([]) == set()


async def test_purged_processed_records_are_forgotten_and_what_older_versions_started_is_cleared(
    mongo_db: Database,
) -> None:
    processed = ProcessedEventLog(mongo_db)
    await processed.ensure_indexes()
    a = record_id("group", "notify", "a")
    # Versions before session 6 wrote a "started" record per event; an upgraded store still has them.
    await mongo_db[STARTED_COLLECTION].insert_one({"_id": a, "started_at": datetime.now(UTC)})
    await processed.mark_many("group", [("notify", "a")])
    # The store keeps times in milliseconds: let one pass, so the record is strictly older.
    await asyncio.sleep(0.01)

    assert await processed.purge_older_than(timedelta(0)) == 1

    assert await processed.begin([a]) == set()
    assert await mongo_db[PROCESSED_COLLECTION].count_documents({}) == 0
    assert await mongo_db[STARTED_COLLECTION].count_documents({}) == 0, "begin writes nothing; the old records went"


async def test_a_batch_larger_than_one_indexed_read_finds_every_processed_record(mongo_db: Database) -> None:
    processed = ProcessedEventLog(mongo_db)
    await processed.ensure_indexes()
    events = [f"e{number}" for number in range(250)]
    await processed.mark_many("group", [("notify", event) for event in events[::7]])

    found = await processed.begin(record_id("group", "notify", event) for event in events)

    assert found == {record_id("group", "notify", event) for event in events[::7]}


# --- c. killed before the commit: redelivered after restart, effect still single -----------


class ConsumerProcess(ScriptProcess):
    """``consumer_process.py`` in a child process; see its docstring for the protocol."""

    def __init__(
        self, infrastructure: Infrastructure, db: Database, topic: str, group: str, log_file: Path, *options: str
    ) -> None:
        super().__init__(
            [
                sys.executable,
                str(CONSUMER_PROCESS),
                *("--bootstrap", infrastructure.bootstrap_servers, "--mongo-url", infrastructure.mongo_url),
                *("--database", db.name, "--topic", topic, "--group", group),
                *options,
            ],
            log_file,
            name="the consumer process",
        )


@pytest_asyncio.fixture(loop_scope="session")
async def consumer_processes(
    infrastructure: Infrastructure, mongo_db: Database, tmp_path: Path
) -> AsyncIterator[Callable[..., Awaitable[ConsumerProcess]]]:
    started: list[ConsumerProcess] = []

    async def start(topic: str, group: str, *options: str) -> ConsumerProcess:
        child = ConsumerProcess(
            infrastructure, mongo_db, topic, group, tmp_path / f"consumer-{len(started)}.log", *options
        )
        started.append(await child.start())
        return child

    try:
        yield start
    finally:
        for child in started:
            await child.kill()


async def field_of(db: Database, collection: str, document_id: str, name: str) -> int:
    document = await db[collection].find_one({"_id": document_id})
    return int(document[name]) if document else 0


async def deliveries_of(db: Database, event_id: str) -> int:
    """How often a consumer process fetched the event from Kafka (see consumer_process.py)."""
    return await db["deliveries"].count_documents({"event_id": event_id})


async def test_killed_after_handling_and_marking_but_before_the_commit_the_event_is_redelivered_and_skipped(
    infrastructure: Infrastructure,
    producer: EventProducer,
    mongo_db: Database,
    new_topic: Callable[..., Awaitable[str]],
    consumer_processes: Callable[..., Awaitable[ConsumerProcess]],
) -> None:
    topic, group = await new_topic("kill-marked"), unique_name("group")
    events = [reported("inc-c", "one"), updated("inc-c", "two"), updated("inc-c", "three")]
    target = events[1]
    await producer.publish_many(events, topic)

    doomed = await consumer_processes(topic, group, "--park-on", target.id, "--park-at", "after-mark")
    assert await doomed.expect("PARKED") == target.id
    doomed.signal(signal.SIGKILL)
    assert await doomed.wait() == -signal.SIGKILL

    # The state the scenario is about: handled and marked, but the offset not committed.
    assert target.id in await applied(mongo_db, "inc-c")
    assert await mongo_db[PROCESSED_COLLECTION].count_documents({"event_id": target.id}) == 1
    target_record = record_with_event_id(await read_all(infrastructure.bootstrap_servers, topic), target.id)
    committed = await committed_offsets(infrastructure.bootstrap_servers, group, topic)
    assert committed.get(target_record.partition, 0) <= target_record.offset, "not committed yet"

    successor = await consumer_processes(topic, group)
    # Published after the kill on the same partition: once it is applied, the restarted consumer
    # has been through everything before it.
    events.append(updated("inc-c", "four"))
    await producer.publish(events[-1], topic)
    await wait_until(
        lambda: _contains(mongo_db, "inc-c", events[-1].id), timeout=90, message="the restarted consumer caught up"
    )
    successor.signal(signal.SIGTERM)
    await successor.expect("STOPPED")
    assert await successor.wait() == 0

    assert await applied(mongo_db, "inc-c") == [e.id for e in events], "every effect exactly once"
    assert await deliveries_of(mongo_db, target.id) == 2, "redelivered after the kill"
    assert await field_of(mongo_db, "handler_runs", target.id, "runs") == 1, "skipped: already processed"


async def test_killed_after_the_handlers_write_but_before_marking_an_idempotent_handler_keeps_the_effect_single(
    infrastructure: Infrastructure,
    producer: EventProducer,
    mongo_db: Database,
    new_topic: Callable[..., Awaitable[str]],
    consumer_processes: Callable[..., Awaitable[ConsumerProcess]],
) -> None:
    topic, group = await new_topic("kill-written"), unique_name("group")
    events = [reported("inc-w", "one"), updated("inc-w", "two"), updated("inc-w", "three")]
    target = events[1]
    await producer.publish_many(events, topic)

    doomed = await consumer_processes(
        topic, group, "--effect", "guarded", "--park-on", target.id, "--park-at", "after-handler-write"
    )
    assert await doomed.expect("PARKED") == target.id
    doomed.signal(signal.SIGKILL)
    assert await doomed.wait() == -signal.SIGKILL

    assert target.id in await applied(mongo_db, "inc-w")
    assert await mongo_db[PROCESSED_COLLECTION].count_documents({"event_id": target.id}) == 0

    successor = await consumer_processes(topic, group, "--effect", "guarded")
    events.append(updated("inc-w", "four"))
    await producer.publish(events[-1], topic)
    await wait_until(
        lambda: _contains(mongo_db, "inc-w", events[-1].id), timeout=90, message="the restarted consumer caught up"
    )
    successor.signal(signal.SIGTERM)
    assert await successor.wait() == 0

    assert await field_of(mongo_db, "handler_runs", target.id, "runs") == 2, "the handler ran again"
    assert await applied(mongo_db, "inc-w") == [e.id for e in events], "yet every effect exactly once"
    assert await field_of(mongo_db, "effects", "inc-w", "count") == len(events)
    assert await mongo_db[PROCESSED_COLLECTION].count_documents({"event_id": target.id}) == 1


async def test_sigterm_finishes_the_message_in_hand_commits_and_exits_cleanly(
    infrastructure: Infrastructure,
    producer: EventProducer,
    mongo_db: Database,
    new_topic: Callable[..., Awaitable[str]],
    consumer_processes: Callable[..., Awaitable[ConsumerProcess]],
) -> None:
    topic, group = await new_topic("sigterm"), unique_name("group")
    events = [reported("inc-t", "slow"), updated("inc-t", "two"), updated("inc-t", "three")]
    in_hand = events[0]
    await producer.publish_many(events, topic)

    first = await consumer_processes(topic, group, "--hold-on", in_hand.id)
    assert await first.expect("IN_HAND") == in_hand.id
    first.signal(signal.SIGTERM)
    await first.expect("STOPPING")
    await mongo_db["release"].insert_one({"_id": in_hand.id})
    await first.expect("STOPPED")
    assert await first.wait() == 0

    assert await applied(mongo_db, "inc-t") == [in_hand.id]
    record = record_with_event_id(await read_all(infrastructure.bootstrap_servers, topic), in_hand.id)
    assert await committed_offsets(infrastructure.bootstrap_servers, group, topic) == {
        record.partition: record.offset + 1
    }

    successor = await consumer_processes(topic, group)
    await wait_until(
        lambda: _contains(mongo_db, "inc-t", events[2].id), timeout=90, message="the next instance handled the rest"
    )
    successor.signal(signal.SIGTERM)
    assert await successor.wait() == 0

    assert await applied(mongo_db, "inc-t") == [e.id for e in events]
    assert await deliveries_of(mongo_db, in_hand.id) == 1, "not delivered again"
