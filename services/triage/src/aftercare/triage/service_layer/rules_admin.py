"""Use cases: change the rules (versioned, with who), and the dry run that shows what a rule set
would decide for a sample incident or the last real ones, beside what was decided."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from aftercare.events.incidents import Channel, Severity
from aftercare.triage.adapters.rule_store import RuleBook, RuleStore, stored_rule
from aftercare.triage.adapters.store import TenantDirectory, TriageIncidents
from aftercare.triage.domain.decision import Decision, decide
from aftercare.triage.domain.rules import Facts, Rule, RuleSet, RuleSpec
from aftercare.triage.service_layer.triage_incident import facts_of, manual_of


class UnknownTenant(LookupError):
    pass


@dataclass(frozen=True)
class SampleIncident:
    tenant_id: str
    title: str
    description: str = ""
    channel: Channel = Channel.API
    severity: Severity = Severity.ERROR
    source: str | None = None
    system: str | None = None
    labels: dict[str, str] | None = None


def summary(decision: Decision) -> dict[str, Any]:
    return {
        "priority": decision.priority.value,
        "category": decision.category,
        "system": decision.system,
        "runbook": decision.runbook,
        "impact": decision.impact,
        "urgency": decision.urgency,
        "rules_fired": [fired.rule for fired in decision.rules_fired],
        "explanation": decision.explanation,
    }


COMPARED = ("priority", "category", "system", "runbook")


def differences(before: dict[str, Any] | None, after: dict[str, Any]) -> list[str]:
    if before is None:
        return []
    return [f"{key}: {before.get(key)} -> {after.get(key)}" for key in COMPARED if before.get(key) != after.get(key)]


class RulesAdmin:
    def __init__(self, store: RuleStore, book: RuleBook, tenants: TenantDirectory, incidents: TriageIncidents) -> None:
        self.store = store
        self.book = book
        self.tenants = tenants
        self.incidents = incidents

    async def change(
        self, spec: RuleSpec | None, *, name: str | None = None, by: str, expect_version: int | None, action: str
    ) -> dict[str, Any]:
        document = await self.store.write(
            spec, name=name, by=by, now=datetime.now(UTC), expect_version=expect_version, action=action
        )
        self.book.invalidate()
        return document

    async def proposed_set(self, changes: list[RuleSpec], removed: list[str]) -> RuleSet:
        current = {document["_id"]: stored_rule(document) for document in await self.store.all()}
        for name in removed:
            current.pop(name, None)
        for spec in changes:
            version = current[spec.name].version + 1 if spec.name in current else 1
            current[spec.name] = Rule(spec, version)
        return RuleSet(list(current.values()))

    async def dry_run(
        self, *, changes: list[RuleSpec], removed: list[str], sample: SampleIncident | None, last: int
    ) -> list[dict[str, Any]]:
        now_rules = await self.book.current()
        proposed = await self.proposed_set(changes, removed)
        outcomes: list[dict[str, Any]] = []
        if sample is not None:
            tenant = await self.tenants.get(sample.tenant_id)
            if tenant is None:
                raise UnknownTenant(sample.tenant_id)
            facts = Facts(
                tenant_id=sample.tenant_id,
                channel=sample.channel.value,
                severity=sample.severity.value,
                title=sample.title,
                description=sample.description,
                source=sample.source,
                system=sample.system,
                labels=sample.labels or {},
            )
            now = datetime.now(UTC)
            current = summary(decide(facts, tenant, now_rules, reported_at=now))
            after = summary(decide(facts, tenant, proposed, reported_at=now))
            outcomes.append(
                {
                    "incident": "sample",
                    "current_rules": current,
                    "proposed_rules": after,
                    "differences": differences(current, after),
                }
            )
            return outcomes
        for document in await self.incidents.recent(last):
            tenant = await self.tenants.get(document["tenant_id"])
            if tenant is None:
                continue
            facts = facts_of(document)
            after = summary(
                decide(facts, tenant, proposed, reported_at=document["reported_at"], manual=manual_of(document))
            )
            decided = document.get("decision")
            outcomes.append(
                {
                    "incident": document["_id"],
                    "number": document.get("number"),
                    "decided": {key: (decided or {}).get(key) for key in COMPARED} if decided else None,
                    "proposed_rules": after,
                    "differences": differences(decided, after),
                }
            )
        return outcomes
