"""What each topic keeps is what a rebuild from the log needs (docs/operations.md)."""

from __future__ import annotations

from aftercare.events import topics
from aftercare.events.topics import dead_letter_topic, topic_specs


def test_the_incident_flow_is_kept_forever_so_read_models_can_be_rebuilt_from_the_first_event() -> None:
    specs = {spec.name: spec.configs() for spec in topic_specs()}
    for topic in (topics.INCIDENTS, topics.TRIAGE, topics.REMEDIATION, topics.NOTIFICATIONS):
        assert specs[topic] == {"cleanup.policy": "delete", "retention.ms": "-1"}, topic
        assert specs[dead_letter_topic(topic)]["retention.ms"] == "-1"


def test_tenants_keep_the_latest_record_per_key() -> None:
    specs = {spec.name: spec.configs() for spec in topic_specs()}
    assert specs[topics.TENANTS] == {"cleanup.policy": "compact"}
    # A dead letter is a message a person must read: never compacted away.
    assert specs[dead_letter_topic(topics.TENANTS)]["cleanup.policy"] == "delete"


def test_an_operator_gets_an_incidents_trace_id_from_its_id_alone(capsys: object) -> None:
    import pytest

    from aftercare.events.cli import main
    from aftercare.events.envelope import envelope_for
    from aftercare.events.incidents import IncidentResolved

    assert isinstance(capsys, pytest.CaptureFixture)
    assert main(["trace-id", "inc-42"]) == 0
    printed = capsys.readouterr().out.strip()
    event = envelope_for(
        IncidentResolved(incident_id="inc-42", number="INC-1042", by="ops"),
        source="intake",
        tenant_id="acme",
        incident_id="inc-42",
    )
    assert event.traceparent is not None and event.traceparent.split("-")[1] == printed


def test_a_log_line_about_an_incident_carries_its_trace_id_even_outside_any_span() -> None:
    from aftercare.events.logs import add_incident_trace_id
    from aftercare.events.tracing import incident_trace_id

    line = add_incident_trace_id(None, "info", {"event": "incident opened", "incident_id": "inc-7"})
    assert line["trace_id"] == incident_trace_id("inc-7")
    # Inside a handled message the bound trace id stays; lines about no incident get none.
    bound = add_incident_trace_id(None, "info", {"incident_id": "inc-7", "trace_id": "abc"})
    assert bound["trace_id"] == "abc"
    assert "trace_id" not in add_incident_trace_id(None, "info", {"event": "service ready"})
