"""What an idle poll of the stored due times costs, with the "next due" hint against a scan.

    uv run python bench/due_times_poll.py [--mongo-url URL] [--items 5000] [--polls 150]

Without ``--mongo-url`` (or AFTERCARE_BENCH_MONGO_URL) it starts its own store (FerretDB, the
project's build) on a free port in a temporary directory and stops it at the end.

A service holds ``--items`` due times, all in the future (SLA breach timers of open incidents,
say). The poller looks every second. Measured in the same run, same store, same items:

* hinted: ``DueTimes.poll`` as the services run it (one read by ``_id`` of the hint document);
* scanning: the same poll forced to look for due items every time (``full_scan_every=0``),
  what a poller without the hint would do (a query on ``due_at`` plus the earliest-item query).

Prints the median and p95 per poll for both and the ratio scanning / hinted.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from pymongo import AsyncMongoClient

from aftercare.events.schedule import DueItem, DueTimes

REPO_ROOT = Path(__file__).resolve().parent.parent


async def nothing(item: DueItem) -> None:
    raise AssertionError(f"{item.key} is not due yet")


async def measure(due: DueTimes, polls: int, now: datetime) -> list[float]:
    timings = []
    for _ in range(polls):
        started = time.perf_counter()
        report = await due.poll(now)
        timings.append(time.perf_counter() - started)
        assert not report.handled and not report.failed
    return timings


def summary(name: str, timings: list[float]) -> tuple[float, str]:
    ordered = sorted(timings)
    median = statistics.median(ordered)
    p95 = ordered[max(int(len(ordered) * 0.95) - 1, 0)]
    return median, f"{name:<10} median {median * 1000:8.2f} ms   p95 {p95 * 1000:8.2f} ms"


async def run(mongo_url: str, items: int, polls: int) -> None:
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(mongo_url, tz_aware=True)
    database = client[f"bench_due_{uuid.uuid4().hex[:8]}"]
    try:
        writer = DueTimes(database)
        await writer.ensure_indexes()
        now = datetime.now(UTC)
        print(f"storing {items} due times in the future ...", flush=True)
        for start in range(0, items, 1000):
            documents = [
                {
                    "_id": f"sla-breach:inc-{n}",
                    "kind": "sla-breach",
                    "payload": {"incident_id": f"inc-{n}"},
                    "due_at": now + timedelta(hours=1, seconds=n),
                    "first_due_at": now + timedelta(hours=1, seconds=n),
                    "attempts": 0,
                    "version": uuid.uuid4().hex,
                    "last_error": None,
                }
                for n in range(start, min(start + 1000, items))
            ]
            await database["due_times"].insert_many(documents)
        # One real schedule sets the hint, as every schedule() does.
        await writer.schedule("sla-breach:inc-last", now + timedelta(hours=2), "sla-breach", {})

        hinted = DueTimes(database)
        hinted.on_due("sla-breach", nothing)
        scanning = DueTimes(database, full_scan_every=timedelta(0))
        scanning.on_due("sla-breach", nothing)
        await hinted.poll(now)  # its first poll scans once, as after every start
        # Alternate in rounds so that both see the same machine load.
        hinted_times: list[float] = []
        scanning_times: list[float] = []
        # A scanning poll is slow on the embedded store (every item is read), so fewer of those.
        for _ in range(3):
            hinted_times += await measure(hinted, polls // 3, now)
            scanning_times += await measure(scanning, 2, now)
        hinted_median, hinted_line = summary("hinted", hinted_times)
        scanning_median, scanning_line = summary("scanning", scanning_times)
        print(f"idle poll over {items} future due times ({mongo_url}):")
        print("  " + hinted_line)
        print("  " + scanning_line)
        print(f"  ratio scanning / hinted: {scanning_median / hinted_median:.1f}x")
    finally:
        await client.drop_database(database.name)
        await client.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mongo-url", default=os.environ.get("AFTERCARE_BENCH_MONGO_URL"))
    parser.add_argument("--items", type=int, default=5000)
    parser.add_argument("--polls", type=int, default=150)
    arguments = parser.parse_args()
    if arguments.mongo_url:
        asyncio.run(run(arguments.mongo_url, arguments.items, arguments.polls))
        return
    sys.path.insert(0, str(REPO_ROOT / "infra"))
    from localinfra import StoreNode, free_port

    with tempfile.TemporaryDirectory(prefix="aftercare-bench-") as base:
        store = StoreNode(data_dir=Path(base) / "store", port=free_port())
        store.start()
        try:
            asyncio.run(run(store.url, arguments.items, arguments.polls))
        finally:
            store.stop()


if __name__ == "__main__":
    main()
