"""How much the shared event plumbing costs next to bare aiokafka, on a real broker and store.

    uv run python bench/events_throughput.py [--bootstrap HOST:PORT --mongo-url URL]
                                             [--publish-events 20000] [--consume-events 10000]

Without addresses (arguments, or AFTERCARE_BENCH_KAFKA_BOOTSTRAP_SERVERS and
AFTERCARE_BENCH_MONGO_URL) it starts its own Kafka broker and FerretDB store on free ports in
a temporary directory (``infra/localinfra.py``) and stops them at the end.

(a) publishing: ``EventProducer.publish_many`` with ~1 KB events against a bare
    ``AIOKafkaProducer`` with the same settings (idempotent, acks=all, same linger) sending the
    same events as pre-built bytes. Target: the EventProducer reaches >= 80% of bare.
(b) consuming: ``ConsumerRunner`` with idempotency on (the real ``ProcessedEventLog`` on the
    store) and a handler that does nothing, against a bare ``AIOKafkaConsumer`` loop that reads
    and commits per batch. Target: the runner handles >= 2000 events/s.

Tracing is set up as every service sets it up (``configure_tracing`` with no exporter: spans
are made, so trace ids reach logs and events); ``--tracing off`` measures without it.

The two sides take turns, ``--rounds`` times each, on fresh topics and groups; the best round
counts (the broker and the store share the machine's cores with this process, so the best
round is the least disturbed). The CPU time this process spent per event is printed too: it
depends less on what else the machine is doing than events/s does.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import shutil
import signal
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import structlog
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from pymongo import AsyncMongoClient

from aftercare.events.catalog import serialize
from aftercare.events.consumer import ConsumerRunner
from aftercare.events.envelope import Envelope, envelope_for
from aftercare.events.incidents import Channel, IncidentReported
from aftercare.events.processed import ProcessedEventLog
from aftercare.events.producer import EventProducer
from aftercare.events.runtime import ensure_topics
from aftercare.events.topics import topic_specs
from aftercare.events.tracing import configure_tracing

REPO_ROOT = Path(__file__).resolve().parent.parent
LINGER_MS = 5  # EventProducer's default; the bare producer gets the same
PARTITIONS = 3
INCIDENTS = 200  # keys the events are spread over
ROUND_TIMEOUT_S = 180.0


def unique(prefix: str) -> str:
    return f"bench-{prefix}-{uuid.uuid4().hex[:10]}"


def make_events(count: int, size: int) -> list[Envelope[Any]]:
    """``count`` incident.reported events whose JSON is ``size`` bytes (give or take a few)."""

    def build(index: int, description: str) -> Envelope[Any]:
        incident = f"inc-{index % INCIDENTS}"
        return envelope_for(
            IncidentReported(
                incident_id=incident,
                number=f"INC-{index}",
                title="Checkout returns 502",
                description=description,
                channel=Channel.ALERTMANAGER,
                reported_at=datetime.now(UTC),
                labels={"env": "prod", "team": "shop"},
            ),
            source="bench",
            tenant_id="acme",
            incident_id=incident,
        )

    padding = max(0, size - len(serialize(build(0, ""))))
    return [build(index, "x" * padding) for index in range(count)]


@contextlib.contextmanager
def local_infrastructure() -> Iterator[tuple[str, str]]:
    sys.path.insert(0, str(REPO_ROOT / "infra"))
    from localinfra import throwaway_nodes

    base = Path(tempfile.mkdtemp(prefix="aftercare-bench-"))
    print(f"starting a local Kafka broker and store under {base} ...", flush=True)
    try:
        with throwaway_nodes(base) as (kafka, store):
            yield kafka.bootstrap_servers, store.url
    finally:
        shutil.rmtree(base, ignore_errors=True)


@dataclass
class Measured:
    events: int
    seconds: float
    cpu_seconds: float

    @property
    def rate(self) -> float:
        return self.events / self.seconds

    @property
    def cpu_us(self) -> float:
        return self.cpu_seconds / self.events * 1e6


class Clock:
    """Wall and this process's CPU time between ``start()`` and ``stop()``."""

    def start(self) -> None:
        self._wall, self._cpu = time.perf_counter(), time.process_time()

    def stop(self, events: int) -> Measured:
        return Measured(events, time.perf_counter() - self._wall, time.process_time() - self._cpu)


async def take_turns(
    rounds: int, ours: Callable[[], Awaitable[Measured]], bare: Callable[[], Awaitable[Measured]]
) -> tuple[list[Measured], list[Measured]]:
    ours_rounds: list[Measured] = []
    bare_rounds: list[Measured] = []
    for _ in range(rounds):
        bare_rounds.append(await asyncio.wait_for(bare(), ROUND_TIMEOUT_S))
        ours_rounds.append(await asyncio.wait_for(ours(), ROUND_TIMEOUT_S))
    return ours_rounds, bare_rounds


# --- (a) publishing -------------------------------------------------------------------------


async def publish_with_event_producer(bootstrap: str, events: list[Envelope[Any]]) -> Measured:
    topic = unique("publish")
    await ensure_topics(bootstrap, topic_specs([topic]), partitions=PARTITIONS)
    producer = EventProducer(
        bootstrap, client_id="bench-event-producer", linger_ms=LINGER_MS, publish_deadline_s=ROUND_TIMEOUT_S
    )
    await producer.start()
    try:
        await producer.publish_many(events[:500], topic)  # connections and metadata
        clock = Clock()
        clock.start()
        await producer.publish_many(events, topic)
        return clock.stop(len(events))
    finally:
        await producer.stop()


async def publish_bare(bootstrap: str, events: list[Envelope[Any]]) -> Measured:
    topic = unique("publish-bare")
    await ensure_topics(bootstrap, topic_specs([topic]), partitions=PARTITIONS)
    messages = [(envelope.key.encode(), serialize(envelope)) for envelope in events]
    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap,
        client_id="bench-bare-producer",
        enable_idempotence=True,
        acks="all",
        linger_ms=LINGER_MS,
    )
    await producer.start()
    try:
        await asyncio.gather(*[await producer.send(topic, value=v, key=k) for k, v in messages[:500]])
        clock = Clock()
        clock.start()
        pending = [await producer.send(topic, value=value, key=key) for key, value in messages]
        await asyncio.gather(*pending)
        return clock.stop(len(messages))
    finally:
        await producer.stop()


# --- (b) consuming --------------------------------------------------------------------------


async def filled_topic(bootstrap: str, count: int, size: int) -> str:
    topic = unique("consume")
    await ensure_topics(bootstrap, topic_specs([topic]), partitions=PARTITIONS)
    # Thousands of events in one call: far beyond the per-request publish deadline meant for services.
    producer = EventProducer(bootstrap, client_id="bench-filler", publish_deadline_s=300)
    await producer.start()
    try:
        await producer.publish_many(make_events(count, size), topic)
    finally:
        await producer.stop()
    return topic


async def consume_with_runner(bootstrap: str, mongo_url: str, topic: str, count: int) -> Measured:
    mongo: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(mongo_url, tz_aware=True)
    database = mongo[unique("runner").replace("-", "_")]
    processed = ProcessedEventLog(database)
    await processed.ensure_indexes()
    producer = EventProducer(bootstrap, client_id="bench-dead-letters")
    await producer.start()
    handled = 0
    clock = Clock()
    result: Measured | None = None
    all_handled = asyncio.Event()

    async def handle(envelope: Envelope[Any]) -> None:
        nonlocal handled, result
        if handled == 0:
            clock.start()  # from the first event on: the group join is not the runner's cost
        handled += 1
        if handled == count:
            result = clock.stop(count - 1)  # the first event's handling is not in the interval
            all_handled.set()

    runner = ConsumerRunner(
        bootstrap_servers=bootstrap,
        group_id=unique("runner"),
        topics=[topic],
        handlers={IncidentReported: [handle]},
        processed=processed,
        producer=producer,
    )
    task = asyncio.create_task(runner.run())
    try:
        await asyncio.wait_for(all_handled.wait(), timeout=300)
    finally:
        runner.stop()
        await task
        await producer.stop()
        await mongo.drop_database(database.name)
        await mongo.close()
    assert result is not None
    return result


async def consume_bare(bootstrap: str, topic: str, count: int) -> Measured:
    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        group_id=unique("bare"),
        enable_auto_commit=False,
        auto_offset_reset="earliest",
    )
    await consumer.start()
    seen = 0
    clock = Clock()
    try:
        while seen < count:
            batch = await consumer.getmany(timeout_ms=500, max_records=200)
            if batch and seen == 0:
                clock.start()  # as for the runner: from the first event on
            for records in batch.values():
                seen += len(records)
            if batch:
                await consumer.commit()
        return clock.stop(count)
    finally:
        await consumer.stop()


def report(
    title: str,
    ours_name: str,
    ours_rounds: list[Measured],
    bare_rounds: list[Measured],
    target: Callable[[float, float], str],
) -> None:
    ours = max(ours_rounds, key=lambda m: m.rate)
    bare = max(bare_rounds, key=lambda m: m.rate)

    def line(name: str, best: Measured, rounds: list[Measured]) -> str:
        each = ", ".join(f"{m.rate:,.0f}" for m in rounds)
        return f"  {name:<44} {best.rate:>8,.0f} events/s  {best.cpu_us:>5.0f} us CPU/event   (rounds: {each})"

    print(f"\n{title}")
    print(line(ours_name, ours, ours_rounds))
    print(line("bare aiokafka", bare, bare_rounds))
    print(f"  ratio {ours.rate / bare.rate:>44.0%}   {target(ours.rate, bare.rate)}")


async def bench(args: argparse.Namespace, bootstrap: str, mongo_url: str) -> None:
    events = make_events(args.publish_events, args.size)
    print(f"tracing: {args.tracing}; {args.rounds} rounds per side, taking turns", flush=True)
    print(f"(a) publishing {len(events):,} events of {len(serialize(events[0]))} bytes ...", flush=True)
    publish = await take_turns(
        args.rounds, lambda: publish_with_event_producer(bootstrap, events), lambda: publish_bare(bootstrap, events)
    )

    print(f"(b) consuming {args.consume_events:,} events ...", flush=True)
    topic = await filled_topic(bootstrap, args.consume_events, args.size)
    consume = await take_turns(
        args.rounds,
        lambda: consume_with_runner(bootstrap, mongo_url, topic, args.consume_events),
        lambda: consume_bare(bootstrap, topic, args.consume_events),
    )

    report(
        "(a) publish, idempotent, acks=all, 1 call for all events",
        "EventProducer.publish_many",
        *publish,
        lambda ours, bare: f"(target >= 80%: {'met' if ours / bare >= 0.8 else 'NOT met'})",
    )
    report(
        "(b) consume, commit per batch, handler does nothing",
        "ConsumerRunner (processed log on the store)",
        *consume,
        lambda ours, bare: f"(target >= 2,000 events/s: {'met' if ours >= 2000 else 'NOT met'})",
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bootstrap", default=os.environ.get("AFTERCARE_BENCH_KAFKA_BOOTSTRAP_SERVERS"))
    parser.add_argument("--mongo-url", default=os.environ.get("AFTERCARE_BENCH_MONGO_URL"))
    parser.add_argument("--publish-events", type=int, default=20_000)
    parser.add_argument("--consume-events", type=int, default=10_000)
    parser.add_argument("--size", type=int, default=1024, help="bytes per event (JSON)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--tracing",
        choices=["service", "off"],
        default="service",
        help="'service': as services run (spans made, not exported); 'off': no tracer",
    )
    args = parser.parse_args()
    if args.tracing == "service":
        configure_tracing("bench", "none")
    # Only problems are worth printing while measuring.
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    logging.basicConfig(level=logging.ERROR)
    if bool(args.bootstrap) != bool(args.mongo_url):
        parser.error("give both --bootstrap and --mongo-url, or neither (to start a local broker and store)")
    # A SIGTERM (e.g. from `timeout`) must still stop the broker and store this script started.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    if args.bootstrap:
        asyncio.run(bench(args, args.bootstrap, args.mongo_url))
    else:
        with local_infrastructure() as (bootstrap, mongo_url):
            asyncio.run(bench(args, bootstrap, mongo_url))
    return 0


if __name__ == "__main__":
    sys.exit(main())
