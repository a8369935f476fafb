"""What the embedded store's atomic-writes patch costs: update throughput with and without it.

    uv run python bench/store_atomicity.py [--updates 2000] [--concurrency 100] [--rounds 3]

Builds (once, cached) the store twice: with every FERRETDB_PATCHES entry of
``infra/localinfra.py``, and with every entry but ``atomic-writes`` (the per-collection write
lock that makes single-document read-modify-write atomic). Starts each on a free port in a
temporary directory and measures, in one collection:

(a) sequential: ``--updates`` ``$inc`` on one document, one at a time;
(b) concurrent, one document: the same with ``--concurrency`` in flight (the lost increments are
    printed too: without the lock most of them vanish);
(c) concurrent, many documents: ``--updates`` ``$inc`` spread over 100 documents, by ``_id``
    (the lock serialises these too, though they never conflict: that is its price).

Each figure is the best of ``--rounds`` (the machine is shared; the best round is the least
disturbed), and the ratio with/without the patch is printed for each.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from pymongo import AsyncMongoClient
from pymongo.asynchronous.collection import AsyncCollection

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT / "infra"))

from localinfra import FERRETDB_PATCHES, StoreNode, free_port  # noqa: E402

Collection = AsyncCollection[dict[str, Any]]


async def bounded(concurrency: int, jobs: list[Callable[[], Awaitable[Any]]]) -> None:
    gate = asyncio.Semaphore(concurrency)

    async def run(job: Callable[[], Awaitable[Any]]) -> None:
        async with gate:
            await job()

    await asyncio.gather(*(run(job) for job in jobs))


async def sequential_one_document(coll: Collection, updates: int, _: int) -> tuple[float, str]:
    await coll.insert_one({"_id": "counter", "count": 0})
    started = time.perf_counter()
    for _ in range(updates):
        await coll.update_one({"_id": "counter"}, {"$inc": {"count": 1}})
    elapsed = time.perf_counter() - started
    return updates / elapsed, ""


async def concurrent_one_document(coll: Collection, updates: int, concurrency: int) -> tuple[float, str]:
    await coll.insert_one({"_id": "counter", "count": 0})

    def inc() -> Awaitable[Any]:
        return coll.update_one({"_id": "counter"}, {"$inc": {"count": 1}})

    started = time.perf_counter()
    await bounded(concurrency, [inc] * updates)
    elapsed = time.perf_counter() - started
    document = await coll.find_one({"_id": "counter"})
    assert document is not None
    return updates / elapsed, f"count {document['count']} of {updates}"


async def concurrent_many_documents(coll: Collection, updates: int, concurrency: int) -> tuple[float, str]:
    await coll.insert_many([{"_id": f"doc-{i}", "count": 0} for i in range(100)])
    jobs: list[Callable[[], Awaitable[Any]]] = [
        (lambda i=i: coll.update_one({"_id": f"doc-{i % 100}"}, {"$inc": {"count": 1}})) for i in range(updates)
    ]
    started = time.perf_counter()
    await bounded(concurrency, jobs)
    elapsed = time.perf_counter() - started
    total = sum([d["count"] async for d in coll.find({})])
    return updates / elapsed, f"count {total} of {updates}"


SCENARIOS = {
    "sequential, one document": sequential_one_document,
    "concurrent, one document": concurrent_one_document,
    "concurrent, 100 documents": concurrent_many_documents,
}


async def measure(url: str, args: argparse.Namespace) -> dict[str, tuple[float, str]]:
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(url, maxPoolSize=args.concurrency)
    figures: dict[str, tuple[float, str]] = {}
    try:
        for name, scenario in SCENARIOS.items():
            best: tuple[float, str] = (0.0, "")
            for round_ in range(args.rounds):
                coll = client["bench"][f"c{round_}_{abs(hash(name))}"]
                rate, note = await scenario(coll, args.updates, args.concurrency)
                if rate > best[0]:
                    best = (rate, note)
                await coll.drop()
            figures[name] = best
    finally:
        await client.close()
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--updates", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    variants = {
        "without atomic-writes": tuple(name for name in FERRETDB_PATCHES if name != "atomic-writes"),
        "with atomic-writes": None,
    }
    results: dict[str, dict[str, tuple[float, str]]] = {}
    with tempfile.TemporaryDirectory(prefix="bench-store-") as base:
        for label, patches in variants.items():
            store = StoreNode(data_dir=Path(base) / label.replace(" ", "-"), port=free_port(), patches=patches)
            store.start()
            try:
                results[label] = asyncio.run(measure(store.url, args))
            finally:
                store.stop()
    without, with_ = results["without atomic-writes"], results["with atomic-writes"]
    print(f"\n{args.updates} updates, {args.concurrency} in flight, best of {args.rounds} rounds\n")
    print(f"{'scenario':34} {'without/s':>10} {'with/s':>10} {'with/without':>13}   notes (without | with)")
    for name in SCENARIOS:
        (rate_without, note_without), (rate_with, note_with) = without[name], with_[name]
        print(
            f"{name:34} {rate_without:10.0f} {rate_with:10.0f} {rate_with / rate_without:13.2f}   "
            f"{note_without} | {note_with}"
        )


if __name__ == "__main__":
    main()
