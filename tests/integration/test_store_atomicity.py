"""Concurrent writes of one document from two OS processes stay atomic in the store.

Each race runs ``store_racer.py`` in two processes that issue their writes at the same moment
(see its docstring). Only the driver API is used, so these hold on MongoDB as they do on the
embedded FerretDB, whose build patch serialises each collection's read-modify-write
(``infra/ferretdb/_overlay/internal/handler/aftercare_write_lock.go``); without that patch
200 concurrent ``$inc`` ended near 20.
"""

from __future__ import annotations

import asyncio
import json
import sys
from collections import Counter
from pathlib import Path
from typing import Any

from pymongo.asynchronous.database import AsyncDatabase

from kafka_helpers import Infrastructure

STORE_RACER = Path(__file__).with_name("store_racer.py")
PER_PROCESS = 100
START_TIMEOUT_S = 30.0
RACE_TIMEOUT_S = 120.0


async def race_from_two_processes(
    infrastructure: Infrastructure, database: str, race: str, per_process: int = PER_PROCESS
) -> list[Any]:
    """Run ``race`` from two processes, ``per_process`` writes each; every answer of both."""
    processes = [
        await asyncio.create_subprocess_exec(
            sys.executable,
            str(STORE_RACER),
            "--mongo-url",
            infrastructure.mongo_url,
            "--database",
            database,
            "--race",
            race,
            "--worker",
            worker,
            "--count",
            str(per_process),
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
        )
        for worker in ("a", "b")
    ]
    try:
        for process in processes:
            assert process.stdout is not None
            ready = await asyncio.wait_for(process.stdout.readline(), START_TIMEOUT_S)
            assert ready.strip() == b"READY", ready
        for process in processes:
            assert process.stdin is not None
            process.stdin.write(b"GO\n")
            await process.stdin.drain()
        answers: list[Any] = []
        for process in processes:
            assert process.stdout is not None
            report = await asyncio.wait_for(process.stdout.readline(), RACE_TIMEOUT_S)
            assert await asyncio.wait_for(process.wait(), RACE_TIMEOUT_S) == 0
            answers.extend(json.loads(report)["answers"])
        return answers
    finally:
        for process in processes:
            if process.returncode is None:
                process.kill()
                await process.wait()


async def test_two_processes_incrementing_one_counter_lose_no_increment(
    infrastructure: Infrastructure, mongo_db: AsyncDatabase[dict[str, Any]]
) -> None:
    await mongo_db.race.insert_one({"_id": "counter", "count": 0})

    answers = await race_from_two_processes(infrastructure, mongo_db.name, "inc")

    assert answers == [1] * 2 * PER_PROCESS
    assert await mongo_db.race.find_one({"_id": "counter"}) == {"_id": "counter", "count": 2 * PER_PROCESS}


async def test_exactly_one_of_many_conditional_moves_succeeds(
    infrastructure: Infrastructure, mongo_db: AsyncDatabase[dict[str, Any]]
) -> None:
    await mongo_db.race.insert_one({"_id": "incident", "status": "reported"})

    answers = await race_from_two_processes(infrastructure, mongo_db.name, "move", per_process=25)

    assert sorted(answers) == [0] * 49 + [1]
    incident = await mongo_db.race.find_one({"_id": "incident"})
    assert incident is not None
    assert incident["status"] == "acknowledged"
    assert incident["acknowledged_by"][0] in "ab"


async def test_counter_allocations_with_upsert_hand_out_distinct_values(
    infrastructure: Infrastructure, mongo_db: AsyncDatabase[dict[str, Any]]
) -> None:
    # No sequence document yet: the first allocations race to create it (upsert).
    answers = await race_from_two_processes(infrastructure, mongo_db.name, "allocate")

    assert sorted(answers) == list(range(1, 2 * PER_PROCESS + 1))
    assert await mongo_db.race.find_one({"_id": "sequence"}) == {"_id": "sequence", "value": 2 * PER_PROCESS}


async def test_concurrent_pushes_onto_one_array_keep_every_entry(
    infrastructure: Infrastructure, mongo_db: AsyncDatabase[dict[str, Any]]
) -> None:
    await mongo_db.race.insert_one({"_id": "thread", "entries": []})

    await race_from_two_processes(infrastructure, mongo_db.name, "push")

    thread = await mongo_db.race.find_one({"_id": "thread"})
    assert thread is not None
    expected = {f"{worker}-{i}" for worker in "ab" for i in range(PER_PROCESS)}
    assert len(thread["entries"]) == 2 * PER_PROCESS
    assert set(thread["entries"]) == expected


async def test_concurrent_pull_alls_from_one_array_each_remove_their_entry(
    infrastructure: Infrastructure, mongo_db: AsyncDatabase[dict[str, Any]]
) -> None:
    entries = [f"{worker}-{i}" for worker in "ab" for i in range(PER_PROCESS)] + ["kept"]
    await mongo_db.race.insert_one({"_id": "thread", "entries": entries, "pulls": 0})

    answers = await race_from_two_processes(infrastructure, mongo_db.name, "pull-all")

    assert answers == [1] * 2 * PER_PROCESS
    assert await mongo_db.race.find_one({"_id": "thread"}) == {
        "_id": "thread",
        "entries": ["kept"],
        "pulls": 2 * PER_PROCESS,
    }


async def test_racing_inserts_of_one_unique_key_store_it_once(
    infrastructure: Infrastructure, mongo_db: AsyncDatabase[dict[str, Any]]
) -> None:
    await mongo_db.race.create_index("key", unique=True)

    answers = await race_from_two_processes(infrastructure, mongo_db.name, "insert-unique", per_process=50)

    assert Counter(answers) == {"inserted": 1, "duplicate": 99}
    assert await mongo_db.race.count_documents({"key": "same"}) == 1


async def test_racing_upserts_of_one_unique_key_create_one_document_and_count_every_write(
    infrastructure: Infrastructure, mongo_db: AsyncDatabase[dict[str, Any]]
) -> None:
    await mongo_db.race.create_index("key", unique=True)

    answers = await race_from_two_processes(infrastructure, mongo_db.name, "upsert-unique")

    assert Counter(answers) == {"upserted": 1, "matched": 2 * PER_PROCESS - 1}
    stored = await mongo_db.race.find({"key": "same"}, {"_id": 0}).to_list()
    assert stored == [{"key": "same", "count": 2 * PER_PROCESS}]
