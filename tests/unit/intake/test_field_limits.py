"""Field limits, repeated sightings, the credential cache and change events: pure rules."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from aftercare.events.incidents import Channel
from aftercare.intake.adapters.tenant_registry import Credential, CredentialCache
from aftercare.intake.domain import alertmanager, field_limits, pagerduty, reporting
from aftercare.intake.domain.incident import Incident, IncidentReport

NOW = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)


def test_label_problems_name_each_field_and_its_limit() -> None:
    labels = {"ok": "v", "n" * 300: "v", "team": "t" * 2000}

    problems = field_limits.label_problems(labels, "labels", most=2)

    assert [problem.sentence() for problem in problems] == [
        "'labels' has 3 labels; at most 2 are accepted",
        f"'labels name {'n' * 37}...' is 300 characters long; at most 256 are accepted",
        "'labels.team' is 2,000 characters long; at most 1,024 are accepted",
    ]
    assert field_limits.too_long("Subject", "s" * 10, 10) is None


def _alert(**overrides: Any) -> alertmanager.Alert:
    fields: dict[str, Any] = {
        "status": "firing",
        "labels": {"alertname": "DiskFull"},
        "startsAt": "2026-11-30T10:00:00Z",
        "fingerprint": "abc123",
    }
    return alertmanager.Alert.model_validate(fields | overrides)


def test_an_alert_is_refused_for_its_labels_and_its_annotations_are_cut() -> None:
    alert = _alert(
        labels={"alertname": "DiskFull", "pod": "p" * 1025},
        annotations={f"a{i}": "x" * 3000 for i in range(60)},
    )

    assert [problem.field for problem in alertmanager.field_problems(alert, 7)] == ["alerts[7].labels.pod"]
    kept = alertmanager.kept_annotations(alert)
    assert len(kept) == field_limits.ANNOTATIONS + 1 and kept["aftercare_note"].startswith("10 more annotations")
    assert max(len(value) for value in kept.values()) == field_limits.ANNOTATION_CHARS


def _incident(**overrides: Any) -> Incident:
    fields: dict[str, Any] = {
        "_id": "i-1",
        "tenant_id": "acme",
        "number": "INC-1001",
        "title": "Disk full",
        "channel": "alertmanager",
        "severity": "warning",
        "status": "reported",
        "first_seen_at": NOW,
        "last_seen_at": NOW,
        "created_at": NOW,
        "updated_at": NOW,
    }
    return Incident.model_validate(fields | overrides)


def test_the_same_firing_is_counted_once_and_a_new_start_is_another_occurrence() -> None:
    message = alertmanager.WebhookMessage.model_validate({"version": "4", "status": "firing", "alerts": []})
    first = alertmanager.incident_report(_alert(), message, first_time=True)
    refired = alertmanager.incident_report(_alert(startsAt="2026-11-30T11:00:00Z"), message, first_time=False)

    opening = reporting.open_incident("acme", "i-1", "INC-1001", first, now=NOW)
    incident = _incident(last_sighting=opening.fields["last_sighting"])

    assert reporting.already_counted(incident, first)
    assert not reporting.already_counted(incident, refired)
    change = reporting.add_occurrence(incident, refired, now=NOW)
    assert change.set_fields["last_sighting"] == refired.sighting
    # Reports that cannot name their sighting (most channels) are always occurrences.
    assert not reporting.already_counted(incident, IncidentReport(title="x", channel=Channel.API))


def test_a_cached_credential_is_forgotten_when_its_tenant_changes() -> None:
    cache = CredentialCache()
    cache.following = True
    acme = Credential(tenant_id="acme", kind="api-key", credential_id="k1")
    cache.put("api-key|d1", acme, cache.generation)
    cache.put("api-key|d2", Credential(tenant_id="globex", kind="api-key", credential_id="k2"), cache.generation)
    assert cache.get("api-key|d1") == acme

    started = cache.generation  # a lookup reading the store while the tenant changes
    cache.forget_tenant("acme")
    cache.put("api-key|d1", acme, started)

    assert cache.get("api-key|d1") is None
    assert cache.get("api-key|d2") is not None


def test_nothing_is_cached_while_tenant_changes_cannot_be_heard() -> None:
    cache = CredentialCache()
    cache.put("api-key|d1", Credential(tenant_id="acme", kind="api-key", credential_id="k1"), cache.generation)
    assert cache.get("api-key|d1") is None


def test_a_cached_credential_expires() -> None:
    cache = CredentialCache(seconds=0.0)
    cache.following = True
    cache.put("api-key|d1", Credential(tenant_id="acme", kind="api-key", credential_id="k1"), cache.generation)
    assert cache.get("api-key|d1") is None


def test_a_change_event_is_read_as_pagerduty_documents_it() -> None:
    event = pagerduty.read_change_event(
        {
            "routing_key": "R" * 32,
            "payload": {"summary": "Deployed v2", "source": "ci", "custom_details": {"n": 2}},
            "links": [{"href": "https://ci.example.com/2", "text": "Build"}],
        },
        routing_key_registered=True,
    )
    assert "Deployed v2" in pagerduty.change_note(event) and "https://ci.example.com/2" in pagerduty.change_note(event)
    assert pagerduty.change_record(event, routing_key_id="k1")["custom_details"] == {"n": 2}

    with pytest.raises(pagerduty.InvalidEvent) as invalid:
        pagerduty.read_change_event({"routing_key": "R" * 32, "payload": {}}, routing_key_registered=True)
    assert invalid.value.errors == ["'payload.summary' is missing: a one-line text saying what is wrong"]
