"""The store's CPU per written document, with and without the store's per-statement patch.

    uv run python bench/store_cpu_per_write.py [--documents 3000] [--rounds 3]

Builds (once, cached) the store twice: with every FERRETDB_PATCHES entry of
``infra/localinfra.py``, and with every entry but ``no-per-statement-bookkeeping`` (FerretDB's
debug-log formatting with debug off, and its leak tracking of connections and rows). On each, 8
concurrent writers do what a service does with an incident: insert a 3 KB document, update it
by ``_id``, read it back. Prints the store process's CPU (user + system, from /proc) per
insert+update+read and the wall time, alternating the two builds ``--rounds`` times (the machine
is shared: compare the pairs, and the medians).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

from pymongo import AsyncMongoClient

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT / "infra"))

from localinfra import FERRETDB_PATCHES, StoreNode, free_port  # noqa: E402

PATCH = "no-per-statement-bookkeeping"
WRITERS = 8


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def workload(url: str, pid: int, documents: int) -> tuple[float, float]:
    """(store CPU ms per insert+update+read, wall seconds)."""
    client: AsyncMongoClient[dict[str, object]] = AsyncMongoClient(url, serverSelectionTimeoutMS=20000)
    try:
        incidents = client["bench"]["incidents"]
        await incidents.create_index([("tenant_id", 1), ("status", 1)])
        started_cpu, started = cpu_seconds(pid), time.perf_counter()

        async def writer(first: int) -> None:
            for n in range(first, documents, WRITERS):
                document = {
                    "_id": f"inc-{n}",
                    "tenant_id": f"tenant-{n % 5}",
                    "status": "reported",
                    "description": "Checkout takes more than ten seconds for customers. " * 50,
                    "entries": [{"kind": "note", "text": "Customer called again. " * 8}] * 5,
                }
                await incidents.insert_one(document)
                await incidents.update_one({"_id": document["_id"]}, {"$set": {"status": "triaged", "priority": "P2"}})
                await incidents.find_one({"_id": document["_id"]})

        await asyncio.gather(*(writer(first) for first in range(WRITERS)))
        return (cpu_seconds(pid) - started_cpu) / documents * 1000, time.perf_counter() - started
    finally:
        await client.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--documents", type=int, default=3000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    variants = {
        "without": tuple(name for name in FERRETDB_PATCHES if name != PATCH),
        "with": tuple(FERRETDB_PATCHES),
    }
    results: dict[str, list[tuple[float, float]]] = {label: [] for label in variants}
    print(f"machine load average at start: {os.getloadavg()[0]:.1f}")
    with tempfile.TemporaryDirectory(prefix="store-cpu-") as base:
        for round_number in range(args.rounds):
            for label, patches in variants.items():
                store = StoreNode(data_dir=Path(base) / f"{label}-{round_number}", port=free_port(), patches=patches)
                store.start()
                try:
                    assert store.process is not None
                    cpu_ms, wall = asyncio.run(workload(store.url, store.process.pid, args.documents))
                finally:
                    store.stop()
                results[label].append((cpu_ms, wall))
                print(f"round {round_number + 1}, {label:7} {PATCH}: store CPU {cpu_ms:.2f} ms, wall {wall:.1f} s")
    without = statistics.median(cpu for cpu, _ in results["without"])
    with_patch = statistics.median(cpu for cpu, _ in results["with"])
    print(
        f"\nmedian store CPU per insert+update+read: without {without:.2f} ms, with {with_patch:.2f} ms;"
        f" with/without = {with_patch / without:.2f}  (load average at the end {os.getloadavg()[0]:.1f})"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
