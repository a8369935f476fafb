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
from aftercare.triage.adapters.rule_store import load_seed_file
from aftercare.triage.components import DEFAULT_RULES
from aftercare.triage.domain.rules import Facts, Rule, RuleSet, RuleSpec, check_pattern, required_literal
from aftercare.triage.domain.words import Words, _word_matches, words_of
from aftercare.triage.evaluation import load

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


def _rule(name: str, when: dict[str, Any], order: int = 100) -> Rule:
    return Rule(RuleSpec.model_validate({"name": name, "order": order, "when": when, "then": {"runbook": name}}))


# Rules that stress the index: typo-tolerant first words, several phrases, all/none, a phrase of no
# words, regexes with and without required letters, conditions on channel, severity and source.
INDEX_RULES = [
    _rule("any-two", {"text": {"any": ["database down", "too many connections"]}}),
    _rule("all-two", {"text": {"all": ["disk", "full"]}}),
    _rule("all-and-any", {"text": {"all": ["password"], "any": ["reset", "expired"]}}),
    _rule("none-only", {"text": {"none": ["test"]}}),
    _rule("no-words", {"text": {"any": ["!!!", "vpn"]}}),
    _rule("all-no-words", {"text": {"all": ["...", "vpn"]}}),
    _rule("regex-literal", {"text": {"regex": r"ORA-\d{5}"}}),
    _rule("regex-none", {"text": {"regex": r"\d{3} (error|failure)"}}),
    _rule("regex-and-any", {"text": {"any": ["timeout"], "regex": r"after \d+ ?s"}}),
    _rule("email-only", {"channel": ["email"], "text": {"any": ["slow"]}}),
    _rule("critical-alerts", {"severity": ["critical"], "channel": ["alertmanager"]}),
    _rule("source-glob", {"source": "db-*"}),
    _rule("always", {}),
    _rule("accents", {"text": {"any": ["réseau lent", "authentication"]}}),
] + [Rule(spec) for spec in load_seed_file(DEFAULT_RULES)]

INDEX_TEXTS = [
    "The databse is down since 9",
    "datbase down, too many connectoins",
    "Disk full on fs1",
    "dsik full?",
    "password reset please",
    "passwort expired",
    "VPN !!! keeps dropping",
    "ORA-00060 deadlock detected",
    "ora-12345",
    "ÖRA-12345 with umlaut",
    "got 503 error twice",
    "timeout after 30s",
    "timeout after thirty seconds",
    "crm is very slow",
    "a test of nothing",
    "Reseau lent au bureau",
    "authentification failed for all users",
    "",
] + [example.text for example in load()[::3]]


def test_the_rule_index_leaves_out_only_rules_that_would_not_match() -> None:
    rules = RuleSet(INDEX_RULES)
    checked = 0
    for text in INDEX_TEXTS:
        for channel, severity, source in (
            ("email", "error", None),
            ("alertmanager", "critical", "db-7"),
            ("web", "info", "x"),
        ):
            facts = Facts("acme", channel, severity, text, "", source, None, {})
            words = Words(words_of(facts.text))
            every_rule = [found for compiled in rules.rules if (found := compiled.match(facts, words)) is not None]
            candidates = rules.index.candidates(facts, Words(words_of(facts.text)))
            assert {found.rule.name for found in every_rule} <= {rules.rules[i].rule.name for i in candidates}, text
            assert [(m.rule.name, m.matched) for m in rules.matches(facts)] == [
                (m.rule.name, m.matched) for m in every_rule
            ]
            checked += len(every_rule)
    assert checked > 100, "the texts match rules often enough for the comparison to mean something"
    # And it does leave rules out: a report of no words only meets the rules no word gates.
    empty = Facts("acme", "web", "info", "", "", None, None, {})
    assert len(rules.index.candidates(empty, Words([]))) < len(rules) / 2
