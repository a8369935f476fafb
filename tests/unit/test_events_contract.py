"""The event contract: what goes on Kafka comes back the same, and what cannot be read is
rejected with a message that says what is wrong (such messages are dead-lettered, not retried)."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest

from aftercare.events import catalog
from aftercare.events.catalog import (
    EVENT_MODELS,
    EVENT_TYPES,
    EventRejected,
    InvalidEvent,
    NewerVersionThanKnown,
    UnknownEventType,
    parse_envelope,
    serialize,
)
from aftercare.events.consumer import RetryPolicy
from aftercare.events.envelope import Envelope, envelope_for
from aftercare.events.incidents import (
    AttachmentRef,
    Channel,
    IncidentAcknowledged,
    IncidentReported,
    Reporter,
    Severity,
)
from aftercare.events.producer import event_headers

REPORTED_AT = datetime(2025, 3, 4, 5, 6, 7, tzinfo=UTC)


def reported(**overrides: Any) -> IncidentReported:
    fields: dict[str, Any] = {
        "incident_id": "inc-1",
        "number": "INC-1042",
        "title": "Checkout returns 502",
        "description": "Since 05:00 every third order fails.",
        "channel": Channel.PAGERDUTY,
        "severity": Severity.CRITICAL,
        "reporter": Reporter(name="Ada", email="ada@example.com", system="pagerduty"),
        "source": "web-01",
        "dedup_key": "checkout-502",
        "labels": {"env": "prod", "team": "shop"},
        "attachments": [
            AttachmentRef(attachment_id="a1", filename="trace.pdf", content_type="application/pdf", size_bytes=1234)
        ],
        "reported_at": REPORTED_AT,
    }
    fields.update(overrides)
    return IncidentReported(**fields)


def acknowledged_document(**overrides: Any) -> dict[str, Any]:
    envelope = envelope_for(
        IncidentAcknowledged(incident_id="inc-1", number="INC-1042", by="ops@example.com", channel=Channel.PHONE),
        source="intake",
        tenant_id="acme",
        incident_id="inc-1",
    )
    document: dict[str, Any] = json.loads(serialize(envelope))
    document.update(overrides)
    return document


# --- round trip ---------------------------------------------------------------------------


def test_an_envelope_comes_back_from_its_bytes_unchanged() -> None:
    envelope = envelope_for(reported(), source="intake", tenant_id="acme", incident_id="inc-1")

    parsed = parse_envelope(serialize(envelope))

    assert parsed == envelope
    assert isinstance(parsed.data, IncidentReported)
    assert parsed.data.attachments[0].filename == "trace.pdf"
    assert parsed.type == "incident.reported"
    assert parsed.version == IncidentReported.VERSION


def test_parse_accepts_text_as_well_as_bytes() -> None:
    envelope = envelope_for(reported(), source="intake", tenant_id="acme", incident_id="inc-1")

    assert parse_envelope(serialize(envelope).decode()) == envelope


def test_time_is_kept_in_utc_whatever_offset_it_came_with() -> None:
    local = datetime(2025, 3, 4, 7, 6, 7, tzinfo=timezone(timedelta(hours=2)))
    envelope = envelope_for(reported(), source="intake", tenant_id="acme", time=local)

    parsed = parse_envelope(serialize(envelope))

    assert parsed.time == REPORTED_AT
    assert parsed.time.utcoffset() == timedelta(0)


def test_a_caused_event_continues_the_chain_of_its_cause() -> None:
    cause = envelope_for(reported(), source="intake", tenant_id="acme", incident_id="inc-1")
    effect = envelope_for(
        IncidentAcknowledged(incident_id="inc-1", number="INC-1042", by="triage", channel=Channel.API),
        source="triage",
        tenant_id="acme",
        incident_id="inc-1",
        caused_by=cause,
    )

    assert effect.correlation_id == cause.correlation_id
    assert effect.causation_id == cause.id
    assert effect.id != cause.id


def test_the_kafka_key_is_the_incident_or_else_the_tenant() -> None:
    with_incident = envelope_for(reported(), source="intake", tenant_id="acme", incident_id="inc-1")
    tenant_wide = envelope_for(reported(), source="intake", tenant_id="acme")

    assert with_incident.key == "inc-1"
    assert tenant_wide.key == "acme"


def test_headers_name_the_event_without_parsing_its_value() -> None:
    envelope = envelope_for(reported(), source="intake", tenant_id="acme", incident_id="inc-1")

    headers = dict(event_headers(envelope))

    assert headers == {
        "event_id": envelope.id.encode(),
        "event_type": b"incident.reported",
        "event_version": b"1",
        "tenant_id": b"acme",
        "traceparent": envelope.traceparent.encode() if envelope.traceparent else b"",
    }
    assert envelope.traceparent


def test_every_event_type_is_registered_once_with_a_topic() -> None:
    assert len(EVENT_TYPES) == len(EVENT_MODELS)
    for model in EVENT_MODELS:
        assert EVENT_TYPES[model.TYPE] is model
        assert model.TOPIC.startswith("aftercare.")
        assert model.VERSION >= 1


# --- what is rejected, and how it is explained ---------------------------------------------


@pytest.mark.parametrize("raw", [b"not json {", b"\xff\xfe\x00", b""], ids=["garbage", "not-utf8", "empty"])
def test_a_value_that_is_not_json_is_rejected_as_invalid(raw: bytes) -> None:
    with pytest.raises(InvalidEvent, match="not JSON"):
        parse_envelope(raw)


@pytest.mark.parametrize("raw", [b"[1, 2]", b'"incident.reported"', b"42"])
def test_json_that_is_not_an_object_is_rejected_as_invalid(raw: bytes) -> None:
    with pytest.raises(InvalidEvent, match="must be a JSON object"):
        parse_envelope(raw)


def test_an_unknown_event_type_is_rejected_naming_the_type() -> None:
    raw = json.dumps(acknowledged_document(type="incident.exploded")).encode()

    with pytest.raises(UnknownEventType, match=re.escape("unknown event type 'incident.exploded'")):
        parse_envelope(raw)


def test_a_missing_event_type_is_rejected_as_unknown() -> None:
    document = acknowledged_document()
    del document["type"]

    with pytest.raises(UnknownEventType, match="unknown event type None"):
        parse_envelope(json.dumps(document))


@pytest.mark.parametrize("version", [0, -1, "1", None, 1.5])
def test_a_version_that_is_not_a_positive_integer_is_rejected(version: Any) -> None:
    raw = json.dumps(acknowledged_document(version=version))

    with pytest.raises(InvalidEvent, match="'version' must be a positive integer"):
        parse_envelope(raw)


def test_a_version_newer_than_this_code_knows_says_which_version_to_deploy() -> None:
    raw = json.dumps(acknowledged_document(version=IncidentAcknowledged.VERSION + 1))

    with pytest.raises(NewerVersionThanKnown) as rejected:
        parse_envelope(raw)

    assert str(rejected.value) == (
        "incident.acknowledged v2 (published by 'intake') is newer than this service knows (v1); "
        "deploy this service with an aftercare-events that knows incident.acknowledged v2, "
        "then replay this dead letter (aftercare dead-letters replay)"
    )
    assert isinstance(rejected.value, InvalidEvent), "dead-lettered, never retried"


def test_data_that_is_not_an_object_is_rejected() -> None:
    with pytest.raises(InvalidEvent, match="'data' must be a JSON object"):
        parse_envelope(json.dumps(acknowledged_document(data="ack")))


def test_data_that_fails_validation_is_rejected_naming_the_field() -> None:
    document = acknowledged_document()
    del document["data"]["by"]
    document["data"]["channel"] = "carrier-pigeon"

    with pytest.raises(InvalidEvent, match=re.escape("incident.acknowledged v1 failed validation")) as rejected:
        parse_envelope(json.dumps(document))

    assert "by" in str(rejected.value)
    assert "channel" in str(rejected.value)


def test_fields_this_code_does_not_know_are_ignored_when_reading_at_every_level() -> None:
    # A newer publisher added optional fields (an additive change keeps the version).
    envelope = envelope_for(reported(), source="intake", tenant_id="acme", incident_id="inc-1")
    document = json.loads(serialize(envelope))
    document["data"]["escalate_to"] = "ceo"
    document["data"]["reporter"]["pager"] = "+49 30 1234"
    document["data"]["attachments"][0]["checksum"] = "sha256:abc"
    document["partition_hint"] = 7

    parsed = parse_envelope(json.dumps(document))

    assert parsed == envelope


def test_a_known_field_is_still_validated_strictly_when_unknown_ones_are_ignored() -> None:
    document = acknowledged_document()
    document["data"]["escalate_to"] = "ceo"
    document["data"]["channel"] = "carrier-pigeon"

    with pytest.raises(InvalidEvent, match="channel"):
        parse_envelope(json.dumps(document))


def test_building_an_event_or_envelope_with_an_unknown_field_is_an_error() -> None:
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="escalate_to"):
        IncidentAcknowledged(incident_id="inc-1", number="INC-1", by="ops", channel=Channel.API, escalate_to="ceo")  # type: ignore[call-arg]
    with pytest.raises(ValidationError, match="pager"):
        Reporter(name="Ada", pager="+49 30 1234")  # type: ignore[call-arg]
    envelope = envelope_for(reported(), source="intake", tenant_id="acme")
    with pytest.raises(ValidationError, match="partition_hint"):
        Envelope[IncidentReported](**envelope.model_dump(), partition_hint=7)


def test_an_envelope_without_a_tenant_is_rejected() -> None:
    document = acknowledged_document()
    del document["tenant_id"]

    with pytest.raises(InvalidEvent, match="tenant_id"):
        parse_envelope(json.dumps(document))


def test_a_time_without_a_timezone_is_rejected() -> None:
    with pytest.raises(InvalidEvent, match="time"):
        parse_envelope(json.dumps(acknowledged_document(time="2025-03-04T05:06:07")))


def test_every_rejection_is_an_event_rejected_and_a_value_error() -> None:
    # The consumer dead-letters on EventRejected; callers that only know ValueError still work.
    assert issubclass(UnknownEventType, EventRejected)
    assert issubclass(InvalidEvent, EventRejected)
    assert issubclass(EventRejected, ValueError)


# --- old versions are upcast ------------------------------------------------------------------


def upcast_acknowledged_v1_v2(payload: dict[str, Any]) -> dict[str, Any]:
    """In the imagined v1, the person was called ``acknowledged_by``."""
    payload = dict(payload)
    payload["by"] = payload.pop("acknowledged_by")
    return payload


def old_acknowledged_v1() -> dict[str, Any]:
    document = acknowledged_document(version=1)
    document["data"]["acknowledged_by"] = document["data"].pop("by")
    return document


def test_an_old_version_is_upcast_to_the_current_one(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(IncidentAcknowledged, "VERSION", 2)
    monkeypatch.setitem(catalog.UPCASTERS, ("incident.acknowledged", 1), upcast_acknowledged_v1_v2)
    document = old_acknowledged_v1()

    parsed = parse_envelope(json.dumps(document))

    assert parsed.version == 2
    assert isinstance(parsed.data, IncidentAcknowledged)
    assert parsed.data.by == "ops@example.com"
    assert parsed.id == document["id"]


def test_upcasters_chain_across_several_versions(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(IncidentAcknowledged, "VERSION", 3)
    monkeypatch.setitem(catalog.UPCASTERS, ("incident.acknowledged", 1), upcast_acknowledged_v1_v2)
    monkeypatch.setitem(
        catalog.UPCASTERS,
        ("incident.acknowledged", 2),
        lambda payload: {**payload, "note": payload.get("note") or "(upcast from v2)"},
    )

    parsed = parse_envelope(json.dumps(old_acknowledged_v1()))

    assert parsed.version == 3
    assert isinstance(parsed.data, IncidentAcknowledged)
    assert (parsed.data.by, parsed.data.note) == ("ops@example.com", "(upcast from v2)")


def test_an_old_version_without_an_upcaster_is_rejected_naming_the_missing_step(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(IncidentAcknowledged, "VERSION", 2)

    with pytest.raises(InvalidEvent, match=re.escape("no upcaster from incident.acknowledged v1 to v2")):
        parse_envelope(json.dumps(old_acknowledged_v1()))


def test_the_current_version_is_not_touched_by_upcasters(monkeypatch: pytest.MonkeyPatch) -> None:
    def must_not_run(payload: dict[str, Any]) -> dict[str, Any]:
        raise AssertionError("upcaster ran on a current-version event")

    monkeypatch.setitem(catalog.UPCASTERS, ("incident.acknowledged", 1), must_not_run)

    assert parse_envelope(json.dumps(acknowledged_document())).version == 1


def test_an_upcast_payload_that_is_still_invalid_is_rejected(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(IncidentAcknowledged, "VERSION", 2)
    monkeypatch.setitem(catalog.UPCASTERS, ("incident.acknowledged", 1), lambda payload: payload)

    with pytest.raises(InvalidEvent, match="failed validation"):
        parse_envelope(json.dumps(old_acknowledged_v1()))


# --- retry backoff ----------------------------------------------------------------------------


def test_backoff_grows_exponentially_from_the_initial_delay() -> None:
    policy = RetryPolicy(initial_backoff_s=0.2, multiplier=2.0, max_backoff_s=100.0)

    assert [policy.backoff(attempt) for attempt in (1, 2, 3, 4)] == pytest.approx([0.2, 0.4, 0.8, 1.6])


def test_backoff_never_exceeds_the_maximum() -> None:
    policy = RetryPolicy(initial_backoff_s=1.0, multiplier=3.0, max_backoff_s=5.0)

    assert [policy.backoff(attempt) for attempt in (1, 2, 3, 10, 50)] == [1.0, 3.0, 5.0, 5.0, 5.0]


def test_the_default_policy_gives_up_after_a_few_quick_attempts() -> None:
    policy = RetryPolicy()

    waits = [policy.backoff(attempt) for attempt in range(1, policy.max_attempts)]
    assert policy.max_attempts == 5
    assert waits == sorted(waits)
    assert sum(waits) < 10, "a poison message should not block its partition for long"


def test_envelope_type_matches_payload_type() -> None:
    envelope = envelope_for(reported(), source="intake", tenant_id="acme")

    assert isinstance(envelope, Envelope)
    assert (envelope.type, envelope.version) == (IncidentReported.TYPE, IncidentReported.VERSION)


def test_an_envelope_carries_the_trace_it_was_made_in_so_an_outbox_publish_continues_it() -> None:
    from datetime import UTC, datetime

    from opentelemetry import trace

    from aftercare.events.envelope import envelope_for
    from aftercare.events.incidents import Channel, IncidentReported
    from aftercare.events.tracing import configure_tracing, incident_trace_id, tracer

    configure_tracing("tests")
    data = IncidentReported(
        incident_id="i-1",
        number="INC-1001",
        title="Mail relay down",
        channel=Channel.EMAIL,
        reported_at=datetime.now(UTC),
    )
    outside = envelope_for(data, source="intake", tenant_id="t", incident_id="i-1")
    with tracer().start_as_current_span("accept report"):
        trace_id = format(trace.get_current_span().get_span_context().trace_id, "032x")
        inside = envelope_for(data, source="intake", tenant_id="t", incident_id=None)
        # An unrelated span (a long-lived task, another incident's message) never pulls an
        # incident's event out of the incident's trace.
        unrelated = envelope_for(data, source="intake", tenant_id="t", incident_id="i-1")
    assert unrelated.traceparent is not None and unrelated.traceparent.split("-")[1] == incident_trace_id("i-1")
    # Handling a message of the incident's trace: the event is that span's child.
    from aftercare.events.tracing import extract_trace_context

    context = extract_trace_context([("traceparent", outside.traceparent.encode())])  # type: ignore[union-attr]
    with tracer().start_as_current_span("handle", context=context):
        span_id = format(trace.get_current_span().get_span_context().span_id, "016x")
        child = envelope_for(data, source="triage", tenant_id="t", incident_id="i-1")
    assert child.traceparent == f"00-{incident_trace_id('i-1')}-{span_id}-01"
    # Outside any span (a request, a timer) the event joins its incident's own trace.
    assert outside.traceparent is not None and outside.traceparent.split("-")[1] == incident_trace_id("i-1")
    again = envelope_for(data, source="remediation", tenant_id="t", incident_id="i-1")
    assert again.traceparent is not None and again.traceparent.split("-")[1] == incident_trace_id("i-1")
    assert incident_trace_id("i-2") != incident_trace_id("i-1")
    assert inside.traceparent is not None and inside.traceparent.split("-")[1] == trace_id
