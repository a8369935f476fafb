"""Alertmanager webhook messages (version 4): reading them and the incident each alert reports."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest
from pydantic import ValidationError

from aftercare.events.incidents import Channel, Severity
from aftercare.intake.domain import alertmanager
from aftercare.intake.domain.alertmanager import AlertStatus, WebhookMessage


def message(*alerts: dict[str, Any], **overrides: Any) -> dict[str, Any]:
    return {
        "version": "4",
        "groupKey": '{}:{alertname="DiskFull"}',
        "truncatedAlerts": 0,
        "status": "firing",
        "receiver": "aftercare",
        "groupLabels": {"alertname": "DiskFull"},
        "commonLabels": {},
        "commonAnnotations": {},
        "externalURL": "http://alertmanager.example.com:9093",
        "alerts": list(alerts),
    } | overrides


def alert(**overrides: Any) -> dict[str, Any]:
    return {
        "status": "firing",
        "labels": {"alertname": "DiskFull", "instance": "db1:9100", "severity": "critical", "job": "node"},
        "annotations": {"summary": "Disk almost full on db1", "description": "Only 1% left on /var."},
        "startsAt": "2024-05-01T10:00:00.123456789Z",
        "endsAt": "0001-01-01T00:00:00Z",
        "generatorURL": "http://prometheus.example.com/graph?g0.expr=disk",
        "fingerprint": "c5a1b2d3e4f5a6b7",
    } | overrides


def read(document: dict[str, Any]) -> WebhookMessage:
    return WebhookMessage.model_validate(alertmanager.normalised(document))


def test_a_firing_alert_reports_an_incident_keyed_by_its_fingerprint() -> None:
    parsed = read(message(alert()))
    report = alertmanager.incident_report(parsed.alerts[0], parsed, first_time=True)

    assert report.title == "Disk almost full on db1"
    assert report.description.startswith("Only 1% left on /var.")
    assert "http://prometheus.example.com/graph?g0.expr=disk" in report.description
    assert report.channel == Channel.ALERTMANAGER
    assert report.severity == Severity.CRITICAL
    assert report.source == "db1:9100"
    assert report.dedup_key == "alertmanager:c5a1b2d3e4f5a6b7"
    assert report.labels == {"alertname": "DiskFull", "instance": "db1:9100", "severity": "critical", "job": "node"}
    assert report.occurred_at == datetime(2024, 5, 1, 10, 0, 0, 123456, tzinfo=UTC)
    assert report.reporter.system == "alertmanager/aftercare"
    assert report.details["alertmanager"]["fingerprint"] == "c5a1b2d3e4f5a6b7"


def test_a_repeat_of_a_firing_alert_is_seen_now_not_at_its_original_start() -> None:
    parsed = read(message(alert()))
    assert alertmanager.incident_report(parsed.alerts[0], parsed, first_time=False).occurred_at is None


def test_without_a_summary_the_alertname_is_the_title() -> None:
    parsed = read(message(alert(annotations={})))
    assert alertmanager.title(parsed.alerts[0]) == "DiskFull"


def test_a_multi_line_summary_becomes_a_one_line_title() -> None:
    parsed = read(message(alert(annotations={"summary": "Disk\n  almost full\n"})))
    assert alertmanager.title(parsed.alerts[0]) == "Disk almost full"


@pytest.mark.parametrize(
    ("label", "expected"),
    [
        ("critical", Severity.CRITICAL),
        ("page", Severity.CRITICAL),
        ("error", Severity.ERROR),
        ("High", Severity.ERROR),
        ("warning", Severity.WARNING),
        ("warn", Severity.WARNING),
        ("info", Severity.INFO),
        ("none", Severity.INFO),
        ("whatever", Severity.ERROR),
        (None, Severity.ERROR),
    ],
)
def test_severity_label_maps_to_severity_and_unknown_is_error(label: str | None, expected: Severity) -> None:
    labels = {"alertname": "X"} | ({"severity": label} if label is not None else {})
    assert alertmanager.severity(labels) == expected


def test_alertmanagers_zero_time_means_no_end_yet() -> None:
    parsed = read(message(alert()))
    assert alertmanager.real_time(parsed.alerts[0].endsAt) is None
    resolved = read(message(alert(status="resolved", endsAt="2024-05-01T11:00:00Z")))
    assert alertmanager.resolution(resolved.alerts[0]) == (
        "Alertmanager reports the alert resolved (ended 2024-05-01T11:00:00+00:00)"
    )


def test_without_a_fingerprint_the_label_set_gives_a_stable_one() -> None:
    first = read(message(alert(fingerprint=None)))
    reordered = read(
        message(
            alert(
                fingerprint=None,
                labels={"job": "node", "severity": "critical", "instance": "db1:9100", "alertname": "DiskFull"},
            )
        )
    )
    other = read(message(alert(fingerprint=None, labels={"alertname": "DiskFull", "instance": "db2:9100"})))
    assert alertmanager.fingerprint(first.alerts[0]) == alertmanager.fingerprint(reordered.alerts[0])
    assert alertmanager.fingerprint(first.alerts[0]) != alertmanager.fingerprint(other.alerts[0])


def test_label_names_with_dots_are_kept_in_a_storable_form() -> None:
    parsed = read(message(alert(labels={"alertname": "X", "k8s.namespace": "prod"})))
    report = alertmanager.incident_report(parsed.alerts[0], parsed, first_time=True)
    assert report.labels == {"alertname": "X", "k8s\uff0enamespace": "prod"}


@pytest.mark.parametrize(("version", "refused"), [("4", False), (4, False), (None, False), ("3", True), ("5", True)])
def test_only_payload_version_4_is_read(version: Any, refused: bool) -> None:
    document = message(alert()) | {"version": version}
    assert (alertmanager.version_problem(document) is not None) is refused


@pytest.mark.parametrize(
    ("document", "field"),
    [
        (message(alert(status="burning")), ("alerts", 0, "status")),
        (message(alert(labels={})), ("alerts", 0, "labels")),
        (message(alert(labels={"alertname": 5})), ("alerts", 0, "labels", "alertname")),
        (message(alert(startsAt="last tuesday")), ("alerts", 0, "startsAt")),
        ({k: v for k, v in message(alert()).items() if k != "alerts"}, ("alerts",)),
        (message(alert(), status="meh"), ("status",)),
    ],
)
def test_malformed_messages_name_the_field_to_fix(document: dict[str, Any], field: tuple[Any, ...]) -> None:
    with pytest.raises(ValidationError) as invalid:
        read(document)
    assert field in [error["loc"] for error in invalid.value.errors()]


def test_fields_alertmanager_may_add_later_are_ignored() -> None:
    parsed = read(message(alert(silencedBy=[]), newField={"x": 1}))
    assert parsed.alerts[0].status == AlertStatus.FIRING
