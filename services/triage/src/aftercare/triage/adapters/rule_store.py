"""Triage rules in the store: the current rules, every version of each, who changed it and when.

``rules``: ``_id`` is the rule's name; ``spec``, ``version``, ``deleted``, ``changed_by``, ``changed_at``.
``rule_versions``: ``_id`` ``<name>|<version>``, one document per change, never rewritten.
``rule_meta``: ``_id`` ``ruleset`` with a ``revision`` every change bumps, so each triage process
reloads its cached rule set when (and only when) something changed.
"""

from __future__ import annotations

import asyncio
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import yaml
from pymongo.asynchronous.collection import AsyncCollection
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import DuplicateKeyError

from aftercare.triage.domain.rules import Rule, RuleSet, RuleSpec


class RuleConflict(Exception):
    """The rule changed since the version the caller read (or exists / does not)."""


class RuleStore:
    def __init__(self, database: AsyncDatabase[dict[str, Any]]) -> None:
        self.rules: AsyncCollection[dict[str, Any]] = database["rules"]
        self.versions: AsyncCollection[dict[str, Any]] = database["rule_versions"]
        self.meta: AsyncCollection[dict[str, Any]] = database["rule_meta"]

    async def revision(self) -> int:
        document = await self.meta.find_one({"_id": "ruleset"})
        return int(document["revision"]) if document else 0

    async def _bump(self) -> None:
        await self.meta.update_one({"_id": "ruleset"}, {"$inc": {"revision": 1}}, upsert=True)

    async def seed(self, specs: list[RuleSpec], now: datetime) -> bool:
        """Load the shipped rules once per database; False if it was seeded before.

        The rules are written before the mark that says so: a process killed in between seeds
        again at its next start (a rule already written is a conflict, skipped), where marking
        first left a database with no rules for good.
        """
        if await self.meta.find_one({"_id": "seeded"}) is not None:
            return False
        for spec in specs:
            try:
                await self.write(spec, by="seed", now=now, expect_version=0, action="seeded")
            except RuleConflict:
                continue
        try:
            await self.meta.insert_one({"_id": "seeded", "at": now, "rules": len(specs)})
        except DuplicateKeyError:
            return False  # another instance seeded at the same moment
        return True

    async def all(self, include_deleted: bool = False) -> list[dict[str, Any]]:
        query: dict[str, Any] = {} if include_deleted else {"deleted": False}
        return [document async for document in self.rules.find(query).sort("_id", 1)]

    async def get(self, name: str) -> dict[str, Any] | None:
        return await self.rules.find_one({"_id": name})

    async def history(self, name: str) -> list[dict[str, Any]]:
        current = await self.get(name)
        if current is None:
            return []
        found = []
        for version in range(1, int(current["version"]) + 1):
            document = await self.versions.find_one({"_id": f"{name}|{version}"})
            if document is not None:
                found.append(document)
        return found

    async def write(
        self,
        spec: RuleSpec | None,
        *,
        name: str | None = None,
        by: str,
        now: datetime,
        expect_version: int | None,
        action: str,
    ) -> dict[str, Any]:
        """Create (expect_version 0), change or delete (spec None) a rule as a new version."""
        rule_name = spec.name if spec is not None else name
        assert rule_name is not None
        current = await self.get(rule_name)
        version = int(current["version"]) if current else 0
        live = current is not None and not current.get("deleted", False)
        if expect_version == 0 and live:
            raise RuleConflict(f"a rule named {rule_name!r} exists already (version {version}); change it with PUT")
        if expect_version not in (None, 0) and expect_version != version:
            raise RuleConflict(f"rule {rule_name!r} is at version {version}, not {expect_version}; read it again")
        if expect_version is None and not live:
            raise RuleConflict(f"no rule named {rule_name!r}")
        new_version = version + 1
        document = {
            "_id": rule_name,
            "spec": spec.model_dump(mode="json") if spec is not None else (current or {}).get("spec"),
            "version": new_version,
            "deleted": spec is None,
            "changed_by": by,
            "changed_at": now,
            "action": action,
        }
        try:
            await self.versions.insert_one({**document, "_id": f"{rule_name}|{new_version}", "name": rule_name})
        except DuplicateKeyError:
            raise RuleConflict(f"rule {rule_name!r} was changed at the same moment; read it again") from None
        await self.rules.replace_one({"_id": rule_name}, document, upsert=True)
        await self._bump()
        return document


def stored_rule(document: dict[str, Any]) -> Rule:
    return Rule(RuleSpec.model_validate(document["spec"]), int(document["version"]))


def load_seed_file(path: Path) -> list[RuleSpec]:
    documents = yaml.safe_load(path.read_text()) or []
    if isinstance(documents, dict):
        documents = documents.get("rules", [])
    return [RuleSpec.model_validate(document) for document in documents]


class RuleBook:
    """The rule set every triage decision uses, reloaded when the stored revision moves."""

    def __init__(self, store: RuleStore, check_every_s: float = 1.0) -> None:
        self.store = store
        self._rules = RuleSet([])
        self._revision = -1
        self._checked = 0.0
        self._check_every_s = check_every_s
        self._loading = asyncio.Lock()

    async def current(self) -> RuleSet:
        """The rule set as stored at most ``check_every_s`` ago.

        Incidents are triaged concurrently: while one caller reads the store, the others wait for
        that read instead of taking the rules held so far, which right after a start are none
        (a restarted triage decided its first reports with no rule at all: no runbook, so their
        remediation never started).
        """
        if self._fresh():
            return self._rules
        async with self._loading:
            if not self._fresh():  # not refreshed by the caller this one waited for
                revision = await self.store.revision()
                if revision != self._revision:
                    documents = await self.store.all()
                    self._rules = RuleSet([stored_rule(document) for document in documents])
                    self._revision = revision
                self._checked = time.monotonic()
        return self._rules

    def _fresh(self) -> bool:
        return self._revision >= 0 and time.monotonic() - self._checked < self._check_every_s

    def invalidate(self) -> None:
        self._checked = 0.0
