"""Equality lookups on indexed fields return what MongoDB returns.

The embedded store answers equalities on indexed top-level fields from SQLite indexes (build patch
"index-pushdown" in ``infra/localinfra.py``): only values whose stored form is unique to them are
pushed, and a field that holds an array anywhere is left to the full read, because an equality
also matches an array that contains the value. These tests pin the MongoDB semantics the patch
must keep (they pass unchanged on MongoDB); ``bench/store_index_lookups.py`` measures the speed.
"""

from __future__ import annotations

from typing import Any

import pytest
from bson import Int64, ObjectId
from pymongo.asynchronous.database import AsyncDatabase

OBJECT_ID = ObjectId()

DOCUMENTS: list[dict[str, Any]] = [
    {"_id": 1, "tenant_id": "acme", "number": "INC-1", "tag": "db", "weight": 42, "ref": OBJECT_ID, "open": True},
    {"_id": 2, "tenant_id": "acme", "number": "INC-2", "tag": "web", "weight": Int64(42), "open": False},
    {"_id": 3, "tenant_id": "globex", "number": "INC-1", "tag": "db", "weight": 42.0, "open": True},
    {"_id": 4, "tenant_id": 'odd <&> "é"', "number": "INC-3", "weight": -0.0},
    {"_id": 5, "tenant_id": "acme", "number": "INC-4", "weight": 0, "ref": str(OBJECT_ID)},
    {"_id": 6, "tenant_id": "initech", "number": 7, "weight": 42.5},
    {"_id": 7, "tenant_id": "acme", "number": "INC-5", "tag": None},
]

CASES: list[tuple[str, dict[str, Any], list[int]]] = [
    ("a tenant's documents", {"tenant_id": "acme"}, [1, 2, 5, 7]),
    ("a tenant's document by number", {"tenant_id": "acme", "number": "INC-2"}, [2]),
    ("the same number of another tenant", {"tenant_id": "globex", "number": "INC-1"}, [3]),
    ("no such number", {"tenant_id": "acme", "number": "INC-9"}, []),
    ("characters JSON escapes", {"tenant_id": 'odd <&> "é"'}, [4]),
    ("an integer matches int, long and integral double", {"weight": 42}, [1, 2, 3]),
    ("zero matches minus zero", {"weight": 0}, [4, 5]),
    ("a long", {"weight": Int64(0)}, [4, 5]),
    ("a number where strings are stored", {"number": 7}, [6]),
    ("$eq", {"tenant_id": {"$eq": "globex"}}, [3]),
    ("$in", {"tenant_id": {"$in": ["globex", "initech"]}}, [3, 6]),
    ("$in of numbers", {"weight": {"$in": [0, 42]}}, [1, 2, 3, 4, 5]),
    ("an ObjectId is not its hex string", {"ref": OBJECT_ID}, [1]),
    ("a boolean", {"open": True}, [1, 3]),
    ("null matches missing and null", {"tag": None}, [4, 5, 6, 7]),
    ("_id and a field", {"_id": 3, "tenant_id": "globex"}, [3]),
    ("_id and another tenant", {"_id": 3, "tenant_id": "acme"}, []),
    ("_id $in", {"_id": {"$in": [2, 5, 9]}}, [2, 5]),
    ("_id $in and a field", {"_id": {"$in": [1, 2, 3]}, "tenant_id": "acme"}, [1, 2]),
    ("_id and two fields", {"_id": 1, "tenant_id": "acme", "tag": "db"}, [1]),
    ("an indexed and an unindexed field", {"tenant_id": "acme", "tag": "db"}, [1]),
    ("a range beside an equality", {"tenant_id": "acme", "weight": {"$gte": 1}}, [1, 2]),
]


@pytest.fixture
async def indexed(mongo_db: AsyncDatabase[dict[str, Any]]) -> AsyncDatabase[dict[str, Any]]:
    incidents = mongo_db.incidents
    await incidents.create_index([("tenant_id", 1), ("number", 1)], unique=True)
    for field in ("weight", "ref", "open", "tag"):
        await incidents.create_index(field)
    await incidents.insert_many([dict(d) for d in DOCUMENTS])
    return mongo_db


@pytest.mark.parametrize(("query", "expected"), [(q, e) for _, q, e in CASES], ids=[n for n, _, _ in CASES])
async def test_equality_on_indexed_fields_matches_what_mongodb_matches(
    indexed: AsyncDatabase[dict[str, Any]], query: dict[str, Any], expected: list[int]
) -> None:
    found = sorted([d["_id"] async for d in indexed.incidents.find(query)])
    assert found == expected
    assert await indexed.incidents.count_documents(query) == len(expected)


async def test_an_equality_also_finds_arrays_holding_the_value_once_a_field_holds_arrays(
    indexed: AsyncDatabase[dict[str, Any]],
) -> None:
    assert sorted([d["_id"] async for d in indexed.incidents.find({"tag": "db"})]) == [1, 3]

    await indexed.incidents.update_one({"_id": 2}, {"$set": {"tag": ["web", "db"]}})

    assert sorted([d["_id"] async for d in indexed.incidents.find({"tag": "db"})]) == [1, 2, 3]
    assert sorted([d["_id"] async for d in indexed.incidents.find({"tag": {"$in": ["db"]}})]) == [1, 2, 3]
    assert await indexed.incidents.count_documents({"tag": "web", "tenant_id": "acme"}) == 1


async def test_updates_and_deletes_by_indexed_fields_touch_exactly_the_matching_documents(
    indexed: AsyncDatabase[dict[str, Any]],
) -> None:
    moved = await indexed.incidents.update_many({"tenant_id": "acme", "open": True}, {"$set": {"seen": 1}})
    deleted = await indexed.incidents.delete_many({"weight": 0})

    assert (moved.matched_count, moved.modified_count, deleted.deleted_count) == (1, 1, 2)
    assert [d["_id"] async for d in indexed.incidents.find({"seen": 1})] == [1]
    assert sorted([d["_id"] async for d in indexed.incidents.find({})]) == [1, 2, 3, 6, 7]
