"""PagerDuty Events API v2 events: validation as PagerDuty does it, and the incident a trigger reports."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from aftercare.events.incidents import Channel, Severity
from aftercare.intake.domain import pagerduty
from aftercare.intake.domain.pagerduty import EventAction, InvalidEvent, UnrecognizedBody

KEY = "0123456789abcdef0123456789abcdef"


def trigger(**overrides: Any) -> dict[str, Any]:
    event: dict[str, Any] = {
        "routing_key": KEY,
        "event_action": "trigger",
        "dedup_key": "srv01/mysql",
        "payload": {
            "summary": "DISK at 99% on prod-datapipe03",
            "source": "prod-datapipe03.example.com",
            "severity": "critical",
            "timestamp": "2015-07-17T08:42:58.315+0000",
            "component": "mysql",
            "group": "prod-datapipe",
            "class": "disk",
            "custom_details": {"free space": "1%", "load avg": 0.75},
        },
        "client": "Sample Monitoring Service",
        "client_url": "https://monitoring.example.com",
        "links": [{"href": "https://runbooks.example.com/disk", "text": "Runbook"}],
        "images": [{"src": "https://charts.example.com/disk.png", "alt": "Disk usage"}],
    }
    return event | overrides


def errors_of(document: dict[str, Any], *, registered: bool = True) -> list[str]:
    with pytest.raises(InvalidEvent) as refused:
        pagerduty.read_event(document, routing_key_registered=registered)
    return refused.value.errors


def test_pagerdutys_documented_example_is_a_valid_trigger() -> None:
    event = pagerduty.read_event(trigger(), routing_key_registered=True)

    assert event.action == EventAction.TRIGGER
    assert event.dedup_key == "srv01/mysql"
    assert event.payload is not None and event.payload.class_ == "disk"
    assert [link.href for link in event.links] == ["https://runbooks.example.com/disk"]


def test_fields_pagerduty_does_not_know_are_ignored_not_refused() -> None:
    event = pagerduty.read_event(
        trigger(incident_key="v1-field", payload=trigger()["payload"] | {"extra": 1}), routing_key_registered=True
    )
    assert event.payload is not None


def test_acknowledge_and_resolve_need_only_routing_key_action_and_dedup_key() -> None:
    for action in ("acknowledge", "resolve"):
        event = pagerduty.read_event(
            {"routing_key": KEY, "event_action": action, "dedup_key": "srv01/mysql"}, routing_key_registered=True
        )
        assert event.action == action
        assert event.actor == "pagerduty"


def test_a_blank_dedup_key_on_trigger_counts_as_absent() -> None:
    assert pagerduty.read_event(trigger(dedup_key=""), routing_key_registered=True).dedup_key is None


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ({"payload": {"source": "h", "severity": "info"}}, "'payload.summary' is missing"),
        ({"payload": {"summary": "  ", "source": "h", "severity": "info"}}, "'payload.summary' is blank"),
        (
            {"payload": {"summary": "x" * 1025, "source": "h", "severity": "info"}},
            "'payload.summary' is too long (maximum is 1024 characters)",
        ),
        ({"payload": {"summary": "s", "severity": "info"}}, "'payload.source' is missing"),
        (
            {"payload": {"summary": "s", "source": "h", "severity": "high"}},
            "'payload.severity' must be 'critical', 'error', 'warning' or 'info', not 'high'",
        ),
        ({"payload": "disk full"}, "'payload' must be a JSON object"),
        ({"payload": None}, "'payload' must be a JSON object"),
        ({"event_action": "explode"}, "'event_action' must be 'trigger', 'acknowledge' or 'resolve'"),
        ({"dedup_key": "k" * 256}, "'dedup_key' is too long (maximum is 255 characters)"),
        ({"links": [{"text": "no href"}]}, "'links[0].href' is missing"),
        ({"images": "chart.png"}, "'images' must be a list of objects"),
    ],
)
def test_invalid_triggers_are_refused_with_an_error_naming_the_field(change: dict[str, Any], expected: str) -> None:
    errors = errors_of(trigger(**change))
    assert any(error.startswith(expected) for error in errors), errors


def test_a_trigger_without_payload_says_what_the_payload_needs() -> None:
    document = trigger()
    del document["payload"]
    assert errors_of(document) == [
        "'payload' is missing: trigger events need a payload object with summary, source and severity"
    ]


def test_every_problem_is_reported_at_once() -> None:
    errors = errors_of(trigger(payload={"summary": "", "severity": "loud"}, dedup_key="k" * 300))
    assert len(errors) == 4, errors


@pytest.mark.parametrize("action", ["acknowledge", "resolve"])
def test_acknowledge_and_resolve_without_dedup_key_are_refused(action: str) -> None:
    errors = errors_of({"routing_key": KEY, "event_action": action})
    assert errors == [
        f"'dedup_key' is required for {action} events: send the dedup_key of the alert to "
        f"{action} (the one returned when it was triggered)"
    ]


def test_unregistered_routing_keys_get_pagerdutys_own_messages() -> None:
    assert errors_of(trigger(routing_key="short"), registered=False) == [
        "Length of 'routing_key' is incorrect (should be 32 characters)"
    ]
    assert errors_of(trigger(routing_key="e+23rschqsESqk9Q6_-g" + "x" * 12), registered=False) == [
        "'routing_key' cannot contain non-alphanumeric characters."
    ]
    (unknown,) = errors_of(trigger(routing_key="f" * 32), registered=False)
    assert unknown.startswith("'routing_key' is not registered here")
    assert errors_of(trigger(routing_key=None), registered=False)[0].startswith("'routing_key' must be a string")
    document = trigger()
    del document["routing_key"]
    assert errors_of(document, registered=False)[0].startswith("'routing_key' is missing")


def test_a_registered_routing_key_of_another_length_is_accepted() -> None:
    # Admins may issue keys that are not PagerDuty-shaped; only unknown keys get the format errors.
    assert pagerduty.read_event(trigger(routing_key="k" * 40), routing_key_registered=True).dedup_key


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (b"{not json", "JSON parse error"),
        (b"", "JSON parse error"),
        (b'{"routing_key": NaN}', "NaN is not valid JSON"),
        (b"[" * 50_000, "nested too deeply"),
        (b'["an", "array"]', "got a JSON array"),
        (b'"a string"', "got a JSON string"),
    ],
)
def test_bodies_that_are_not_a_json_object_are_unrecognized(body: bytes, expected: str) -> None:
    with pytest.raises(UnrecognizedBody, match=expected):
        pagerduty.parse_body(body)


def test_the_declared_charset_is_honoured() -> None:
    body = '{"payload": {"summary": "Störung"}}'
    assert pagerduty.parse_body(body.encode("latin-1"), "ISO-8859-1")["payload"]["summary"] == "Störung"
    assert pagerduty.parse_body(b"\xef\xbb\xbf" + body.encode(), "utf-8")["payload"]["summary"] == "Störung"
    assert pagerduty.parse_body(body.encode("utf-16"))["payload"]["summary"] == "Störung"
    with pytest.raises(UnrecognizedBody, match="unknown charset"):
        pagerduty.parse_body(b"{}", "klingon-8")


def test_a_trigger_reports_an_incident_with_summary_as_title_and_its_context() -> None:
    event = pagerduty.read_event(trigger(), routing_key_registered=True)
    report = pagerduty.incident_report(event, dedup_key="srv01/mysql", routing_key_id="rk1")

    assert report.title == "DISK at 99% on prod-datapipe03"
    assert report.channel == Channel.PAGERDUTY
    assert report.severity == Severity.CRITICAL
    assert report.source == "prod-datapipe03.example.com"
    assert report.dedup_key == "srv01/mysql"
    assert report.labels == {"component": "mysql", "group": "prod-datapipe", "class": "disk"}
    assert report.reporter.system == "Sample Monitoring Service"
    assert report.occurred_at == datetime(2015, 7, 17, 8, 42, 58, 315000, tzinfo=UTC)
    assert "free space: 1%" in report.description
    assert "Runbook: https://runbooks.example.com/disk" in report.description
    kept = report.details["pagerduty"]
    assert kept["routing_key_id"] == "rk1"
    assert kept["custom_details"] == {"free space": "1%", "load avg": 0.75}
    assert kept["images"] == [{"src": "https://charts.example.com/disk.png", "alt": "Disk usage"}]


@pytest.mark.parametrize(
    ("timestamp", "expected"),
    [
        (None, None),
        ("", None),
        ("yesterday", None),
        ("2024-03-01T10:00:00", datetime(2024, 3, 1, 10, tzinfo=UTC)),
        ("2024-03-01T12:00:00+02:00", datetime(2024, 3, 1, 10, tzinfo=UTC)),
    ],
)
def test_an_unreadable_timestamp_falls_back_to_the_time_of_receipt(
    timestamp: str | None, expected: datetime | None
) -> None:
    assert pagerduty.event_time(timestamp) == expected


def test_very_long_custom_details_are_cut_in_the_description_but_kept_whole_in_details() -> None:
    payload = trigger()["payload"] | {"custom_details": {"log": "x" * 100_000}}
    event = pagerduty.read_event(trigger(payload=payload), routing_key_registered=True)
    report = pagerduty.incident_report(event, dedup_key="k", routing_key_id="rk1")
    assert len(report.description) <= pagerduty.MAX_DESCRIPTION_CHARS
    assert report.details["pagerduty"]["custom_details"]["log"] == "x" * 100_000


def test_custom_details_are_made_storable_without_losing_what_they_say() -> None:
    details = {
        "disk.free": "1%",
        "$where": "x",
        "nested": [[1, 2], [3]],
        "huge": 2**70,
        "nul": "a\x00b",
        "deep": {"a": {"b": {"c": 1}}},
    }
    assert pagerduty.storable(details) == {
        "disk\uff0efree": "1%",
        "\uff04where": "x",
        "nested": ["[1, 2]", "[3]"],
        "huge": str(2**70),
        "nul": "ab",
        "deep": {"a": {"b": {"c": 1}}},
    }


def test_details_nested_beyond_the_limit_are_kept_as_json_text() -> None:
    deep: Any = "bottom"
    for _ in range(pagerduty.MAX_DETAILS_DEPTH + 5):
        deep = {"level": deep}
    kept = pagerduty.storable(deep)
    for _ in range(pagerduty.MAX_DETAILS_DEPTH):
        kept = kept["level"]
    assert isinstance(kept, str) and '"bottom"' in kept


def test_generated_dedup_keys_are_unique_and_usable_as_routing_key_sized_ids() -> None:
    keys = {pagerduty.generated_dedup_key() for _ in range(100)}
    assert len(keys) == 100
    assert all(len(key) == 32 for key in keys)
