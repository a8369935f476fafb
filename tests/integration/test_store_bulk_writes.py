"""A bulk write of many updates completes, and the database answers others after it.

FerretDB 1.24 kept every statement's query of an update command open until the command ended;
past ~100 matching statements (its connections per database) the command waited forever for a
free connection and that database hung for good. The store's build patch
``update-closes-each-statement`` (``infra/localinfra.py``) closes each one when it is done.
Only the driver API is used: this holds on MongoDB too.
"""

from __future__ import annotations

import asyncio
from typing import Any

from pymongo import UpdateOne
from pymongo.asynchronous.database import AsyncDatabase

# Well past the 100 connections per database that one command used to take.
STATEMENTS = 250
BOUND_S = 120.0  # a hang fails here, with this message, not at pytest's timeout


async def test_a_bulk_write_of_hundreds_of_matching_updates_completes(
    mongo_db: AsyncDatabase[dict[str, Any]],
) -> None:
    deliveries = mongo_db.deliveries
    await deliveries.insert_many([{"_id": f"event-{i}", "count": 1} for i in range(STATEMENTS)])

    counted = await asyncio.wait_for(
        deliveries.bulk_write(
            [UpdateOne({"_id": f"event-{i}"}, {"$inc": {"count": 1}}, upsert=True) for i in range(STATEMENTS)]
            + [UpdateOne({"_id": "event-new"}, {"$inc": {"count": 1}}, upsert=True)],
            ordered=False,
        ),
        timeout=BOUND_S,
    )

    assert (counted.matched_count, counted.modified_count, counted.upserted_count) == (STATEMENTS, STATEMENTS, 1)
    # The database still answers: nothing is left holding its connections.
    twice = await asyncio.wait_for(deliveries.count_documents({"count": 2}), timeout=BOUND_S)
    assert twice == STATEMENTS
