"""Which incident does an email reply answer: the old array query against the keyed collection.

    uv run python bench/email_thread_lookup.py [--incidents 100000] [--tenants 20] [--samples 21]
    (AFTERCARE_BENCH_MONGO_URL=mongodb://... to use a running store; else one is started)

Loads the embedded store (every build patch of ``infra/localinfra.py``, index pushdown
included) with incidents spread over ``--tenants`` tenants, every 4th with an email
Message-ID, and intake's ``email_threads`` documents for them. Times, in the same run on the
same store, what intake's ``find_by_email_message_id`` did before (``find_one({tenant_id,
email_message_ids: {$in}})``: the array field cannot be pushed to an index, so the tenant's
incidents are read until one matches) and what it does now (``email_threads.find_one({_id})`` per
Message-ID until one is found, then the incident by ``_id``; the sample reply names an unknown
Message-ID first, so two thread lookups). Prints each p50 and the ratio.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from pymongo import ASCENDING, DESCENDING, AsyncMongoClient

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT / "infra"))

from localinfra import StoreNode, free_port  # noqa: E402

HIDDEN = {"outbox": 0, "applied_events": 0}


def message_id(n: int) -> str:
    return f"<{n}.thread@mail.example>"


def incident(n: int, tenants: int, start: datetime) -> dict[str, Any]:
    return {
        "_id": f"inc-{n:07d}",
        "tenant_id": f"tenant-{n % tenants:03d}",
        "number": f"INC-{n // tenants + 1}",
        "title": f"Checkout is slow for customers in region {n % 7}",
        "description": "Customers report that the checkout page takes more than ten seconds. " * 4,
        "status": ("reported", "acknowledged", "resolved", "closed")[n % 4],
        "channel": ("api", "email", "alertmanager", "phone")[n % 4],
        "email_message_ids": [message_id(n)] if n % 4 == 1 else [],
        "created_at": start + timedelta(seconds=n),
        "timeline": [{"at": start + timedelta(seconds=n), "kind": "reported", "summary": "Reported by email"}],
        "outbox": [],
        "applied_events": [],
    }


async def p50(samples: int, query: Callable[[int], Awaitable[Any]]) -> float:
    timings = []
    for i in range(samples):
        started = time.perf_counter()
        await query(i)
        timings.append(time.perf_counter() - started)
    return statistics.median(timings) * 1000


async def run(url: str, args: argparse.Namespace) -> None:
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(url)
    database = client[f"bench_threads_{os.getpid()}"]
    incidents, threads = database["incidents"], database["email_threads"]
    try:
        # intake's indexes as they were (the array index included) and as they are
        await incidents.create_index([("tenant_id", ASCENDING), ("number", ASCENDING)], unique=True)
        await incidents.create_index([("tenant_id", ASCENDING), ("created_at", DESCENDING)])
        await incidents.create_index("email_message_ids")
        start = datetime(2026, 1, 1, tzinfo=UTC)
        started = time.perf_counter()
        for first in range(0, args.incidents, 2000):
            batch = [incident(n, args.tenants, start) for n in range(first, min(first + 2000, args.incidents))]
            await incidents.insert_many(batch)
            keyed = [
                {"_id": f"{d['tenant_id']}:{d['email_message_ids'][0]}", "incident_id": d["_id"], "at": start}
                for d in batch
                if d["email_message_ids"]
            ]
            if keyed:
                await threads.insert_many(keyed)
        print(f"loaded {args.incidents} incidents in {time.perf_counter() - started:.0f} s", flush=True)
        rng = random.Random(7)
        picks = [(n - n % 4 + 1) for n in (rng.randrange(args.incidents - 4) for _ in range(args.samples))]

        def tenant(n: int) -> str:
            return f"tenant-{n % args.tenants:03d}"

        async def array_query(i: int) -> None:
            n = picks[i]
            query = {"tenant_id": tenant(n), "email_message_ids": {"$in": ["<unknown@mail.example>", message_id(n)]}}
            assert await incidents.find_one(query, HIDDEN) is not None

        async def keyed_lookup(i: int) -> None:
            n = picks[i]
            keys = [f"{tenant(n)}:<unknown@mail.example>", f"{tenant(n)}:{message_id(n)}"]
            found = None
            for key in keys:
                found = await threads.find_one({"_id": key})
                if found is not None:
                    break
            assert found is not None
            document = await incidents.find_one({"_id": found["incident_id"]}, HIDDEN)
            assert document is not None and document["tenant_id"] == tenant(n)

        before = await p50(args.samples, array_query)
        after = await p50(args.samples, keyed_lookup)
        print(f"{'email thread lookup, p50':<40} {'before (array)':>15} {'after (keyed)':>15} {'before/after':>13}")
        size = f"{args.incidents} incidents, {args.tenants} tenants"
        print(f"{size:<40} {before:>12.1f} ms {after:>12.1f} ms {before / after:>12.1f}x")
        print(f"load average: {' '.join(f'{x:.1f}' for x in os.getloadavg())}")
    finally:
        await client.drop_database(database.name)
        await client.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--incidents", type=int, default=100_000)
    parser.add_argument("--tenants", type=int, default=20)
    parser.add_argument("--samples", type=int, default=21)
    args = parser.parse_args()
    url = os.environ.get("AFTERCARE_BENCH_MONGO_URL")
    if url:
        asyncio.run(run(url, args))
        return
    with tempfile.TemporaryDirectory(prefix="bench-threads-") as workdir:
        store = StoreNode(data_dir=Path(workdir) / "store", port=free_port())
        store.start()
        try:
            asyncio.run(run(store.url, args))
        finally:
            store.stop()


if __name__ == "__main__":
    main()
