"""Hot-path lookups at 100,000 incidents, with and without the store's index-pushdown patch.

    uv run python bench/store_index_lookups.py [--incidents 100000] [--tenants 20] [--samples 21]

Builds (once, cached) the store twice: with every FERRETDB_PATCHES entry of
``infra/localinfra.py``, and with every entry but ``index-pushdown`` (equalities on indexed
fields answered from SQLite indexes). Loads each with the same incidents, spread evenly over
``--tenants`` tenants, with intake's indexes, and times intake's queries (the same filters,
projections and sorts as intake's incident store; run through the driver, not through HTTP):

* get by id: ``find_one({_id})``, the one lookup indexed before the patch (the reference);
* get_by_number: ``find_one({tenant_id, number})``;
* e-mail thread: ``find_one({tenant_id, email_message_ids: {$in: [...]}})``;
* incident list: a tenant's ``GET /v1/incidents?limit=10``: ``count_documents({tenant_id})``
  and ``find({tenant_id}).sort(created_at desc, _id).limit(10)``.

Prints the median (p50) of ``--samples`` runs of each, before and after, and before/after.
"""

from __future__ import annotations

import argparse
import asyncio
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
from pymongo.asynchronous.collection import AsyncCollection

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT / "infra"))

from localinfra import FERRETDB_PATCHES, StoreNode, free_port  # noqa: E402

Collection = AsyncCollection[dict[str, Any]]
HIDDEN = {"outbox": 0, "applied_events": 0}


def incident(n: int, tenants: int, start: datetime) -> dict[str, Any]:
    tenant = f"tenant-{n % tenants:03d}"
    number = n // tenants + 1
    return {
        "_id": f"inc-{n:07d}",
        "tenant_id": tenant,
        "number": f"INC-{number}",
        "title": f"Checkout is slow for customers in region {n % 7}",
        "description": "Customers report that the checkout page takes more than ten seconds. " * 4,
        "status": ("reported", "acknowledged", "resolved", "closed")[n % 4],
        "priority": f"P{n % 5 + 1}",
        "channel": ("api", "email", "alertmanager", "phone")[n % 4],
        "dedup_key": f"fingerprint-{n}",
        "occurrence_count": 1,
        "email_message_ids": [f"<{n}.thread@mail.example>"] if n % 4 == 1 else [],
        "created_at": start + timedelta(seconds=n),
        "timeline": [{"at": start + timedelta(seconds=n), "kind": "reported", "summary": "Reported through the API"}],
        "outbox": [],
        "applied_events": [],
    }


async def load(coll: Collection, incidents: int, tenants: int) -> None:
    # intake's indexes (incident store: ensure_indexes)
    await coll.create_index([("tenant_id", ASCENDING), ("number", ASCENDING)], unique=True)
    await coll.create_index([("tenant_id", ASCENDING), ("created_at", DESCENDING)])
    await coll.create_index([("tenant_id", ASCENDING), ("status", ASCENDING)])
    await coll.create_index("email_message_ids")
    start = datetime(2026, 1, 1, tzinfo=UTC)
    batch = 2000
    for first in range(0, incidents, batch):
        await coll.insert_many([incident(n, tenants, start) for n in range(first, min(first + batch, incidents))])


async def p50(samples: int, query: Callable[[int], Awaitable[Any]]) -> float:
    timings = []
    for i in range(samples):
        started = time.perf_counter()
        await query(i)
        timings.append(time.perf_counter() - started)
    return statistics.median(timings) * 1000


async def measure(url: str, args: argparse.Namespace) -> dict[str, float]:
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(url)
    coll = client["bench"]["incidents"]
    try:
        started = time.perf_counter()
        await load(coll, args.incidents, args.tenants)
        print(f"  loaded {args.incidents} incidents in {time.perf_counter() - started:.0f} s", flush=True)
        rng = random.Random(7)
        picks = [rng.randrange(args.incidents) for _ in range(args.samples)]
        email_picks = [n - n % 4 + 1 for n in picks]

        async def by_id(i: int) -> None:
            assert await coll.find_one({"_id": f"inc-{picks[i]:07d}"}, HIDDEN) is not None

        async def by_number(i: int) -> None:
            n = picks[i]
            query = {"tenant_id": f"tenant-{n % args.tenants:03d}", "number": f"INC-{n // args.tenants + 1}"}
            assert await coll.find_one(query, HIDDEN) is not None

        async def email_thread(i: int) -> None:
            n = email_picks[i]
            query = {
                "tenant_id": f"tenant-{n % args.tenants:03d}",
                "email_message_ids": {"$in": [f"<{n}.thread@mail.example>", "<unknown@mail.example>"]},
            }
            assert await coll.find_one(query, HIDDEN) is not None

        async def by_id_and_field(i: int) -> None:
            # A write guarded by a revision, or a document of one tenant: _id beside another field.
            n = picks[i]
            query = {"_id": f"inc-{n:07d}", "tenant_id": f"tenant-{n % args.tenants:03d}"}
            assert await coll.find_one(query, HIDDEN) is not None

        async def ids_in(i: int) -> None:
            # The consumer runner's processed-event check: a batch's ids in one $in.
            ids = [f"inc-{(picks[i] + k) % args.incidents:07d}" for k in range(5)]
            assert len(await coll.find({"_id": {"$in": ids}}, HIDDEN).to_list()) == 5

        async def incident_list(i: int) -> None:
            query = {"tenant_id": f"tenant-{picks[i] % args.tenants:03d}"}
            total = await coll.count_documents(query)
            page = await (
                coll.find(query, {**HIDDEN, "timeline": 0})
                .sort([("created_at", DESCENDING), ("_id", ASCENDING)])
                .limit(10)
                .to_list()
            )
            assert total == args.incidents // args.tenants and len(page) == 10

        return {
            "get by id (reference)": await p50(args.samples, by_id),
            "get_by_number": await p50(args.samples, by_number),
            "_id and tenant_id": await p50(args.samples, by_id_and_field),
            "_id $in of 5": await p50(args.samples, ids_in),
            "e-mail thread lookup": await p50(args.samples, email_thread),
            "incident list (count + page of 10)": await p50(args.samples, incident_list),
        }
    finally:
        await client.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--incidents", type=int, default=100_000)
    parser.add_argument("--tenants", type=int, default=20)
    parser.add_argument("--samples", type=int, default=21)
    args = parser.parse_args()
    variants = {
        "before": tuple(name for name in FERRETDB_PATCHES if name != "index-pushdown"),
        "after": None,
    }
    results: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory(prefix="bench-store-") as base:
        for label, patches in variants.items():
            print(f"{label}: store with patches {patches or tuple(FERRETDB_PATCHES)}", flush=True)
            store = StoreNode(data_dir=Path(base) / label, port=free_port(), patches=patches)
            store.start()
            try:
                results[label] = asyncio.run(measure(store.url, args))
            finally:
                store.stop()
    per_tenant = args.incidents // args.tenants
    print(f"\n{args.incidents} incidents over {args.tenants} tenants ({per_tenant} each); p50 of {args.samples} runs\n")
    print(f"{'lookup':36} {'before ms':>10} {'after ms':>10} {'before/after':>13}")
    for name, before in results["before"].items():
        after = results["after"][name]
        print(f"{name:36} {before:10.1f} {after:10.1f} {before / after:13.1f}")


if __name__ == "__main__":
    main()
