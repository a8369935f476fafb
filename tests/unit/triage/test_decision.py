"""The triage decision as pure code: matrix, SLA, rules, words, a person's choice, grouping."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from pydantic import ValidationError

from aftercare.events.incidents import Severity
from aftercare.events.tenants import ContractTier, Criticality, Priority, SlaTarget, SupportedSystem, TenantUpserted
from aftercare.triage.adapters.rule_store import load_seed_file
from aftercare.triage.components import DEFAULT_RULES
from aftercare.triage.domain import grouping
from aftercare.triage.domain.decision import ManualChoice, decide
from aftercare.triage.domain.priority import Level, assess_impact, assess_urgency, priority_for, sla_deadlines
from aftercare.triage.domain.rules import Facts, Rule, RuleError, RuleSet, RuleSpec, check_pattern
from aftercare.triage.domain.words import read_category, read_system

NOW = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)
GOLD = ContractTier(
    name="gold",
    sla=[
        SlaTarget(priority=Priority.P1, response_minutes=15, resolution_minutes=240),
        SlaTarget(priority=Priority.P4, response_minutes=1440, resolution_minutes=10080),
    ],
)
SYSTEMS = [
    SupportedSystem(name="billing-db", aliases=["billing", "invoicing"], criticality=Criticality.CRITICAL),
    SupportedSystem(name="shop-web", aliases=["web shop"], criticality=Criticality.HIGH),
    SupportedSystem(name="wiki", criticality=Criticality.LOW),
]
TENANT = TenantUpserted(tenant_id="acme", name="ACME", tier=GOLD, systems=SYSTEMS)


def facts(title: str, description: str = "", **changes: object) -> Facts:
    values: dict[str, object] = {
        "tenant_id": "acme",
        "channel": "api",
        "severity": "error",
        "title": title,
        "description": description,
        "source": None,
        "system": None,
        "labels": {},
    }
    values.update(changes)
    return Facts(**values)  # type: ignore[arg-type]


def seeded_rules() -> RuleSet:
    return RuleSet([Rule(spec) for spec in load_seed_file(DEFAULT_RULES)])


def test_the_matrix_runs_from_p1_to_p5() -> None:
    assert priority_for(Level.HIGH, Level.HIGH) == Priority.P1
    assert priority_for(Level.MEDIUM, Level.MEDIUM) == Priority.P3
    assert priority_for(Level.LOW, Level.LOW) == Priority.P5


def test_a_gold_contract_raises_impact_and_a_basic_one_lowers_it() -> None:
    assert assess_impact(Criticality.MEDIUM, ContractTier(name="gold")).level == Level.HIGH
    assert assess_impact(Criticality.MEDIUM, ContractTier(name="basic")).level == Level.LOW
    assert assess_impact(Criticality.MEDIUM, ContractTier(name="standard")).level == Level.MEDIUM


def test_words_raise_or_lower_urgency() -> None:
    assert assess_urgency(Severity.ERROR, "checkout is down for all users").level == Level.HIGH
    assert assess_urgency(Severity.ERROR, "a question, no rush").level == Level.LOW
    assert assess_urgency(Severity.ERROR, "something odd").level == Level.MEDIUM


def test_p5_uses_the_nearest_less_urgent_contract_target_and_says_so() -> None:
    deadlines = sla_deadlines(GOLD, Priority.P5, NOW)
    assert deadlines.response_due_at is None or deadlines.response_due_at == NOW + timedelta(minutes=1440)
    assert "P4's apply" in deadlines.note


def test_deadlines_count_from_the_report() -> None:
    deadlines = sla_deadlines(GOLD, Priority.P1, NOW)
    assert deadlines.response_due_at == NOW + timedelta(minutes=15)
    assert deadlines.resolution_due_at == NOW + timedelta(hours=4)


def test_the_shipped_rules_parse() -> None:
    assert len(load_seed_file(DEFAULT_RULES)) >= 5


def test_a_database_alert_is_p1_with_the_rule_and_runbook_explained() -> None:
    decision = decide(
        facts("billing-db: too many connections", severity="critical", system="billing-db"),
        TENANT,
        seeded_rules(),
        reported_at=NOW,
    )
    assert (decision.priority, decision.category, decision.system, decision.runbook) == (
        Priority.P1,
        "database",
        "billing-db",
        "restart-service",
    )
    assert "Rule database-connection-trouble v1 fired" in decision.explanation
    assert "impact high x urgency high" in decision.explanation
    assert decision.response_due_at == NOW + timedelta(minutes=15)


def test_a_persons_choice_is_kept_and_explained() -> None:
    decision = decide(
        facts("billing-db down", severity="critical", system="billing-db"),
        TENANT,
        seeded_rules(),
        reported_at=NOW,
        manual=ManualChoice(priority=Priority.P3, category="network", by="dana"),
    )
    assert decision.priority == Priority.P3
    assert decision.category == "network"
    assert decision.manual_fields == ["priority", "category"]
    assert "set by hand by dana" in decision.explanation


def test_the_system_is_read_from_aliases_with_typos_and_any_case() -> None:
    assert read_system("INVOICNG is broken", SYSTEMS).value == "billing-db"
    assert read_system("the Web Shop shows errors", SYSTEMS).value == "shop-web"
    assert read_system("Billing is down", SYSTEMS).value == "billing-db"
    assert read_system("the printer is jammed", SYSTEMS).value is None


def test_the_category_is_read_from_words_with_typos() -> None:
    assert read_category("The databse has a deadlock").value == "database"
    assert read_category("I forgot my pasword and I'm locked out").value == "access"
    assert read_category("Die Seite ist sehr langsam").value == "performance"
    assert read_category("hello").value is None


@pytest.mark.parametrize("pattern", ["(a+)+$", "(\\w*)*x", "(a|aa)+b", "([a-z]+)*@"])
def test_runaway_regexes_are_refused(pattern: str) -> None:
    with pytest.raises(RuleError, match="run away"):
        check_pattern(pattern)


def test_a_rule_naming_an_unknown_field_or_bad_regex_is_refused() -> None:
    with pytest.raises(ValidationError, match="colour"):
        RuleSpec.model_validate({"name": "x", "when": {"colour": "red"}, "then": {"category": "network"}})
    with pytest.raises(ValidationError, match="does not compile"):
        RuleSpec.model_validate({"name": "x", "when": {"text": {"regex": "ORA-("}}, "then": {"category": "database"}})
    with pytest.raises(ValidationError, match="category"):
        RuleSpec.model_validate({"name": "x", "then": {"category": "plumbing"}})


def test_conditions_on_labels_source_channel_and_regex() -> None:
    rule = Rule(
        RuleSpec.model_validate(
            {
                "name": "oracle-prod",
                "when": {
                    "channel": ["alertmanager"],
                    "source": "db-*",
                    "labels": {"env": "prod*"},
                    "text": {"regex": "ORA-\\d{5}"},
                },
                "then": {"category": "database", "urgency": "high"},
            }
        )
    )
    rules = RuleSet([rule])
    hit = facts("ORA-00060 deadlock", channel="alertmanager", source="db-07", labels={"env": "production"})
    assert [m.rule.name for m in rules.matches(hit)] == ["oracle-prod"]
    miss = facts("ORA-00060 deadlock", channel="alertmanager", source="web-07", labels={"env": "production"})
    assert rules.matches(miss) == []


OPEN = grouping.OpenIncident("first", "INC-1", NOW - timedelta(minutes=5), "billing-db", "database", "k1")


def test_same_dedup_key_groups_even_outside_the_window() -> None:
    found = grouping.find_group(
        incident_id="second",
        channel="api",
        dedup_key="k1",
        system=None,
        category="other",
        reported_at=NOW + timedelta(hours=5),
        open_incidents=[OPEN],
    )
    assert found is not None and found.reason == "dedup_key"


def test_a_person_reporting_about_the_same_system_joins_inside_the_window_only() -> None:
    def join(at: datetime) -> grouping.Grouping | None:
        return grouping.find_group(
            incident_id="email",
            channel="email",
            dedup_key=None,
            system="billing-db",
            category="application",
            reported_at=at,
            open_incidents=[OPEN],
        )

    assert join(NOW) is not None and join(NOW).reason == "same_system"  # type: ignore[union-attr]
    assert join(NOW + timedelta(hours=2)) is None


def test_a_machine_alert_of_another_category_on_the_same_system_is_not_grouped() -> None:
    found = grouping.find_group(
        incident_id="second",
        channel="api",
        dedup_key=None,
        system="billing-db",
        category="hardware",
        reported_at=NOW,
        open_incidents=[OPEN],
    )
    assert found is None


def test_a_source_that_opens_and_resolves_three_times_in_an_hour_flaps() -> None:
    opened = [NOW - timedelta(minutes=m) for m in (50, 30, 10)]
    resolved = [NOW - timedelta(minutes=m) for m in (40, 20, 5)]
    assert grouping.flapping(opened, resolved, NOW).flapping
    assert not grouping.flapping(opened[:2], resolved[:2], NOW).flapping


def test_the_holder_of_a_group_key_is_the_first_incident_even_if_reported_a_moment_later() -> None:
    # Two alerts triaged side by side: the one that claimed the key first is the first incident,
    # whichever clock said earlier.
    later = grouping.OpenIncident("first", "INC-1", NOW + timedelta(seconds=2), "billing-db", "database", None)
    found = grouping.find_group(
        incident_id="second",
        channel="alertmanager",
        dedup_key=None,
        system="billing-db",
        category="database",
        reported_at=NOW,
        open_incidents=[later],
    )
    assert found is not None and found.duplicate_of.incident_id == "first" and found.reason == "fingerprint"


def test_group_keys_come_in_the_order_grouping_prefers_and_only_dedup_keys_outlast_the_window() -> None:
    keys = grouping.group_keys("acme", dedup_key="k1", system="billing-db", category="database")
    assert [key.kind for key in keys] == ["dedup_key", "fingerprint", "same_system"]
    assert [key.lasts_until_resolved for key in keys] == [True, False, False]
    assert grouping.group_keys("acme", dedup_key=None, system=None, category="other") == []
