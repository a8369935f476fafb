"""One OS process of a store race: many concurrent writes of one kind against one document.

    python store_racer.py --mongo-url URL --database DB --race inc|move|allocate|push|pull-all|
        insert-unique|upsert-unique --worker NAME --count N

Written against the PyMongo driver API only, so the same race runs unchanged on MongoDB. The
process connects, prints ``READY`` and waits for a line ``GO`` on stdin (so that both racing
processes start their writes together), then issues all ``N`` writes at once and prints one
JSON line with what the store answered to each of them, then exits.

Races (collection ``race``):
* ``inc``: ``$inc`` of ``count`` on ``{_id: "counter"}``; reports each ``modified_count``;
* ``move``: ``update_one({_id: "incident", status: "reported"}, {$set: {status:
  "acknowledged", acknowledged_by: <worker-i>}})``; reports each ``modified_count``;
* ``allocate``: ``find_one_and_update({_id: "sequence"}, {$inc: {value: 1}}, upsert=True,
  return_document=AFTER)``, a counter allocation; reports each allocated value;
* ``push``: ``$push`` of ``<worker-i>`` onto ``entries`` of ``{_id: "thread"}``;
* ``pull-all``: ``$pullAll`` of ``[<worker-i>]`` from ``entries`` of ``{_id: "thread"}``,
  plus ``$inc`` of ``pulls``;
* ``insert-unique``: ``insert_one({key: "same", by: <worker-i>})`` into a collection with a
  unique index on ``key``; reports ``inserted`` or ``duplicate`` for each;
* ``upsert-unique``: ``update_one({key: "same"}, {$inc: {count: 1}}, upsert=True)`` on that
  collection; reports ``upserted`` or ``matched`` for each.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from typing import Any

from pymongo import AsyncMongoClient, ReturnDocument
from pymongo.asynchronous.collection import AsyncCollection
from pymongo.errors import DuplicateKeyError


async def one_write(race: str, collection: AsyncCollection[dict[str, Any]], tag: str) -> Any:
    if race == "inc":
        return (await collection.update_one({"_id": "counter"}, {"$inc": {"count": 1}})).modified_count
    if race == "move":
        moved = await collection.update_one(
            {"_id": "incident", "status": "reported"},
            {"$set": {"status": "acknowledged", "acknowledged_by": tag}},
        )
        return moved.modified_count
    if race == "allocate":
        allocated = await collection.find_one_and_update(
            {"_id": "sequence"}, {"$inc": {"value": 1}}, upsert=True, return_document=ReturnDocument.AFTER
        )
        return allocated["value"]
    if race == "push":
        return (await collection.update_one({"_id": "thread"}, {"$push": {"entries": tag}})).modified_count
    if race == "pull-all":
        pulled = await collection.update_one({"_id": "thread"}, {"$pullAll": {"entries": [tag]}, "$inc": {"pulls": 1}})
        return pulled.modified_count
    if race == "insert-unique":
        try:
            await collection.insert_one({"key": "same", "by": tag})
        except DuplicateKeyError:
            return "duplicate"
        return "inserted"
    if race == "upsert-unique":
        upserted = await collection.update_one({"key": "same"}, {"$inc": {"count": 1}}, upsert=True)
        return "upserted" if upserted.upserted_id is not None else "matched"
    raise ValueError(f"unknown race {race!r}")


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--mongo-url", required=True)
    parser.add_argument("--database", required=True)
    parser.add_argument("--race", required=True)
    parser.add_argument("--worker", required=True)
    parser.add_argument("--count", type=int, required=True)
    args = parser.parse_args()
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(args.mongo_url, maxPoolSize=args.count)
    try:
        collection = client[args.database]["race"]
        await client.admin.command("ping")
        print("READY", flush=True)
        line = await asyncio.to_thread(sys.stdin.readline)
        if line.strip() != "GO":
            raise SystemExit(f"expected GO on stdin, got {line!r}")
        tags = [f"{args.worker}-{i}" for i in range(args.count)]
        answers = await asyncio.gather(*(one_write(args.race, collection, tag) for tag in tags))
        print(json.dumps({"worker": args.worker, "answers": answers}), flush=True)
    finally:
        await client.close()


if __name__ == "__main__":
    asyncio.run(main())
