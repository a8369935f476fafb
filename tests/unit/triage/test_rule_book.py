"""The rule book every triage decision reads: loaded before the first decision, however many
incidents are triaged at once, and seeded even when a start was killed half-way."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import Any

from aftercare.events.testing import MemoryDatabase
from aftercare.triage.adapters.rule_store import RuleBook, RuleStore, load_seed_file
from aftercare.triage.components import DEFAULT_RULES

NOW = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)


class SlowRuleStore(RuleStore):
    """A store whose reads take a moment, as a real one does: concurrent callers overlap."""

    async def revision(self) -> int:
        await asyncio.sleep(0.01)
        return await super().revision()

    async def all(self, include_deleted: bool = False) -> list[dict[str, Any]]:
        await asyncio.sleep(0.01)
        return await super().all(include_deleted)


async def test_incidents_triaged_at_once_right_after_a_start_all_get_the_rules() -> None:
    store = SlowRuleStore(MemoryDatabase())  # type: ignore[arg-type]
    assert await store.seed(load_seed_file(DEFAULT_RULES), NOW)
    book = RuleBook(store)
    # The runner triages up to 16 incidents concurrently; each asks for the rules.
    sets = await asyncio.gather(*(book.current() for _ in range(16)))
    seeded = len(await store.all())
    assert seeded > 0
    assert [len(rules) for rules in sets] == [seeded] * 16


async def test_a_seed_cut_short_before_its_mark_is_finished_at_the_next_start() -> None:
    database = MemoryDatabase()
    store = RuleStore(database)  # type: ignore[arg-type]
    specs = load_seed_file(DEFAULT_RULES)
    # A first start killed after writing two rules, before marking the database seeded.
    for spec in specs[:2]:
        await store.write(spec, by="seed", now=NOW, expect_version=0, action="seeded")
    assert await store.seed(specs, NOW)
    assert len(await store.all()) == len(specs)
    assert not await store.seed(specs, NOW)  # seeded once: an operator's deletions stay deleted
