"""A ConsumerRunner in a process of its own, so a test can kill it for real (SIGKILL, SIGTERM).

    python consumer_process.py --bootstrap HOST:PORT --mongo-url URL --database DB \\
        --topic TOPIC --group GROUP [--park-on EVENT_ID --park-at after-mark|after-handler-write]
        [--hold-on EVENT_ID] [--effect plain|guarded] [--concurrency N] [--handler-delay-ms MS]
        [--park-after-runs N]

The handler applies each event to one document per incident in collection ``effects``
(``count`` incremented with ``$inc``, the event id pushed onto ``applied``), and counts its own
runs per event in ``handler_runs``. The processed-event log is the real one, wrapped so that
every event the runner fetches from Kafka leaves a document ``{event_id}`` in ``deliveries``: a
redelivery shows there even when the processed records rightly keep the handler from running again.

Effects:
* ``plain``: ``$inc`` with no guard, so a second run of the handler would count twice;
* ``guarded``: the update only matches while the event id is not yet in ``applied`` (the
  pattern handlers use for writes that may be retried after a crash before the processed record).

Crash and stop points (the process talks to the test in lines on stdout):
* ``--park-on ID --park-at after-mark``: the processed records of the batch holding ID are
  written (``mark_many``, just before the runner commits), then the process prints
  ``PARKED ID`` and freezes (it blocks its event loop, so nothing else happens, certainly no
  commit); the test SIGKILLs it;
* ``--park-at after-handler-write``: the same, right after the handler's write and before the
  processed record;
* ``--park-after-runs N``: the N-th handler run, right after its write, freezes the process the
  same way, while the runner's other handlers (``--concurrency``, each awaiting
  ``--handler-delay-ms`` of I/O before its write) are half-way through theirs;
* ``--hold-on ID``: the handler of ID prints ``IN_HAND ID`` and waits until a document
  ``{_id: ID}`` appears in collection ``release``;
* SIGTERM prints ``STOPPING`` and calls ``runner.stop()``; a clean exit prints ``STOPPED``.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
import time
from collections.abc import Iterable
from typing import Any

import structlog
from pymongo import AsyncMongoClient
from pymongo.errors import DuplicateKeyError

from aftercare.events.consumer import ConsumerRunner, RetryPolicy
from aftercare.events.envelope import Envelope
from aftercare.events.incidents import IncidentReported, IncidentUpdated
from aftercare.events.processed import ProcessedEventLog
from aftercare.events.producer import EventProducer


def say(*words: str) -> None:
    print(*words, flush=True)


def park(event_id: str) -> None:
    """Freeze the whole process until it is killed: no await, so the event loop stops too."""
    say("PARKED", event_id)
    while True:
        time.sleep(3600)


class WatchedProcessedLog(ProcessedEventLog):
    """The real processed-event log, plus a count of every event the runner fetched."""

    def __init__(self, database: Any, args: argparse.Namespace) -> None:
        super().__init__(database)
        self._deliveries = database["deliveries"]
        self._args = args

    async def begin(self, ids: Iterable[str]) -> set[str]:
        # The runner begins every batch it fetched with this call.
        wanted = list(ids)
        if wanted:
            # One document per delivery, inserted in one write. Not an upsert with $inc per event:
            # the embedded store keeps each matched statement's read open until the whole update
            # command ends, and its pool has 100 connections per database, so a batch of over ~100
            # redelivered events (a successor after a kill -9) hung that database for good.
            await self._deliveries.insert_many([{"event_id": record.rsplit("|", 1)[1]} for record in wanted])
        return await super().begin(wanted)

    async def mark_many(self, group: str, handled: Iterable[tuple[str, str]]) -> None:
        pairs = list(handled)
        await super().mark_many(group, pairs)
        if self._args.park_at == "after-mark" and self._args.park_on in {event_id for _, event_id in pairs}:
            park(self._args.park_on)


async def main(args: argparse.Namespace) -> int:
    # Logs go to stderr; stdout carries only the lines the test waits for.
    structlog.configure(logger_factory=structlog.PrintLoggerFactory(sys.stderr))
    mongo: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(args.mongo_url, tz_aware=True)
    db = mongo[args.database]
    effects, runs, release = db["effects"], db["handler_runs"], db["release"]

    started_runs = 0

    async def apply_event(envelope: Envelope[Any]) -> None:
        nonlocal started_runs
        started_runs += 1
        run_number = started_runs
        await runs.update_one({"_id": envelope.id}, {"$inc": {"runs": 1}}, upsert=True)
        if args.handler_delay_ms:
            await asyncio.sleep(args.handler_delay_ms / 1000)  # the I/O a real handler awaits
        key = envelope.incident_id
        if args.effect == "plain":
            await effects.update_one(
                {"_id": key}, {"$inc": {"count": 1}, "$push": {"applied": envelope.id}}, upsert=True
            )
        else:
            try:
                await effects.update_one({"_id": key}, {"$setOnInsert": {"count": 0, "applied": []}}, upsert=True)
            except DuplicateKeyError:
                pass  # another instance created it at the same moment
            await effects.update_one(
                {"_id": key, "applied": {"$ne": envelope.id}}, {"$inc": {"count": 1}, "$push": {"applied": envelope.id}}
            )
        if args.park_at == "after-handler-write" and envelope.id == args.park_on:
            park(envelope.id)
        if args.park_after_runs and run_number == args.park_after_runs:
            park(envelope.id)
        if envelope.id == args.hold_on:
            say("IN_HAND", envelope.id)
            # The release comes from the test process through the store, so polling it is the way.
            while await release.find_one({"_id": envelope.id}) is None:  # noqa: ASYNC110
                await asyncio.sleep(0.05)

    apply_event.handler_name = "consumer_process.apply_event"  # type: ignore[attr-defined]

    processed = WatchedProcessedLog(db, args)
    await processed.ensure_indexes()
    producer = EventProducer(args.bootstrap, client_id=f"{args.group}-dead-letters")
    await producer.start()
    runner = ConsumerRunner(
        bootstrap_servers=args.bootstrap,
        group_id=args.group,
        topics=[args.topic],
        handlers={IncidentReported: [apply_event], IncidentUpdated: [apply_event]},
        processed=processed,
        producer=producer,
        retry=RetryPolicy(max_attempts=3, initial_backoff_s=0.05, max_backoff_s=0.2),
        concurrency=args.concurrency,
    )

    def on_sigterm() -> None:
        say("STOPPING")
        runner.stop()

    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, on_sigterm)
    task = asyncio.create_task(runner.run())
    try:
        await asyncio.wait_for(runner.wait_assigned(timeout_s=120), timeout=130)
        say("ASSIGNED")
        await task
    finally:
        await producer.stop()
        await mongo.close()
    say("STOPPED")
    return 0


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bootstrap", required=True)
    parser.add_argument("--mongo-url", required=True)
    parser.add_argument("--database", required=True)
    parser.add_argument("--topic", required=True)
    parser.add_argument("--group", required=True)
    parser.add_argument("--effect", choices=["plain", "guarded"], default="plain")
    parser.add_argument("--park-on")
    parser.add_argument("--park-at", choices=["after-mark", "after-handler-write"])
    parser.add_argument("--hold-on")
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--handler-delay-ms", type=int, default=0)
    parser.add_argument("--park-after-runs", type=int, default=0)
    return parser.parse_args(argv)


if __name__ == "__main__":
    sys.exit(asyncio.run(main(parse_args())))
