"""Runbooks are refused with what is wrong; parameters come only from allowed incident fields."""

from __future__ import annotations

from typing import Any

import pytest

from aftercare.remediation.domain.runbook import (
    IncidentFacts,
    ParameterRefused,
    RunbookInvalid,
    applies,
    dry_run,
    filled_params,
    parse_runbook,
)


def runbook(**overrides: Any) -> dict[str, Any]:
    document: dict[str, Any] = {
        "name": "restart-service",
        "steps": [
            {"name": "restart", "action": "http_admin", "params": {"path": "/restart-service"}, "timeout_seconds": 10}
        ],
        "verification": {"expect_status": [200]},
    }
    return document | overrides


def errors_of(document: Any) -> list[dict[str, str]]:
    with pytest.raises(RunbookInvalid) as caught:
        parse_runbook(document)
    return caught.value.errors


INCIDENT = IncidentFacts(
    incident_id="i-1", tenant_id="acme", number="INC-7", system="shop-web", category="application", source="web-1"
)


def test_a_valid_yaml_runbook_parses() -> None:
    parsed = parse_runbook(
        """
name: restart-service
steps:
  - {name: restart, action: http_admin, params: {path: /restart-service}, timeout_seconds: 10}
verification: {expect_status: [200], body_contains: healthy}
"""
    )
    assert parsed.steps[0].safe_to_repeat is False
    assert parsed.blast_radius.max_concurrent_per_system == 1


def test_an_unknown_action_is_refused_naming_the_allowed_ones() -> None:
    document = runbook(steps=[{"name": "x", "action": "shell", "params": {}, "timeout_seconds": 5}])
    [error] = errors_of(document)
    assert error["field"] == "steps.0.action"
    assert "unknown action 'shell'" in error["message"] and "http_admin" in error["message"]


def test_a_step_without_timeout_is_refused() -> None:
    [error] = errors_of(runbook(steps=[{"name": "x", "action": "http_admin", "params": {"path": "/a"}}]))
    assert error == {"field": "steps.0.timeout_seconds", "message": "every step needs a timeout_seconds"}


def test_a_parameter_from_a_field_not_allowed_is_refused() -> None:
    step = {"name": "n", "action": "add_note", "params": {"text": "{incident.description}"}, "timeout_seconds": 5}
    [error] = errors_of(runbook(steps=[step]))
    assert "{incident.description}" in error["message"] and "incident_id" in error["message"]


@pytest.mark.parametrize(
    "path", ["http://evil.example/x", "/admin/../secret", "/restart-{incident.source}", "restart", "/a b"]
)
def test_an_admin_path_must_be_a_literal_relative_path(path: str) -> None:
    [error] = errors_of(
        runbook(steps=[{"name": "r", "action": "http_admin", "params": {"path": path}, "timeout_seconds": 5}])
    )
    assert "literal path" in error["message"]


def test_a_parameter_the_action_does_not_take_is_refused() -> None:
    step = {"name": "w", "action": "wait", "params": {"seconds": 5, "command": "rm"}, "timeout_seconds": 10}
    [error] = errors_of(runbook(steps=[step]))
    assert "does not take command" in error["message"]


def test_every_problem_is_listed_at_once() -> None:
    document = {"name": "Bad Name", "steps": [], "verification": {}, "surprise": 1}
    fields = {error["field"] for error in errors_of(document)}
    assert fields == {"name", "steps", "surprise"}


def test_text_that_is_not_yaml_is_refused() -> None:
    [error] = errors_of("name: [unclosed")
    assert "not valid YAML" in error["message"]


def test_filled_request_parameters_must_be_plain_tokens() -> None:
    parsed = parse_runbook(
        runbook(
            steps=[
                {
                    "name": "restart",
                    "action": "http_admin",
                    "params": {"path": "/restart", "query": "service={incident.source}"},
                    "timeout_seconds": 5,
                }
            ]
        )
    )
    assert filled_params(parsed.steps[0], INCIDENT)["query"] == "service=web-1"
    hostile = INCIDENT.model_copy(update={"source": "web-1&drop=all"})
    with pytest.raises(ParameterRefused, match="not a plain value"):
        filled_params(parsed.steps[0], hostile)


def test_applies_to_checks_category_system_and_labels() -> None:
    parsed = parse_runbook(
        runbook(applies_to={"categories": ["application"], "systems": ["shop-web"], "labels": {"env": "prod"}})
    )
    assert applies(parsed, INCIDENT) == "label env=prod is not on the incident"
    assert applies(parsed, INCIDENT.model_copy(update={"labels": {"env": "prod"}})) is None
    assert "category" in (applies(parsed, INCIDENT.model_copy(update={"category": "network"})) or "")


def test_dry_run_fills_parameters_and_names_the_target_without_running() -> None:
    parsed = parse_runbook(
        runbook(
            steps=[
                {
                    "name": "note",
                    "action": "add_note",
                    "params": {"text": "fixing {incident.number}"},
                    "timeout_seconds": 1,
                },
                {
                    "name": "restart",
                    "action": "http_admin",
                    "params": {"path": "/restart-service"},
                    "timeout_seconds": 5,
                },
            ]
        )
    )
    plan = dry_run(parsed, INCIDENT, "http://10.0.0.5:9000/admin", "http://10.0.0.5:9000/health")
    assert plan["steps"][0]["params"] == {"text": "fixing INC-7"}
    assert plan["steps"][1]["target"] == "http://10.0.0.5:9000/admin/restart-service"
    assert plan["verification"]["probe"] == "http://10.0.0.5:9000/health"
    assert dry_run(parsed, INCIDENT, None, None)["steps"][1]["refused"] == "the system has no registered admin endpoint"
