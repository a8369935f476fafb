"""What handling incidents concurrently buys: the consumer runner with concurrency vs sequential.

    uv run python bench/consumer_concurrency.py [--bootstrap HOST:PORT --mongo-url URL]
        [--events 10000] [--sequential-events 1000] [--io-ms 5] [--concurrency 16 64]

Without addresses (arguments, or AFTERCARE_BENCH_KAFKA_BOOTSTRAP_SERVERS and
AFTERCARE_BENCH_MONGO_URL) it starts its own Kafka broker and FerretDB store on free ports in a
temporary directory and stops them at the end.

Every run is the same ``ConsumerRunner`` (idempotency on: the real processed-event log on the
store; tracing as services set it up) with a handler that awaits ``--io-ms`` of I/O per event
(a webhook call, a probe, a store write of a real handler), over events of 200 incidents on 3
partitions. Only ``concurrency`` differs: 1 is the sequential baseline, measured in the same run
on the same topic (on fewer events: it is slow by design). Each run has its own consumer group
and database; the clock starts at the first event handled (the group join is not the runner's
cost). Target: with concurrency, >= 10x the sequential rate and >= 2,000 events/s.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys
from typing import Any

import structlog
from events_throughput import Clock, Measured, filled_topic, local_infrastructure, unique  # same folder
from pymongo import AsyncMongoClient

from aftercare.events.consumer import ConsumerRunner
from aftercare.events.envelope import Envelope
from aftercare.events.incidents import IncidentReported
from aftercare.events.processed import ProcessedEventLog
from aftercare.events.producer import EventProducer
from aftercare.events.tracing import configure_tracing

ROUND_TIMEOUT_S = 600.0


async def consume(bootstrap: str, mongo_url: str, topic: str, count: int, concurrency: int, io_s: float) -> Measured:
    mongo: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(mongo_url, tz_aware=True)
    database = mongo[unique(f"concurrency-{concurrency}").replace("-", "_")]
    processed = ProcessedEventLog(database)
    await processed.ensure_indexes()
    producer = EventProducer(bootstrap, client_id="bench-dead-letters")
    await producer.start()
    handled = 0
    clock = Clock()
    result: Measured | None = None
    all_handled = asyncio.Event()

    async def call_customer_webhook(envelope: Envelope[Any]) -> None:
        nonlocal handled, result
        if handled == 0:
            clock.start()
        await asyncio.sleep(io_s)  # the I/O the handler waits for
        handled += 1
        if handled == count:
            result = clock.stop(count)
            all_handled.set()

    runner = ConsumerRunner(
        bootstrap_servers=bootstrap,
        group_id=unique(f"concurrency-{concurrency}"),
        topics=[topic],
        handlers={IncidentReported: [call_customer_webhook]},
        processed=processed,
        producer=producer,
        concurrency=concurrency,
    )
    task = asyncio.create_task(runner.run())
    try:
        await asyncio.wait_for(all_handled.wait(), timeout=ROUND_TIMEOUT_S)
    finally:
        runner.stop()
        await task
        await producer.stop()
        await mongo.drop_database(database.name)
        await mongo.close()
    assert result is not None
    return result


async def bench(args: argparse.Namespace, bootstrap: str, mongo_url: str) -> int:
    io_s = args.io_ms / 1000
    print(f"filling a topic with {args.events:,} events of 200 incidents ...", flush=True)
    topic = await filled_topic(bootstrap, args.events, 512)
    print(f"handler awaits {args.io_ms} ms of I/O per event", flush=True)

    print(f"  concurrency 1 (sequential baseline), first {args.sequential_events:,} events ...", flush=True)
    sequential = await consume(bootstrap, mongo_url, topic, args.sequential_events, 1, io_s)
    results: list[tuple[int, Measured]] = []
    for concurrency in args.concurrency:
        print(f"  concurrency {concurrency}, {args.events:,} events ...", flush=True)
        results.append((concurrency, await consume(bootstrap, mongo_url, topic, args.events, concurrency, io_s)))

    print(f"\nconsume, {args.io_ms} ms of awaited I/O per event, idempotency on the store, 3 partitions, 200 incidents")
    print(f"  {'concurrency':<12} {'events':>8} {'seconds':>8} {'events/s':>10} {'us CPU/event':>13} {'vs seq.':>9}")

    def line(concurrency: int, measured: Measured) -> str:
        ratio = measured.rate / sequential.rate
        return (
            f"  {concurrency:<12} {measured.events:>8,} {measured.seconds:>8.1f} {measured.rate:>10,.0f}"
            f" {measured.cpu_us:>13.0f} {ratio:>8.1f}x"
        )

    print(line(1, sequential))
    met = True
    for concurrency, measured in results:
        print(line(concurrency, measured))
    for concurrency, measured in results:
        ratio = measured.rate / sequential.rate
        ok = ratio >= 10 and measured.rate >= 2000
        met = met and ok
        print(
            f"  concurrency {concurrency}: {ratio:.1f}x sequential, {measured.rate:,.0f} events/s "
            f"(target >= 10x and >= 2,000 events/s: {'met' if ok else 'NOT met'})"
        )
    return 0 if met else 1


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bootstrap", default=os.environ.get("AFTERCARE_BENCH_KAFKA_BOOTSTRAP_SERVERS"))
    parser.add_argument("--mongo-url", default=os.environ.get("AFTERCARE_BENCH_MONGO_URL"))
    parser.add_argument("--events", type=int, default=10_000)
    parser.add_argument("--sequential-events", type=int, default=1_000)
    parser.add_argument("--io-ms", type=float, default=5.0)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[16, 64])
    args = parser.parse_args()
    configure_tracing("bench", "none")
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    logging.basicConfig(level=logging.ERROR)
    if bool(args.bootstrap) != bool(args.mongo_url):
        parser.error("give both --bootstrap and --mongo-url, or neither (to start a local broker and store)")
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    if args.bootstrap:
        return asyncio.run(bench(args, args.bootstrap, args.mongo_url))
    with local_infrastructure() as (bootstrap, mongo_url):
        return asyncio.run(bench(args, bootstrap, mongo_url))


if __name__ == "__main__":
    sys.exit(main())
