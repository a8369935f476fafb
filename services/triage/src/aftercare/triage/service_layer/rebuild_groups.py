"""Use case: rebuild triage's grouping state (first incident per group key, flapping history)
from the Kafka log, after it was lost or is suspected wrong.

Everything in that state is derived from events: which incidents were reported (incidents
topic: ``IncidentReported``, when they resolved or closed), and what triage decided about each
(triage topic: its first ``IncidentTriaged``, whose ``duplicate_of`` says whether it was a first
incident, and its system and category, which are the group keys). Replaying those in time order
through the same claims the live path makes gives back the same holders: a first incident
claims its keys when it was triaged and gives them back when it resolved or closed.

Rules are not re-run: the decisions are taken as they were made and announced.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from pymongo.asynchronous.collection import AsyncCollection

from aftercare.events.envelope import Envelope
from aftercare.events.incidents import IncidentClosed, IncidentReported, IncidentResolved
from aftercare.events.triage import IncidentTriaged
from aftercare.triage.adapters.store import FLAP_KEEP, FlapHistory, GroupingHeads
from aftercare.triage.domain import grouping
from aftercare.triage.service_layer.triage_incident import flap_key


@dataclass
class RebuildSummary:
    reports: int = 0
    decisions: int = 0
    first_incidents: int = 0
    resolved: int = 0
    heads: int = 0
    flap_sources: int = 0
    skipped: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class _Step:
    at: datetime
    order: int  # a claim before a release at the same moment
    incident_id: str


async def rebuild_grouping_state(
    incidents_log: list[Envelope[Any]],
    triage_log: list[Envelope[Any]],
    heads: GroupingHeads,
    flaps: FlapHistory,
    incident_documents: AsyncCollection[dict[str, Any]],
) -> RebuildSummary:
    """Drop the grouping state and replay it from the two logs (read by the caller)."""
    summary = RebuildSummary()
    reports: dict[str, Envelope[IncidentReported]] = {}
    ended: dict[str, datetime] = {}
    resolves: dict[str, list[datetime]] = defaultdict(list)
    for envelope in incidents_log:
        data = envelope.data
        if isinstance(data, IncidentReported):
            reports.setdefault(data.incident_id, envelope)
        elif isinstance(data, IncidentResolved | IncidentClosed):
            ended.setdefault(data.incident_id, envelope.time)
            if isinstance(data, IncidentResolved) and envelope.time not in resolves[data.incident_id]:
                resolves[data.incident_id].append(envelope.time)
    decisions: dict[str, Envelope[IncidentTriaged]] = {}
    for envelope in sorted((e for e in triage_log if isinstance(e.data, IncidentTriaged)), key=lambda e: e.time):
        decisions.setdefault(envelope.data.incident_id, envelope)
    summary.reports, summary.decisions = len(reports), len(decisions)

    await heads.drop()
    await flaps.drop()

    steps: list[_Step] = []
    for incident_id, decided in decisions.items():
        if incident_id not in reports:
            summary.skipped.append(incident_id)  # its report is older than the topic keeps
            continue
        if decided.data.duplicate_of is None:
            summary.first_incidents += 1
            if incident_id not in ended or ended[incident_id] > decided.time:
                steps.append(_Step(decided.time, 0, incident_id))
        if incident_id in ended:
            steps.append(_Step(ended[incident_id], 1, incident_id))
    held: dict[str, list[str]] = {}
    for step in sorted(steps, key=lambda s: (s.at, s.order)):
        report = reports[step.incident_id].data
        decision = decisions[step.incident_id].data
        if step.order == 1:
            summary.resolved += 1
            await heads.release(held.get(step.incident_id, []), step.incident_id)
            continue
        me = grouping.OpenIncident(
            incident_id=report.incident_id,
            number=report.number,
            reported_at=report.reported_at,
            system=decision.system,
            category=decision.category,
            dedup_key=report.dedup_key,
        )
        tenant_id = reports[step.incident_id].tenant_id
        mine: list[str] = []
        for key in grouping.group_keys(tenant_id, dedup_key=me.dedup_key, system=me.system, category=me.category):
            window_start = None if key.lasts_until_resolved else me.reported_at - grouping.GROUP_WINDOW
            holder = await heads.claim(key.id, me, take_over_before=window_start)
            if holder.incident_id == me.incident_id:
                mine.append(key.id)
        held[step.incident_id] = mine

    # Each incident's own record of the keys it holds (read when it resolves).
    for incident_id, keys in held.items():
        await incident_documents.update_one({"_id": incident_id}, {"$set": {"group_keys": keys}})

    opened: dict[str, list[datetime]] = defaultdict(list)
    resolved: dict[str, list[datetime]] = defaultdict(list)
    for incident_id, decided in decisions.items():
        if incident_id not in reports:
            continue
        report_envelope = reports[incident_id]
        report = report_envelope.data
        facts = {"facts": {"dedup_key": report.dedup_key, "source": report.source}}
        source = flap_key(report_envelope.tenant_id, facts, decided.data.system, decided.data.category)
        opened[source].append(report.reported_at)
        resolved[source].extend(resolves.get(incident_id, []))
    sources = opened.keys() | resolved.keys()
    for source in sources:
        added = {
            what: {"$each": sorted(set(moments))[-FLAP_KEEP:]}
            for what, moments in (("opened", opened[source]), ("resolved", resolved[source]))
            if moments
        }
        # Added to, not replaced: an open or resolve a running instance recorded meanwhile stays.
        await flaps.collection.update_one({"_id": source}, {"$addToSet": added}, upsert=True)
    summary.flap_sources = len(sources)
    summary.heads = await heads.collection.count_documents({})
    return summary
