"""The shortcuts that make triage fast decide as the long way does: a regex rule skipped for
lacking its required letters could not have matched, the word index finds what comparing every
word finds, and store calls of side-by-side incidents share a round trip yet keep their own
outcomes."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from pymongo import InsertOne
from pymongo.errors import BulkWriteError, DuplicateKeyError

from aftercare.triage.adapters.batching import BatchedCollection
from aftercare.triage.domain.rules import check_pattern, required_literal
from aftercare.triage.domain.words import Words, _word_matches, words_of

PATTERNS = [
    r"ERR-\d{4}",
    r"\bORA-\d{5}\b",
    r"disk\s+full",
    r"db (down|up)",
    r"(?x) time out",
    r"(?:disk full){e<=2}",  # the regex package's fuzzy matching: braces the standard parser reads as letters
    r"(?:database){e<=1} down",
    r"\p{Lu}{3} failed",
    r"timeout|deadlock",
]
TEXTS = [
    "err-1234 in the log",
    "ERR-12 only",
    "ora-00060 deadlock detected",
    "Disk \t FULL on fs1",
    "dsk full on fs2",
    "DB UP again",
    "timeout",
    "databse down since 9",
    "ABC failed",
    "deadlock",
]


@pytest.mark.parametrize("pattern", PATTERNS)
def test_every_text_a_pattern_matches_holds_its_required_letters(pattern: str) -> None:
    compiled = check_pattern(pattern)
    required = required_literal(pattern)
    matched = [text for text in TEXTS if compiled.search(text)]
    assert matched, "each pattern matches some text here, or the test proves nothing"
    for text in matched:
        assert required is None or required in text.lower(), (pattern, required, text)


def test_plain_patterns_get_a_shortcut() -> None:
    assert required_literal(r"ERR-\d{4}") == "err-"
    assert required_literal(r"disk\s+full") == "disk"
    assert required_literal(r"timeout|deadlock") is None


def test_the_word_index_finds_what_comparing_every_word_finds() -> None:
    words = words_of(
        "The databse is down, datbase timeouts, database errors; DB down since monday, Mondays, "
        "authentification failed, authentication fails, réseau lent, reseau"
    )
    text = Words(words)
    for expected in {*words, "database", "timeout", "error", "mondays", "authentication", "xyz", "reseaux"}:
        scanned = frozenset(index for index, seen in enumerate(words) if _word_matches(expected, seen))
        assert text.positions(expected) == scanned, expected


class _Collection:
    """Just enough of a collection: documents by _id, with the calls counted."""

    def __init__(self) -> None:
        self.documents: dict[str, dict[str, Any]] = {"a": {"_id": "a", "n": 1}}
        self.finds = 0
        self.bulk_writes = 0

    def find(self, query: dict[str, Any], projection: Any = None) -> Any:
        self.finds += 1
        wanted = query["_id"]["$in"] if isinstance(query["_id"], dict) else [query["_id"]]
        found = [self.documents[i] for i in wanted if i in self.documents]

        async def documents() -> Any:
            await asyncio.sleep(0)
            for document in found:
                yield document

        return documents()

    async def bulk_write(self, operations: list[Any], ordered: bool) -> None:
        self.bulk_writes += 1
        await asyncio.sleep(0)
        errors = []
        for index, operation in enumerate(operations):
            document = operation._doc
            if document["_id"] in self.documents:
                errors.append({"index": index, "code": 11000, "errmsg": "duplicate key"})
            else:
                self.documents[document["_id"]] = document
        if errors:
            raise BulkWriteError({"writeErrors": errors, "writeConcernErrors": []})


async def test_side_by_side_calls_share_round_trips_and_keep_their_own_outcomes() -> None:
    collection = _Collection()
    batched = BatchedCollection(collection)  # type: ignore[arg-type]

    found = await asyncio.gather(*(batched.find_one(i) for i in ("a", "b", "a")))
    assert found == [{"_id": "a", "n": 1}, None, {"_id": "a", "n": 1}]
    assert collection.finds == 1

    # Twelve incidents claim one group key at once: one insert wins, the others are told it exists.
    outcomes = await asyncio.gather(
        *(batched.write(InsertOne({"_id": "key", "by": n})) for n in range(12)), return_exceptions=True
    )
    winners = [n for n, outcome in enumerate(outcomes) if outcome is None]
    assert len(winners) == 1 and collection.documents["key"]["by"] == winners[0]
    assert all(isinstance(outcome, DuplicateKeyError) for n, outcome in enumerate(outcomes) if n not in winners)
    assert collection.bulk_writes <= 2  # the first call goes alone at once, the rest together
