"""Prometheus metrics the shared plumbing records; services add their own beside them."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

EVENTS_PUBLISHED = Counter("aftercare_events_published_total", "Events acknowledged by Kafka.", ["topic", "type"])
EVENTS_CONSUMED = Counter(
    "aftercare_events_consumed_total",
    "Messages taken off Kafka, by outcome (handled, duplicate, ignored, dead_lettered).",
    ["group", "topic", "outcome"],
)
HANDLER_FAILURES = Counter("aftercare_event_handler_failures_total", "Handler attempts that raised.", ["group", "type"])
HANDLER_SECONDS = Histogram(
    "aftercare_event_handler_seconds", "Time spent handling one event (all its handlers).", ["group", "type"]
)
OUTBOX_DEAD_LETTERED = Counter(
    "aftercare_outbox_dead_lettered_total",
    "Outbox entries that could never be published (e.g. over Kafka's size limit), moved to the "
    "outbox_dead_letters collection so the others go on; any increase needs a person.",
    ["collection", "reason"],
)
CONSUMER_LAG = Gauge(
    "aftercare_consumer_lag_messages",
    "Messages on a partition this consumer group has not finished yet (log end minus committed offset), "
    "as this instance last saw it; a lag that keeps growing means the group falls behind.",
    ["group", "topic", "partition"],
)
DEAD_LETTERS = Counter(
    "aftercare_dead_letters_total",
    "Messages moved to a dead-letter topic (`aftercare dead-letters list` shows them); any increase needs a person.",
    ["group", "topic", "error_type"],
)
