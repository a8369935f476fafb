"""A service process with one single-instance job and one kind of due item, for tests that run
two of them on one store and kill them for real.

    python scheduled_process.py --bootstrap HOST:PORT --mongo-url URL --database DB \\
        [--interval 2] [--lease 3] [--poll 0.2]

It runs a real ``ServiceRuntime`` (store and Kafka connected, nothing consumed) with:

* ``runtime.every("tick", interval, job)``: the job reads which run it is (the ``next_run_at``
  the lease document holds while the run is under way, ``first`` for the very first run) and
  inserts a document with that as ``_id`` in ``runs``; a second run of the same occurrence
  collides and is recorded in ``double_runs`` instead;
* ``runtime.on_due("test-reminder", handler)``: the handler increments ``fired.<key>.count`` and
  pushes its holder id.

It prints ``READY <holder id>`` once connected (the test kills by that id) and ``STOPPED`` after a
clean SIGTERM shutdown.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys

import structlog
from pymongo.errors import DuplicateKeyError

from aftercare.events.runtime import ServiceRuntime
from aftercare.events.schedule import LEASES, DueItem, Jobs
from aftercare.events.settings import ServiceSettings


def say(*words: str) -> None:
    print(*words, flush=True)


async def main(args: argparse.Namespace) -> None:
    settings = ServiceSettings(
        service_name="scheduled-test",
        database=args.database,
        kafka_bootstrap_servers=args.bootstrap,
        mongo_url=args.mongo_url,
        lease_seconds=args.lease,
        due_poll_seconds=args.poll,
        startup_timeout_seconds=60,
        topic_partitions=1,
    )
    runtime = ServiceRuntime(settings)

    async def tick() -> None:
        lease = await runtime.db[LEASES].find_one({"_id": Jobs.lease_name("tick")})
        occurrence = "first" if lease is None or lease.get("next_run_at") is None else lease["next_run_at"].isoformat()
        record = {"_id": occurrence, "holder": runtime.holder_id}
        try:
            await runtime.db["runs"].insert_one(record)
        except DuplicateKeyError:
            await runtime.db["double_runs"].insert_one({"occurrence": occurrence, "holder": runtime.holder_id})

    async def remind(item: DueItem) -> None:
        await runtime.db["fired"].update_one(
            {"_id": item.key}, {"$inc": {"count": 1}, "$push": {"holders": runtime.holder_id}}, upsert=True
        )

    runtime.every("tick", args.interval, tick)
    runtime.on_due("test-reminder", remind)

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    # SIGUSR1 prints where every task is waiting (for a test that finds this process stuck).
    loop.add_signal_handler(signal.SIGUSR1, lambda: [task.print_stack(file=sys.stderr) for task in asyncio.all_tasks()])
    await runtime.start()
    while not (runtime.connected.is_set() or runtime.startup_error or stop.is_set()):  # noqa: ASYNC110
        await asyncio.sleep(0.05)  # startup_error has no event to wait on
    if runtime.connected.is_set():
        say("READY", runtime.holder_id)
    elif runtime.startup_error is not None:
        say("FAILED", str(runtime.startup_error))
    await stop.wait()
    await runtime.stop()
    say("STOPPED")


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--bootstrap", required=True)
    parser.add_argument("--mongo-url", required=True)
    parser.add_argument("--database", required=True)
    parser.add_argument("--interval", type=float, default=2.0)
    parser.add_argument("--lease", type=float, default=3.0)
    parser.add_argument("--poll", type=float, default=0.2)
    arguments = parser.parse_args()
    # Logs to stderr (the test keeps them in a file); stdout is for the lines the test waits for.
    structlog.configure(logger_factory=structlog.PrintLoggerFactory(sys.stderr))
    asyncio.run(main(arguments))
