"""The dashboard's pure parts: per-tenant incidents opened per hour, the incident's trace id,
and the sparkline drawn from the counts."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from aftercare.events.envelope import envelope_for
from aftercare.events.incidents import Channel, IncidentReported, IncidentResolved
from aftercare.notifier.domain.incident_view import add_entry, entry_of, fold, opened_per_hour, trace_id_of
from aftercare.notifier.entrypoints.dashboard import sparkline

NOW = datetime(2026, 3, 2, 12, 30, tzinfo=UTC)
TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"


def test_incidents_are_counted_per_tenant_in_the_hour_they_were_opened_oldest_first() -> None:
    views = [
        {"tenant_id": "acme", "reported_at": NOW - timedelta(minutes=10)},
        {"tenant_id": "acme", "reported_at": NOW - timedelta(minutes=50)},
        {"tenant_id": "acme", "reported_at": NOW - timedelta(hours=23, minutes=59)},
        {"tenant_id": "acme", "reported_at": NOW - timedelta(hours=24, minutes=1)},  # older than a day
        {"tenant_id": "globex", "reported_at": NOW - timedelta(hours=2, minutes=5)},
        {"tenant_id": "globex", "reported_at": None},
    ]
    counts = opened_per_hour(views, NOW)
    assert list(counts) == ["acme", "globex"]
    assert counts["acme"][-1] == 2 and counts["acme"][0] == 1 and sum(counts["acme"]) == 3
    assert counts["globex"][-3] == 1 and sum(counts["globex"]) == 1


def test_the_sparkline_has_one_point_per_hour_and_says_the_total() -> None:
    svg = sparkline("acme", [0] * 22 + [1, 3])
    assert "id='spark-acme'" in svg and "data-counts='" + ",".join(["0"] * 22 + ["1", "3"]) + "'" in svg
    points = svg.split("points='")[1].split("'")[0].split()
    assert len(points) == 24 and points[-1] == "120.0,2.0" and points[0] == "0.0,22.0"
    assert "4 incidents opened in the last 24 h" in svg


def test_the_incident_keeps_the_trace_its_report_started() -> None:
    assert trace_id_of(f"00-{TRACE}-00f067aa0ba902b7-01") == TRACE
    assert trace_id_of("00-" + "0" * 32 + "-00f067aa0ba902b7-01") is None
    assert trace_id_of("garbage") is None and trace_id_of(None) is None
    reported = envelope_for(
        IncidentReported(incident_id="i1", number="INC-1", title="t", channel=Channel.API, reported_at=NOW),
        source="intake",
        tenant_id="acme",
        incident_id="i1",
    ).model_copy(update={"traceparent": f"00-{TRACE}-00f067aa0ba902b7-01"})
    resolved = envelope_for(
        IncidentResolved(incident_id="i1", number="INC-1", by="ops"),
        source="intake",
        tenant_id="acme",
        incident_id="i1",
    ).model_copy(update={"traceparent": "00-11111111111111111111111111111111-00f067aa0ba902b7-01"})
    entries = add_entry([], entry_of(resolved)) or []
    entries = add_entry(entries, entry_of(reported)) or []
    assert fold("i1", "acme", entries)["trace_id"] == TRACE
