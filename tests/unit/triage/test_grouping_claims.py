"""Grouping reads the holders of an incident's keys first and claims only what it may take: a
repeat is grouped without a write, and the decision is the one the claims would give."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from aftercare.triage.domain import grouping
from aftercare.triage.domain.grouping import OpenIncident
from aftercare.triage.service_layer.triage_incident import IncidentTriage

AT = datetime(2026, 12, 1, 8, 0, tzinfo=UTC)


class _Heads:
    """Group keys in a dict, with the writes counted (the store's GroupingHeads, in memory)."""

    def __init__(self) -> None:
        self.holders: dict[str, OpenIncident] = {}
        self.writes: list[tuple[str, str]] = []

    async def holder(self, key: str) -> OpenIncident | None:
        return self.holders.get(key)

    async def claim(self, key: str, head: OpenIncident, *, take_over_before: datetime | None) -> OpenIncident:
        self.writes.append(("claim", key))
        holder = self.holders.get(key)
        if holder is None or (take_over_before is not None and holder.reported_at < take_over_before):
            self.holders[key] = head
            return head
        return holder

    async def release(self, keys: list[str], incident_id: str) -> None:
        for key in keys:
            self.writes.append(("release", key))
            if self.holders.get(key) is not None and self.holders[key].incident_id == incident_id:
                del self.holders[key]


def _incident(number: int, dedup_key: str, *, minutes: int = 0, category: str = "database") -> OpenIncident:
    return OpenIncident(
        f"id-{number}", f"INC-{number}", AT + timedelta(minutes=minutes), "billing-db", category, dedup_key
    )


async def _group(heads: _Heads, me: OpenIncident, channel: str = "alertmanager") -> Any:
    triage = IncidentTriage(None, None, None, heads, None)  # type: ignore[arg-type]
    return await triage._group("acme", me, channel, open_now=True)


async def test_a_repeat_is_grouped_from_the_holders_it_read_without_a_write() -> None:
    heads = _Heads()
    grouped, held = await _group(heads, _incident(1, "disk-1"))
    assert grouped is None and len(held) == 3  # dedup key, fingerprint, system

    heads.writes.clear()
    grouped, held = await _group(heads, _incident(2, "disk-1", minutes=1))
    assert grouped is not None and grouped.reason == "dedup_key" and grouped.duplicate_of.incident_id == "id-1"
    assert held == [] and heads.writes == []

    # Another dedup key on the same system and category: grouped by fingerprint, and its own dedup
    # key is not taken only to be given back.
    grouped, held = await _group(heads, _incident(3, "disk-2", minutes=2))
    assert grouped is not None and grouped.reason == "fingerprint" and grouped.duplicate_of.incident_id == "id-1"
    assert held == [] and heads.writes == []
    assert "dedup|acme|disk-2" not in heads.holders


async def test_keys_free_or_held_outside_the_window_are_claimed_as_before() -> None:
    heads = _Heads()
    await _group(heads, _incident(1, "disk-1"))
    # Another category, an hour later: the fingerprint is new, the system key is taken over (its
    # holder is outside the window), the dedup key stays with incident 1 (held until resolved).
    later = _incident(4, "disk-9", minutes=60 + grouping.GROUP_WINDOW.seconds // 60, category="performance")
    grouped, held = await _group(heads, later)
    assert grouped is None
    assert held == ["dedup|acme|disk-9", "fingerprint|acme|billing-db|performance", "system|acme|billing-db"]
    assert heads.holders["system|acme|billing-db"].incident_id == "id-4"
    assert heads.holders["dedup|acme|disk-1"].incident_id == "id-1"
