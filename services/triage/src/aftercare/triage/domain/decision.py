"""The triage decision for one incident: category, system, priority, SLA deadlines, runbook, and
the explanation a person can read. Pure: everything it needs is passed in, ``now`` included."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime

from aftercare.events.incidents import Severity
from aftercare.events.tenants import Priority, SupportedSystem, TenantUpserted
from aftercare.events.triage import RuleFired
from aftercare.triage.domain.categories import Category
from aftercare.triage.domain.priority import (
    Level,
    assess_impact,
    assess_urgency,
    priority_for,
    sla_deadlines,
)
from aftercare.triage.domain.rules import Facts, RuleSet
from aftercare.triage.domain.words import Words, read_category, read_system, words_of


@dataclass(frozen=True)
class ManualChoice:
    """What a person set by hand; triage keeps it."""

    priority: Priority | None = None
    category: str | None = None
    by: str | None = None


@dataclass(frozen=True)
class Decision:
    category: str
    system: str | None
    priority: Priority
    impact: str
    urgency: str
    runbook: str | None
    response_due_at: datetime | None
    resolution_due_at: datetime | None
    explanation: str
    rules_fired: list[RuleFired]
    confidence: float
    manual_fields: list[str] = field(default_factory=list)
    sla_tier: str | None = None

    def essentials(self) -> tuple[object, ...]:
        """What a re-triage must change before it is announced again."""
        return (self.category, self.system, self.priority, self.runbook, self.response_due_at)


def known_system(tenant: TenantUpserted, name: str | None) -> SupportedSystem | None:
    """The tenant's system called ``name`` (by name or alias, any case)."""
    if not name:
        return None
    wanted = name.strip().casefold()
    for system in tenant.systems:
        if system.name.casefold() == wanted or any(alias.casefold() == wanted for alias in system.aliases):
            return system
    return None


def decide(
    facts: Facts,
    tenant: TenantUpserted,
    rules: RuleSet,
    *,
    reported_at: datetime,
    manual: ManualChoice | None = None,
    classifier: Callable[[str], str] | None = None,
) -> Decision:
    """``classifier`` (text -> category) is asked when neither a rule nor the phrases decide."""
    lines: list[str] = []
    confidence = 1.0

    # 1. The system: as reported, else read from the words.
    system = known_system(tenant, facts.system)
    if system is not None:
        lines.append(f"System {system.name}: named in the report.")
    else:
        if facts.system:
            lines.append(f"Reported system {facts.system!r} is not one of {tenant.name}'s systems.")
        reading = read_system(f"{facts.title} {facts.description} {facts.source or ''}", tenant.systems)
        system = known_system(tenant, reading.value)
        if system is not None:
            confidence = min(confidence, reading.confidence)
            lines.append(f"System {system.name}: the text names it ({'; '.join(reading.evidence)}).")
        elif reading.evidence:
            lines.append(f"No system chosen: the text {reading.evidence[0]}.")

    facts_for_rules = Facts(
        tenant_id=facts.tenant_id,
        channel=facts.channel,
        severity=facts.severity,
        title=facts.title,
        description=facts.description,
        source=facts.source,
        system=system.name if system else facts.system,
        labels=facts.labels,
    )

    # 2. Rules, in order; the first rule to set a field wins it.
    chosen: dict[str, str] = {}
    fired: list[RuleFired] = []
    # The rules and the category reader look at the same text: one index of its words for both.
    text_words = Words(words_of(facts.text))
    for found in rules.matches(facts_for_rules, text_words):
        sets = {
            key: str(value.value if hasattr(value, "value") else value)
            for key, value in found.rule.spec.then.model_dump(exclude_none=True).items()
            if key not in chosen
        }
        for key, value in sets.items():
            chosen[key] = value
        fired.append(RuleFired(rule=found.rule.name, version=found.rule.version, matched=found.matched, sets=sets))
        sets_text = ", ".join(f"{key}={value}" for key, value in sets.items()) or "nothing new (set by earlier rules)"
        lines.append(
            f"Rule {found.rule.name} v{found.rule.version} fired ({'; '.join(found.matched) or 'always'}): {sets_text}."
        )
    if not fired:
        lines.append(f"No rule of {len(rules)} matched.")

    if "system" in chosen:
        ruled = known_system(tenant, chosen["system"])
        if ruled is not None:
            system = ruled

    # 3. The category: a rule's, else the words'.
    category = chosen.get("category")
    if category is None:
        reading = read_category(facts.text, text_words)
        if reading.value is not None:
            category = reading.value
            confidence = min(confidence, reading.confidence)
            lines.append(
                f"Category {category} from the words ({', '.join(reading.evidence[:4])}; "
                f"confidence {reading.confidence:.2f})."
            )
        elif classifier is not None and (guess := classifier(facts.text)) != Category.OTHER.value:
            category = guess
            confidence = min(confidence, 0.4)
            lines.append(
                f"Category {category}: no rule or phrase decided; the classifier trained on labelled reports "
                "guesses it."
            )
        else:
            category = Category.OTHER.value
            confidence = min(confidence, 0.2)
            lines.append("Category other: neither a rule nor the words said more.")

    # 4. Priority: impact x urgency, unless a rule forces it.
    impact = assess_impact(system.criticality if system else None, tenant.tier)
    urgency = assess_urgency(Severity(facts.severity), facts.text)
    impact_level, urgency_level = impact.level, urgency.level
    reasons = list(impact.reasons) + list(urgency.reasons)
    if "impact" in chosen:
        impact_level = Level.parse(chosen["impact"])
        reasons.append(f"a rule set impact {impact_level.label}")
    if "urgency" in chosen:
        urgency_level = Level.parse(chosen["urgency"])
        reasons.append(f"a rule set urgency {urgency_level.label}")
    priority = priority_for(impact_level, urgency_level)
    if "priority" in chosen:
        priority = Priority(chosen["priority"])
        lines.append(f"Priority {priority.value}: forced by a rule ({'; '.join(reasons)}).")
    else:
        lines.append(
            f"Priority {priority.value}: impact {impact_level.label} x urgency {urgency_level.label} "
            f"({'; '.join(reasons)})."
        )

    # 5. A person's own choice stands.
    manual_fields: list[str] = []
    if manual is not None:
        if manual.priority is not None and manual.priority != priority:
            lines.append(
                f"Priority {manual.priority.value} kept: set by hand by {manual.by or 'a person'} "
                f"(rules say {priority.value})."
            )
            priority = manual.priority
            manual_fields.append("priority")
        elif manual.priority is not None:
            manual_fields.append("priority")
        if manual.category is not None:
            if manual.category != category:
                lines.append(
                    f"Category {manual.category} kept: set by hand by {manual.by or 'a person'} (rules say {category})."
                )
            category = manual.category
            manual_fields.append("category")

    # 6. Deadlines from the contract, counted from the report.
    deadlines = sla_deadlines(tenant.tier, priority, reported_at)
    lines.append(deadlines.note + ".")

    runbook = chosen.get("runbook")
    if runbook:
        naming_rule = next(f.rule for f in fired if "runbook" in f.sets)
        if system is None:
            # A runbook acts on a system (its admin endpoint, its health probe). Without one it
            # could only escalate after starting, and a person is the right first step anyway:
            # "Question 503: how do we export invoices?" once matched the restart rule's "503".
            lines.append(
                f"Runbook {runbook} (rule {naming_rule}) not tried: no affected system is known, "
                "and a runbook works on a system."
            )
            runbook = None
        else:
            lines.append(f"Runbook {runbook}: named by rule {naming_rule}.")

    return Decision(
        category=category,
        system=system.name if system else None,
        priority=priority,
        impact=impact_level.label,
        urgency=urgency_level.label,
        runbook=runbook,
        response_due_at=deadlines.response_due_at,
        resolution_due_at=deadlines.resolution_due_at,
        explanation="\n".join(lines),
        rules_fired=fired,
        confidence=round(confidence, 2),
        manual_fields=manual_fields,
        sla_tier=tenant.tier.name,
    )
