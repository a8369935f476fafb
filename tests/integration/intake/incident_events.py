"""Reading back what intake announced on Kafka, for the intake tests."""

from __future__ import annotations

import json
from typing import Any

from aftercare.events import topics

from .conftest import IntakeUnderTest
from kafka_helpers import headers_of, read_all


def distinct(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The first copy of each event. Kafka may carry an event twice (publishing is at least once);
    consumers deduplicate by event id, and so do the tests: a second *different* event is what
    must never appear."""
    seen: set[str] = set()
    return [event for event in events if not (event["id"] in seen or seen.add(event["id"]))]


async def incident_events(intake: IntakeUnderTest, incident_id: str) -> list[dict[str, Any]]:
    """Every event on the incidents topic for one incident (its Kafka key), in publish order."""
    records = await read_all(intake.infrastructure.bootstrap_servers, topics.INCIDENTS)
    return distinct(
        [json.loads(r.value) | {"_headers": headers_of(r)} for r in records if r.key == incident_id.encode()]
    )


def of_type(events: list[dict[str, Any]], event_type: str) -> list[dict[str, Any]]:
    return [event for event in events if event["type"] == event_type]
