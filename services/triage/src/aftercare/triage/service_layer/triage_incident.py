"""Use case: triage an incident when it is reported, when its facts change, when a person
reclassifies it, and keep grouping and flapping state as incidents open and resolve.

Each step: read triage's view of the incident -> decide (domain) -> one write carrying the
events in its outbox -> publish. Event ids are derived from the event being handled, so a
redelivered event republishes the same ids and consumers drop the copy.
"""

from __future__ import annotations

import asyncio
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import structlog

from aftercare.events.catalog import parse_envelope
from aftercare.events.envelope import Envelope, envelope_for
from aftercare.events.incidents import (
    IncidentClosed,
    IncidentReclassified,
    IncidentReported,
    IncidentResolved,
    IncidentUpdated,
)
from aftercare.events.notifications import NotificationRequested
from aftercare.events.tenants import NotificationChannel, Priority, TenantUpserted
from aftercare.events.triage import IncidentGrouped, IncidentTriaged
from aftercare.triage.adapters.rule_store import RuleBook
from aftercare.triage.adapters.store import FlapHistory, GroupingHeads, TenantDirectory, TriageIncidents
from aftercare.triage.domain import grouping
from aftercare.triage.domain.decision import Decision, ManualChoice, decide
from aftercare.triage.domain.rules import Facts
from aftercare.triage.evaluation import shipped_classifier

log = structlog.stdlib.get_logger("aftercare.triage")

SOURCE = "triage"
_IDS = uuid.UUID("6f1c8a8e-3b0e-4d59-9f59-0c3e5c1b7a21")
# Updates whose words may change the reading; occurrences only repeat what is known.
FACT_KINDS = frozenset({"details", "comment"})


def derived_id(cause: str, what: str) -> str:
    """The id of an event triage publishes because of ``cause``: the same on every redelivery."""
    return str(uuid.uuid5(_IDS, f"{cause}|{what}"))


class TenantNotKnownYet(RuntimeError):
    """The incident's tenant has not reached triage's copy yet; retried, then dead-lettered."""


@dataclass
class TriageResult:
    decision: Decision
    grouped: grouping.Grouping | None
    flapping: grouping.Flapping


def facts_of(document: dict[str, Any]) -> Facts:
    stored = document["facts"]
    extra = "\n".join(document.get("more_text", []))
    return Facts(
        tenant_id=document["tenant_id"],
        channel=stored["channel"],
        severity=stored["severity"],
        title=stored["title"],
        description=(stored.get("description") or "") + ("\n" + extra if extra else ""),
        source=stored.get("source"),
        system=stored.get("system"),
        labels=stored.get("labels") or {},
    )


def manual_of(document: dict[str, Any]) -> ManualChoice | None:
    manual = document.get("manual")
    if not manual:
        return None
    priority = manual.get("priority")
    return ManualChoice(
        priority=Priority(priority) if priority else None, category=manual.get("category"), by=manual.get("by")
    )


def decision_document(decision: Decision) -> dict[str, Any]:
    return {
        "category": decision.category,
        "system": decision.system,
        "priority": decision.priority.value,
        "impact": decision.impact,
        "urgency": decision.urgency,
        "runbook": decision.runbook,
        "response_due_at": decision.response_due_at,
        "resolution_due_at": decision.resolution_due_at,
        "confidence": decision.confidence,
        "rules": [fired.rule for fired in decision.rules_fired],
    }


def triaged_event(
    document: dict[str, Any], decision: Decision, *, duplicate_of: str | None, flap: grouping.Flapping
) -> IncidentTriaged:
    explanation = decision.explanation
    if flap.flapping:
        explanation += f"\nFlapping: this source {flap.detail}; paging held."
    return IncidentTriaged(
        incident_id=document["_id"],
        number=document["number"],
        priority=decision.priority,
        category=decision.category,
        response_due_at=decision.response_due_at,
        resolution_due_at=decision.resolution_due_at,
        duplicate_of=duplicate_of,
        rule=decision.rules_fired[0].rule if decision.rules_fired else None,
        system=decision.system,
        runbook=decision.runbook,
        impact=decision.impact,
        urgency=decision.urgency,
        explanation=explanation,
        rules_fired=decision.rules_fired,
        confidence=decision.confidence,
        flapping=flap.flapping,
        hold_paging=flap.flapping,
        manual_fields=decision.manual_fields,
        sla_tier=decision.sla_tier,
    )


def flap_key(tenant_id: str, document: dict[str, Any], decision_system: str | None, category: str) -> str:
    facts = document["facts"]
    key = facts.get("dedup_key") or facts.get("source") or grouping.fingerprint(tenant_id, decision_system, category)
    return f"{tenant_id}|{key}"


class IncidentTriage:
    def __init__(
        self,
        incidents: TriageIncidents,
        tenants: TenantDirectory,
        rules: RuleBook,
        heads: GroupingHeads,
        flaps: FlapHistory,
        *,
        on_triaged: Any = None,
    ) -> None:
        self.incidents = incidents
        self.tenants = tenants
        self.rules = rules
        self.heads = heads
        self.flaps = flaps
        # Called with (tenant, incident document, decision) after a triage is written: starts a diagnosis.
        self.on_triaged = on_triaged

    async def _tenant(self, tenant_id: str) -> TenantUpserted:
        tenant = await self.tenants.get(tenant_id)
        if tenant is None:
            raise TenantNotKnownYet(f"tenant {tenant_id!r} is not in triage's tenant copy yet")
        return tenant

    # --- reported --------------------------------------------------------------------------

    async def reported(self, envelope: Envelope[IncidentReported]) -> None:
        event = envelope.data
        tenant = await self.tenants.get(envelope.tenant_id)
        if tenant is None:
            # Tenants and incidents travel on different topics: the tenant may simply not be
            # here yet. The report waits, and is triaged when its tenant arrives.
            await self.incidents.save(
                event.incident_id,
                {
                    "$set": {
                        "tenant_id": envelope.tenant_id,
                        "awaiting_tenant": True,
                        "report_envelope": envelope.model_dump_json(),
                    }
                },
            )
            # The tenant may have arrived (another partition, another instance) after its
            # handler looked for waiting reports and before this one was parked: look again.
            # Whoever takes the parked report (here or there) triages it, once.
            tenant = await self.tenants.get(envelope.tenant_id, fresh=True)
            if tenant is None:
                log.warning("incident waits for its tenant to reach triage", tenant_id=envelope.tenant_id)
                return
            if not await self.incidents.take_parked(event.incident_id):
                return
        await self._triage_report(envelope, tenant)

    async def _triage_report(self, envelope: Envelope[IncidentReported], tenant: TenantUpserted) -> None:
        event = envelope.data
        existing = await self.incidents.get(event.incident_id) or {}
        document: dict[str, Any] = {
            "_id": event.incident_id,
            "tenant_id": envelope.tenant_id,
            "number": event.number,
            "status": existing.get("status", "open"),
            "reported_at": event.reported_at,
            "facts": {
                "channel": event.channel.value,
                "severity": event.severity.value,
                "title": event.title,
                "description": event.description,
                "source": event.source,
                "system": event.system,
                "labels": event.labels,
                "dedup_key": event.dedup_key,
                "reporter_email": event.reporter.email,
            },
            "more_text": existing.get("more_text", []),
            "manual": existing.get("manual"),
        }
        rules = await self.rules.current()
        decision = decide(
            facts_of(document),
            tenant,
            rules,
            reported_at=event.reported_at,
            manual=manual_of(document),
            classifier=shipped_classifier().predict,
        )

        me = grouping.OpenIncident(
            incident_id=event.incident_id,
            number=event.number,
            reported_at=event.reported_at,
            system=decision.system,
            category=decision.category,
            dedup_key=event.dedup_key,
        )
        source_key = flap_key(envelope.tenant_id, document, decision.system, decision.category)
        # The source's history does not depend on the grouping: read it in the same round trip.
        (grouped, held), (opened, resolved) = await asyncio.gather(
            self._group(envelope.tenant_id, me, event.channel.value, open_now=document["status"] == "open"),
            self.flaps.get(source_key),
        )
        # The store keeps milliseconds: this report's own open, stored by an earlier delivery, is not "before" it.
        reported_ms = event.reported_at.replace(microsecond=event.reported_at.microsecond // 1000 * 1000)
        flap = grouping.flapping([m for m in opened if m < reported_ms], resolved, event.reported_at)

        events: list[Envelope[Any]] = []
        triaged = triaged_event(
            document, decision, duplicate_of=grouped.duplicate_of.incident_id if grouped else None, flap=flap
        )
        events.append(self._envelope(triaged, envelope, "triaged"))
        if grouped is not None:
            head = grouped.duplicate_of
            events.append(
                self._envelope(
                    IncidentGrouped(
                        incident_id=event.incident_id,
                        number=event.number,
                        duplicate_of=head.incident_id,
                        duplicate_of_number=head.number,
                        reason=grouped.reason,
                        detail=grouped.detail,
                        channel=event.channel.value,
                    ),
                    envelope,
                    "grouped",
                )
            )
            if event.channel.value in grouping.PEOPLE_CHANNELS and event.reporter.email:
                # The person is told at once that the problem is known and being worked on.
                events.append(
                    self._envelope(
                        NotificationRequested(
                            notification_id=derived_id(envelope.id, "known-problem"),
                            incident_id=head.incident_id,
                            channel=NotificationChannel.EMAIL,
                            recipient=event.reporter.email,
                            template="incident-known",
                            subject=f"{head.number}: we already know about this problem and are working on it",
                            context={
                                "number": head.number,
                                "your_number": event.number,
                                "your_incident_id": event.incident_id,
                                "system": head.system or "",
                                "title": event.title,
                            },
                        ),
                        envelope,
                        "known-problem",
                        incident_id=head.incident_id,
                    )
                )
        update = {
            "$set": {
                **{key: value for key, value in document.items() if key != "_id"},
                "decision": decision_document(decision),
                "duplicate_of": grouped.duplicate_of.incident_id if grouped else None,
                "flapping": flap.flapping,
                "group_keys": held,
                "flap_key": source_key,
                "triaged_at": datetime.now(UTC),
                "awaiting_tenant": False,
            },
            "$unset": {"report_envelope": ""},
        }
        # Side by side: a redelivery repeats both (the open is recorded once, the events keep their ids).
        await asyncio.gather(
            self.incidents.save(event.incident_id, update, *events),
            self.flaps.record(source_key, "opened", event.reported_at, known=(opened, resolved)),
        )
        log.info(
            "incident triaged",
            incident_id=event.incident_id,  # also when triaged on its tenant's arrival
            priority=decision.priority.value,
            category=decision.category,
            system=decision.system,
            duplicate_of=grouped.duplicate_of.number if grouped else None,
            flapping=flap.flapping,
        )
        if self.on_triaged is not None and grouped is None and not flap.flapping:
            await self.on_triaged(tenant, {**document, "decision": decision_document(decision)}, decision)

    async def _group(
        self, tenant_id: str, me: grouping.OpenIncident, channel: str, *, open_now: bool
    ) -> tuple[grouping.Grouping | None, list[str]]:
        """Claim this incident's group keys, in the order grouping prefers them, until one is held
        by an incident this one repeats. Returns that grouping (or None) and the keys this incident
        holds (released when it resolves).

        Claiming before anything is published means the first incident's key is in place before
        its IncidentTriaged is out, and concurrent reports of one problem see one holder.

        The holders of all keys are read first, in one round trip: a repeat (most reports of an
        alert storm) is then grouped from what it read, without a claim that could only fail
        (an insert refused, then the same read) or a key taken only to be given back. A key is
        claimed only where the read found it free, held by this incident, or held outside the
        window; what a claim finds instead (another report took it meanwhile) is grouped as
        before."""
        keys = grouping.group_keys(tenant_id, dedup_key=me.dedup_key, system=me.system, category=me.category)
        seen = await asyncio.gather(*(self.heads.holder(key.id) for key in keys))

        def window_start(key: grouping.GroupKey) -> datetime | None:
            return None if key.lasts_until_resolved else me.reported_at - grouping.GROUP_WINDOW

        def stays(key: grouping.GroupKey, holder: grouping.OpenIncident | None) -> bool:
            """Held by another incident that a claim would leave in place."""
            start = window_start(key)
            return (
                holder is not None
                and holder.incident_id != me.incident_id
                and (start is None or holder.reported_at >= start or not open_now)
            )

        def group_among(others: list[grouping.OpenIncident]) -> grouping.Grouping | None:
            return grouping.find_group(
                incident_id=me.incident_id,
                channel=channel,
                dedup_key=me.dedup_key,
                system=me.system,
                category=me.category,
                reported_at=me.reported_at,
                open_incidents=others,
            )

        # What the claims below would decide if nothing changes meanwhile: a key this incident
        # would hold adds nobody to compare with, so only the holders that stay count.
        others: list[grouping.OpenIncident] = []
        mine: list[str] = []  # held since an earlier delivery of this report
        for key, read in zip(keys, seen, strict=True):
            if read is not None and read.incident_id == me.incident_id:
                mine.append(key.id)
            elif read is not None and stays(key, read):
                others.append(read)
                if (grouped := group_among(others)) is not None:
                    if mine:  # a duplicate holds nothing
                        await self.heads.release(mine, me.incident_id)
                    return grouped, []

        held: list[str] = []
        others = []
        for key, read in zip(keys, seen, strict=True):
            if stays(key, read) or not open_now:
                holder = read  # a claim would be refused and read the same holder
            else:
                holder = await self.heads.claim(key.id, me, take_over_before=window_start(key))
            if holder is None:
                continue
            if holder.incident_id == me.incident_id:
                held.append(key.id)
                continue
            others.append(holder)
            grouped = group_among(others)
            if grouped is not None:
                # A duplicate holds nothing: give back what this call took on the way.
                await self.heads.release(held, me.incident_id)
                return grouped, []
        return None, held

    async def tenant_arrived(self, envelope: Envelope[TenantUpserted]) -> None:
        """Triage the reports that waited for this tenant."""
        waiting = self.incidents.collection.find(
            {"tenant_id": envelope.data.tenant_id, "awaiting_tenant": True}, {"report_envelope": 1}
        )
        async for document in waiting:
            report = parse_envelope(document["report_envelope"])
            if isinstance(report.data, IncidentReported) and await self.incidents.take_parked(document["_id"]):
                await self._triage_report(report, envelope.data)  # type: ignore[arg-type]

    def _envelope(self, data: Any, cause: Envelope[Any], what: str, *, incident_id: str | None = None) -> Envelope[Any]:
        return envelope_for(
            data,
            source=SOURCE,
            tenant_id=cause.tenant_id,
            incident_id=incident_id or cause.incident_id,
            caused_by=cause,
            event_id=derived_id(cause.id, what),
        )

    # --- facts changed / a person's choice ---------------------------------------------------

    async def _retriage(self, envelope: Envelope[Any], document: dict[str, Any], why: str) -> None:
        tenant = await self._tenant(document["tenant_id"])
        rules = await self.rules.current()
        decision = decide(
            facts_of(document),
            tenant,
            rules,
            reported_at=document["reported_at"],
            manual=manual_of(document),
            classifier=shipped_classifier().predict,
        )
        before = document.get("decision") or {}
        changed = (
            before.get("category"),
            before.get("system"),
            before.get("priority"),
            before.get("runbook"),
        ) != (decision.category, decision.system, decision.priority.value, decision.runbook)
        update: dict[str, Any] = {
            "$set": {
                "decision": decision_document(decision),
                "more_text": document.get("more_text", []),
                "manual": document.get("manual"),
            }
        }
        if not changed:
            await self.incidents.save(document["_id"], update)
            return
        flap = grouping.Flapping(bool(document.get("flapping")), "")
        triaged = triaged_event(document, decision, duplicate_of=document.get("duplicate_of"), flap=flap)
        triaged = triaged.model_copy(update={"explanation": f"Triaged again: {why}.\n{triaged.explanation}"})
        await self.incidents.save(document["_id"], update, self._envelope(triaged, envelope, "retriaged"))

    async def updated(self, envelope: Envelope[IncidentUpdated]) -> None:
        event = envelope.data
        if event.kind not in FACT_KINDS or not event.message.strip():
            return
        document = await self.incidents.get(event.incident_id)
        if document is None or "facts" not in document:
            return  # not triaged yet: the report's own triage will see the stored words
        if event.message in document.get("more_text", []):
            return
        document["more_text"] = [*document.get("more_text", []), event.message[:4000]]
        await self._retriage(envelope, document, f"new {event.kind} from {event.channel.value}")

    async def reclassified(self, envelope: Envelope[IncidentReclassified]) -> None:
        event = envelope.data
        document = await self.incidents.get(event.incident_id)
        manual = dict((document or {}).get("manual") or {})
        if event.priority is not None:
            manual["priority"] = event.priority.value
        if event.category is not None:
            manual["category"] = event.category
        manual["by"] = event.by
        if document is None or "facts" not in document:
            # Remember the choice; the report's triage will keep it.
            await self.incidents.save(event.incident_id, {"$set": {"manual": manual, "tenant_id": envelope.tenant_id}})
            return
        document["manual"] = manual
        await self._retriage(envelope, document, f"{event.by} set it by hand")

    # --- closed ------------------------------------------------------------------------------

    async def resolved(self, envelope: Envelope[IncidentResolved] | Envelope[IncidentClosed]) -> None:
        incident_id = envelope.data.incident_id
        document = await self.incidents.get(incident_id)
        if document is None:
            return
        if document.get("status") != "resolved":
            await self.incidents.save(incident_id, {"$set": {"status": "resolved", "resolved_at": envelope.time}})
        await self.heads.release(document.get("group_keys") or [], incident_id)
        if document.get("flap_key") and isinstance(envelope.data, IncidentResolved):
            await self.flaps.record(document["flap_key"], "resolved", envelope.time)
