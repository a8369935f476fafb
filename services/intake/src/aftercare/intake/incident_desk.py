"""The incident desk: every channel opens, updates and moves incidents through here.

Each change is one single-document write to ``incidents`` that also stores the event announcing
it in the document's outbox; ``flush`` then publishes it and only returns once Kafka has it, so
a channel that answers "accepted" after a desk call has a durable event behind it. Nothing here
needs a transaction (the embedded store has none):

* numbers (INC-1042) come from a per-tenant counter document (increments that arrive together
  go as one ``$inc``, see ``BatchedCounter``), and the unique index on (tenant, number) has the
  last word: a number another instance handed out too is replaced;
* "is there an open incident for this dedup key?" is an ``open_incident_keys`` document whose
  ``_id`` is the tenant and key, so two instances racing on the same alert open one incident;
* a consumed event is applied once: its id goes into ``applied_events`` in the same write, and
  the write's filter excludes documents that already have it.

Several intake instances may share one store: each write is atomic on one document (on the
embedded store too, through its build patch), and a read-then-write that announces what it read
(an occurrence's count) writes only over what it read and tries again otherwise. Within this
process, the reads and writes of one incident still take turns (``_turn``) and a tenant's
number counter is incremented by one batch at a time: not for correctness any more, but so that
one process's own concurrent reports of an incident do not keep missing each other's writes and
retrying, and so that a burst costs one counter write instead of one per report. The embedded
store answers lookups from indexes only for ``_id`` and for equalities on indexed fields; the
accept path filters by ``_id``.
"""

from __future__ import annotations

import asyncio
import uuid
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import structlog
from pymongo import ASCENDING, DESCENDING, ReturnDocument
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import DuplicateKeyError

from aftercare.events import outbox
from aftercare.events.envelope import Envelope, Event, envelope_for
from aftercare.events.incidents import (
    AttachmentRef,
    Channel,
    IncidentAcknowledged,
    IncidentClosed,
    IncidentReopened,
    IncidentReported,
    IncidentResolved,
    IncidentUpdated,
    Reporter,
)
from aftercare.events.incidents import IncidentStatus as Status
from aftercare.events.outbox import OutboxRelay
from aftercare.events.producer import EventProducer
from aftercare.intake.domain import lifecycle
from aftercare.intake.domain.incident import (
    MAX_OCCURRENCES_ON_TIMELINE,
    Incident,
    IncidentReport,
    TimelineEntry,
    format_number,
)
from aftercare.intake.rate_limit import BatchedCounter

log = structlog.stdlib.get_logger("aftercare.intake.incident_desk")

SOURCE = "intake"

# How often a new incident gets another number when the one it got is taken (a counter document
# lost or restored from a backup; the unique index on (tenant, number) has the last word).
NUMBER_ATTEMPTS = 5
# Occurrences of one incident counted by other instances between a read and its write.
OCCURRENCE_ATTEMPTS = 50


class IncidentNotFound(LookupError):
    pass


@dataclass(frozen=True)
class Outcome:
    """What a channel call did: the incident as it is now and whether it was new."""

    incident: Incident
    created: bool
    events: Sequence[Envelope[Any]] = ()


# Events a channel wants published with an incident's own event, stored in the same outbox write
# so the two cannot drift apart (e.g. the acknowledgement email intake owes an email's sender).
# Called with the incident's id and number, which are only known once the desk writes it.
FollowUps = Callable[[str, str], Sequence[Event]]


def _now() -> datetime:
    return _as_stored(datetime.now(UTC))


def _as_stored(moment: datetime) -> datetime:
    """A time as the store keeps it (UTC, milliseconds), so what intake holds equals what it reads back."""
    moment = moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)
    return moment.replace(microsecond=moment.microsecond // 1000 * 1000)


def _entry(
    kind: str,
    summary: str,
    *,
    at: datetime,
    by: str | None = None,
    channel: str | None = None,
    event_id: str | None = None,
) -> dict[str, Any]:
    return TimelineEntry(at=at, kind=kind, summary=summary, by=by, channel=channel, event_id=event_id).model_dump(
        mode="python"
    )


def _who(reporter: Reporter) -> str | None:
    return reporter.name or reporter.email or reporter.phone or reporter.system


class IncidentDesk:
    def __init__(self, database: AsyncDatabase[dict[str, Any]], producer: EventProducer) -> None:
        self.incidents = database["incidents"]
        self._numbers = BatchedCounter(database["counters"])
        self._open_keys = database["open_incident_keys"]
        self._producer = producer
        self._turns: weakref.WeakValueDictionary[str, asyncio.Lock] = weakref.WeakValueDictionary()
        # The sweep takes the same turns as the desk's own writes (see OutboxRelay).
        self._relay = OutboxRelay(producer, turn=self._turn)

    async def ensure_indexes(self) -> None:
        await self.incidents.create_index([("tenant_id", ASCENDING), ("number", ASCENDING)], unique=True)
        await self.incidents.create_index([("tenant_id", ASCENDING), ("created_at", DESCENDING)])
        await self.incidents.create_index([("tenant_id", ASCENDING), ("status", ASCENDING)])
        await self.incidents.create_index("email_message_ids")
        await OutboxRelay.ensure_indexes(self.incidents)

    @property
    def relay(self) -> OutboxRelay:
        return self._relay

    def _turn(self, document_id: str) -> asyncio.Lock:
        """The lock writes to one document take turns on (see the module doc); gone when unused."""
        lock = self._turns.get(document_id)
        if lock is None:
            lock = asyncio.Lock()
            self._turns[document_id] = lock
        return lock

    # --- reading -------------------------------------------------------------------------

    async def get(self, tenant_id: str, incident_id: str) -> Incident:
        """The incident, only if it belongs to ``tenant_id`` (tenants never see each other's)."""
        # By _id alone (an index lookup on every store), the tenant checked here.
        document = await self.incidents.find_one({"_id": incident_id}, {"outbox": 0, "applied_events": 0})
        if document is None or document.get("tenant_id") != tenant_id:
            raise IncidentNotFound(incident_id)
        return Incident.model_validate(document)

    async def get_by_number(self, tenant_id: str, number: str) -> Incident | None:
        document = await self.incidents.find_one(
            {"tenant_id": tenant_id, "number": number.upper()}, {"outbox": 0, "applied_events": 0}
        )
        return Incident.model_validate(document) if document else None

    async def find_by_email_message_id(self, tenant_id: str, message_ids: Sequence[str]) -> Incident | None:
        if not message_ids:
            return None
        document = await self.incidents.find_one(
            {"tenant_id": tenant_id, "email_message_ids": {"$in": list(message_ids)}},
            {"outbox": 0, "applied_events": 0},
        )
        return Incident.model_validate(document) if document else None

    async def find_open(self, tenant_id: str, dedup_key: str) -> Incident | None:
        """The open incident a dedup key (alert fingerprint, caller, ...) points to, if any."""
        key = await self._open_keys.find_one({"_id": self._open_key_id(tenant_id, dedup_key)})
        if key is None:
            return None
        try:
            incident = await self.get(tenant_id, key["incident_id"])
        except IncidentNotFound:
            return None
        return incident if lifecycle.is_open(incident.status) else None

    async def search(
        self,
        tenant_id: str,
        *,
        status: Sequence[Status] = (),
        channel: Channel | None = None,
        since: datetime | None = None,
        limit: int = 50,
        offset: int = 0,
    ) -> tuple[list[Incident], int]:
        query: dict[str, Any] = {"tenant_id": tenant_id}
        if status:
            query["status"] = {"$in": [s.value for s in status]}
        if channel is not None:
            query["channel"] = channel.value
        if since is not None:
            query["created_at"] = {"$gte": since}
        total = await self.incidents.count_documents(query)
        cursor = (
            self.incidents.find(query, {"outbox": 0, "applied_events": 0, "timeline": 0})
            .sort([("created_at", DESCENDING), ("_id", ASCENDING)])
            .skip(offset)
            .limit(limit)
        )
        return [Incident.model_validate(document) async for document in cursor], total

    # --- opening and updating ------------------------------------------------------------

    async def report(
        self,
        tenant_id: str,
        report: IncidentReport,
        *,
        incident_id: str | None = None,
        email_message_ids: Sequence[str] = (),
        also_publish: FollowUps | None = None,
    ) -> Outcome:
        """Open an incident, or, when ``report.dedup_key`` names an open one, add an occurrence.

        ``incident_id`` makes opening idempotent (the API's Idempotency-Key pre-allocates it):
        reporting twice with the same id opens it once. ``also_publish`` events go out with the
        incident's event, from the same write (not again when the report was a repeat).
        """
        if report.dedup_key:
            existing = await self.find_open(tenant_id, report.dedup_key)
            if existing is not None and existing.incident_id == incident_id:
                # A retry of the very report that opened it (same id): not a new occurrence.
                return Outcome(existing, created=False)
            if existing is not None:
                return await self._occurrence(existing, report, also_publish)
        fresh = incident_id is None  # a new random id: no earlier attempt can have written it
        # Found written when opening, the incident is another request's (not this one's earlier
        # attempt): then this report is one more occurrence of it.
        repeat_if_written = fresh
        incident_id = incident_id or str(uuid.uuid4())
        if report.dedup_key:
            claimed = await self._claim_open_key(tenant_id, report.dedup_key, incident_id)
            if claimed != incident_id:
                # Another request opened it a moment ago: this report is a repeat of that one.
                try:
                    return await self._occurrence(await self.get(tenant_id, claimed), report, also_publish)
                except IncidentNotFound:
                    pass
                # Not written yet: usually still being opened by this process, so wait for its turn.
                async with self._turn(claimed):
                    pass
                try:
                    return await self._occurrence(await self.get(tenant_id, claimed), report, also_publish)
                except IncidentNotFound:
                    # The other request crashed before writing, or it is still opening it on
                    # another instance: take its place under its id (one of the two writes wins).
                    incident_id, fresh, repeat_if_written = claimed, False, True
        outcome = await self._open(tenant_id, incident_id, report, email_message_ids, also_publish, fresh=fresh)
        if not outcome.created and repeat_if_written:
            return await self._occurrence(outcome.incident, report, also_publish)
        return outcome

    async def _open(
        self,
        tenant_id: str,
        incident_id: str,
        report: IncidentReport,
        email_message_ids: Sequence[str],
        also_publish: FollowUps | None = None,
        *,
        fresh: bool = False,
    ) -> Outcome:
        async with self._turn(incident_id):
            if not fresh:
                existing = await self.incidents.find_one({"_id": incident_id}, {"_id": 1, "tenant_id": 1})
                if existing is not None:
                    await self._relay.flush(self.incidents, incident_id)  # finish what a crash left pending
                    return Outcome(await self.get(existing["tenant_id"], incident_id), created=False)
            for _ in range(NUMBER_ATTEMPTS):
                number = format_number(await self._next_sequence(tenant_id))
                document, events = self._opening(
                    tenant_id, incident_id, number, report, email_message_ids, also_publish
                )
                try:
                    await self.incidents.insert_one(document)
                    break
                except DuplicateKeyError:
                    if await self.incidents.find_one({"_id": incident_id}, {"_id": 1}) is not None:
                        # Same incident id written concurrently (a retried Idempotency-Key request).
                        return Outcome(await self.get(tenant_id, incident_id), created=False)
                    log.warning("incident number already taken; taking the next", tenant_id=tenant_id, number=number)
            else:
                raise RuntimeError(f"no free incident number for {tenant_id} after {NUMBER_ATTEMPTS} attempts")
            await self._publish_opening(incident_id, events, document[outbox.FIELD])
        log.info(
            "incident opened", tenant_id=tenant_id, incident_id=incident_id, number=number, channel=report.channel.value
        )
        # The document as written is the incident: no need to read it back.
        return Outcome(Incident.model_validate(document), created=True, events=events)

    def _opening(
        self,
        tenant_id: str,
        incident_id: str,
        number: str,
        report: IncidentReport,
        email_message_ids: Sequence[str],
        also_publish: FollowUps | None,
    ) -> tuple[dict[str, Any], list[Envelope[Any]]]:
        """The new incident's document, with its IncidentReported (and follow-ups) in the outbox."""
        now = _now()
        seen = _as_stored(report.occurred_at) if report.occurred_at else now
        event = envelope_for(
            IncidentReported(
                incident_id=incident_id,
                number=number,
                title=report.title,
                description=report.description,
                channel=report.channel,
                severity=report.severity,
                reporter=report.reporter,
                system=report.system,
                source=report.source,
                dedup_key=report.dedup_key,
                labels=report.labels,
                attachments=report.attachments,
                reported_at=seen,
            ),
            source=SOURCE,
            tenant_id=tenant_id,
            incident_id=incident_id,
            time=now,
        )
        followers = _follow_ups(also_publish, event, number)
        document: dict[str, Any] = {
            "_id": incident_id,
            "tenant_id": tenant_id,
            "number": number,
            "title": report.title,
            "description": report.description,
            "channel": report.channel.value,
            "severity": report.severity.value,
            "status": Status.REPORTED.value,
            "reporter": report.reporter.model_dump(mode="json"),
            "system": report.system,
            "source": report.source,
            "dedup_key": report.dedup_key,
            "labels": report.labels,
            "attachments": [a.model_dump(mode="json") for a in report.attachments],
            "occurrence_count": 1,
            "first_seen_at": seen,
            "last_seen_at": seen,
            "created_at": now,
            "updated_at": now,
            "details": report.details,
            "email_message_ids": list(email_message_ids),
            "timeline": [
                _entry(
                    "reported",
                    f"Reported by {report.channel.value}: {report.title}",
                    at=now,
                    by=_who(report.reporter),
                    channel=report.channel.value,
                    event_id=event.id,
                )
            ],
            "applied_events": [],
            outbox.FIELD: [outbox.stored(e) for e in (event, *followers)],
            outbox.FLAG: True,
        }
        return document, [event, *followers]

    async def _publish_opening(
        self, incident_id: str, events: list[Envelope[Any]], stored: list[dict[str, Any]]
    ) -> None:
        """Publish a new incident's outbox from the events in hand, then empty it in one write.

        What ``relay.flush`` does, without reading the outbox first (a new document's outbox holds
        exactly these events, and this process's other writes of it wait their turn) and with one
        write instead of two.
        """
        await self._producer.publish_many(events)
        after = await self.incidents.find_one_and_update(
            {"_id": incident_id},
            {"$pullAll": {outbox.FIELD: stored}, "$set": {outbox.FLAG: False}},
            return_document=ReturnDocument.AFTER,
        )
        if after is not None and after.get(outbox.FIELD):
            # Another instance added an event meanwhile: keep the document flagged for the sweep
            # and publish that event too, as its own flush would.
            await self.incidents.update_one({"_id": incident_id}, {"$set": {outbox.FLAG: True}})
            await self._relay.flush(self.incidents, incident_id)

    async def _occurrence(
        self, incident: Incident, report: IncidentReport, also_publish: FollowUps | None = None
    ) -> Outcome:
        async with self._turn(incident.incident_id):
            for _ in range(OCCURRENCE_ATTEMPTS):
                # Read again in turn: another report of the same problem may have counted itself meanwhile.
                incident = await self.get(incident.tenant_id, incident.incident_id)
                now = _now()
                seen = _as_stored(report.occurred_at) if report.occurred_at else now
                count = incident.occurrence_count + 1
                event = envelope_for(
                    IncidentUpdated(
                        incident_id=incident.incident_id,
                        number=incident.number,
                        channel=report.channel,
                        kind="occurrence",
                        message=report.title,
                        author=report.reporter,
                        occurrence_count=count,
                        last_seen_at=seen,
                        attachments=report.attachments,
                    ),
                    source=SOURCE,
                    tenant_id=incident.tenant_id,
                    incident_id=incident.incident_id,
                    time=now,
                )
                update: dict[str, Any] = {
                    "$inc": {"occurrence_count": 1},
                    "$set": {"updated_at": now},
                    "$max": {"last_seen_at": seen},
                }
                if count <= MAX_OCCURRENCES_ON_TIMELINE:
                    update["$push"] = {
                        "timeline": _entry(
                            "occurrence",
                            f"Seen again ({count}x): {report.title}",
                            at=now,
                            by=_who(report.reporter),
                            channel=report.channel.value,
                            event_id=event.id,
                        )
                    }
                followers = _follow_ups(also_publish, event, incident.number)
                # Only over the count read: the event announces this count, and another instance
                # (whose turns are its own) may have counted one in between; then count again.
                if await self._write(
                    incident.incident_id, update, event, *followers, expect_count=incident.occurrence_count
                ):
                    return Outcome(
                        await self.get(incident.tenant_id, incident.incident_id),
                        created=False,
                        events=[event, *followers],
                    )
            raise RuntimeError(f"occurrence of {incident.incident_id} not counted after {OCCURRENCE_ATTEMPTS} attempts")

    async def add_update(
        self,
        tenant_id: str,
        incident_id: str,
        *,
        channel: Channel,
        kind: str,
        message: str,
        author: Reporter,
        attachments: Sequence[AttachmentRef] = (),
        email_message_ids: Sequence[str] = (),
        also_publish: FollowUps | None = None,
    ) -> Outcome:
        """Append a comment or details (an email reply, a caller's new information).

        ``also_publish`` events go out with the IncidentUpdated, from the same write.
        """
        async with self._turn(incident_id):
            incident = await self.get(tenant_id, incident_id)
            now = _now()
            event = envelope_for(
                IncidentUpdated(
                    incident_id=incident_id,
                    number=incident.number,
                    channel=channel,
                    kind=kind,
                    message=message,
                    author=author,
                    occurrence_count=incident.occurrence_count,
                    last_seen_at=incident.last_seen_at,
                    attachments=list(attachments),
                ),
                source=SOURCE,
                tenant_id=tenant_id,
                incident_id=incident_id,
                time=now,
            )
            summary = message if len(message) <= 200 else message[:197] + "..."
            update: dict[str, Any] = {
                "$set": {"updated_at": now},
                "$push": {
                    "timeline": _entry(kind, summary, at=now, by=_who(author), channel=channel.value, event_id=event.id)
                },
            }
            if attachments:
                update["$push"]["attachments"] = {"$each": [a.model_dump(mode="json") for a in attachments]}
            if email_message_ids:
                update["$addToSet"] = {"email_message_ids": {"$each": list(email_message_ids)}}
            followers = _follow_ups(also_publish, event, incident.number)
            await self._write(incident_id, update, event, *followers)
            return Outcome(await self.get(tenant_id, incident_id), created=False, events=[event, *followers])

    # --- moves people ask for ------------------------------------------------------------

    async def acknowledge(
        self, tenant_id: str, incident_id: str, *, by: str, channel: Channel, note: str = ""
    ) -> Outcome:
        async with self._turn(incident_id):
            incident = await self.get(tenant_id, incident_id)
            if incident.status == Status.ACKNOWLEDGED:
                return Outcome(incident, created=False)
            lifecycle.require_move(incident.status, Status.ACKNOWLEDGED)
            data = IncidentAcknowledged(
                incident_id=incident_id, number=incident.number, by=by, channel=channel, note=note
            )
            return await self._move(incident, Status.ACKNOWLEDGED, data, f"Acknowledged by {by}", by, channel)

    async def resolve(
        self, tenant_id: str, incident_id: str, *, by: str, channel: Channel | None, resolution: str = ""
    ) -> Outcome:
        async with self._turn(incident_id):
            incident = await self.get(tenant_id, incident_id)
            if incident.status in (Status.RESOLVED, Status.CLOSED):
                return Outcome(incident, created=False)
            lifecycle.require_move(incident.status, Status.RESOLVED)
            data = IncidentResolved(
                incident_id=incident_id, number=incident.number, by=by, channel=channel, resolution=resolution
            )
            return await self._move(
                incident,
                Status.RESOLVED,
                data,
                f"Resolved by {by}" + (f": {resolution}" if resolution else ""),
                by,
                channel,
            )

    async def reopen(self, tenant_id: str, incident_id: str, *, by: str, reason: str = "") -> Outcome:
        async with self._turn(incident_id):
            incident = await self.get(tenant_id, incident_id)
            lifecycle.require_move(incident.status, Status.REOPENED)
            data = IncidentReopened(incident_id=incident_id, number=incident.number, by=by, reason=reason)
            outcome = await self._move(
                incident, Status.REOPENED, data, f"Reopened by {by}" + (f": {reason}" if reason else ""), by, None
            )
            if incident.dedup_key:
                await self._claim_open_key(tenant_id, incident.dedup_key, incident_id, replace=True)
            return outcome

    async def close(self, tenant_id: str, incident_id: str, *, by: str, reason: str = "") -> Outcome:
        """Finish a resolved incident (the customer confirmed, or it stayed resolved long enough)."""
        async with self._turn(incident_id):
            incident = await self.get(tenant_id, incident_id)
            if incident.status == Status.CLOSED:
                return Outcome(incident, created=False)
            lifecycle.require_move(incident.status, Status.CLOSED)
            data = IncidentClosed(incident_id=incident_id, number=incident.number, by=by, reason=reason)
            return await self._move(
                incident, Status.CLOSED, data, f"Closed by {by}" + (f": {reason}" if reason else ""), by, None
            )

    async def close_resolved_before(self, cutoff: datetime, *, limit: int = 200) -> int:
        """Close incidents resolved before ``cutoff``; returns how many were closed."""
        closed = 0
        cursor = self.incidents.find(
            {"status": Status.RESOLVED.value, "resolved_at": {"$lt": cutoff}}, {"tenant_id": 1}
        ).limit(limit)
        for document in [d async for d in cursor]:
            try:
                await self.close(
                    document["tenant_id"], document["_id"], by="aftercare", reason="resolved with no follow-up"
                )
                closed += 1
            except (lifecycle.TransitionRefused, IncidentNotFound):
                pass  # reopened or changed meanwhile: nothing to close
        return closed

    async def _move(
        self, incident: Incident, target: Status, data: Event, summary: str, by: str | None, channel: Channel | None
    ) -> Outcome:
        now = _now()
        event = envelope_for(
            data, source=SOURCE, tenant_id=incident.tenant_id, incident_id=incident.incident_id, time=now
        )
        update: dict[str, Any] = {
            "$set": {"status": target.value, "updated_at": now},
            "$push": {
                "timeline": _entry(
                    target.value, summary, at=now, by=by, channel=channel.value if channel else None, event_id=event.id
                )
            },
        }
        if target == Status.RESOLVED:
            update["$set"]["resolved_at"] = now
        # Only from the status we decided on: a concurrent move makes this write miss, not clobber.
        written = await self._write(incident.incident_id, update, event, expect_status=incident.status)
        if not written:
            raise lifecycle.TransitionRefused(
                f"{incident.number} changed while this request ran; read it again and retry"
            )
        if target == Status.RESOLVED and incident.dedup_key:
            await self._release_open_key(incident.tenant_id, incident.dedup_key, incident.incident_id)
        return Outcome(await self.get(incident.tenant_id, incident.incident_id), created=False, events=[event])

    # --- moves from other services' events (consumer) ------------------------------------

    async def apply_automated(
        self,
        envelope: Envelope[Any],
        *,
        proposed: Status | None,
        kind: str,
        summary: str,
        set_fields: dict[str, Any] | None = None,
        announce: Event | None = None,
    ) -> bool:
        """Record an event from triage or remediation on its incident, once.

        ``proposed`` is the status the event suggests; it is applied only if the lifecycle
        allows it now. ``announce`` is an incident event intake publishes as a consequence
        (e.g. IncidentResolved after a successful remediation). Returns False if the incident
        is unknown here or the event was applied before.
        """
        if envelope.incident_id is None:
            return False
        async with self._turn(envelope.incident_id):
            return await self._apply_automated(
                envelope, proposed=proposed, kind=kind, summary=summary, set_fields=set_fields, announce=announce
            )

    async def _apply_automated(
        self,
        envelope: Envelope[Any],
        *,
        proposed: Status | None,
        kind: str,
        summary: str,
        set_fields: dict[str, Any] | None,
        announce: Event | None,
    ) -> bool:
        incident_id = envelope.incident_id
        if incident_id is None:
            return False
        document = await self.incidents.find_one(
            {"_id": incident_id}, {"status": 1, "tenant_id": 1, "dedup_key": 1, "number": 1}
        )
        if document is None:
            log.warning("event for an incident intake does not know; ignored", event_type=envelope.type)
            return False
        if document["tenant_id"] != envelope.tenant_id:
            # A tenant's incident moves only by events about that tenant, whatever a bug elsewhere sends.
            log.warning(
                "event names another tenant than its incident; ignored",
                event_type=envelope.type,
                event_tenant=envelope.tenant_id,
                incident_tenant=document["tenant_id"],
            )
            return False
        current = Status(document["status"])
        target = lifecycle.automated_move(current, proposed) if proposed else None
        now = _now()
        fields = dict(set_fields or {})
        fields["updated_at"] = now
        followers: list[Envelope[Any]] = []
        if target is not None:
            fields["status"] = target.value
            if target == Status.RESOLVED:
                fields["resolved_at"] = now
            if announce is not None:
                followers.append(
                    envelope_for(
                        announce,
                        source=SOURCE,
                        tenant_id=document["tenant_id"],
                        incident_id=incident_id,
                        caused_by=envelope,
                        time=now,
                    )
                )
        update: dict[str, Any] = {
            "$set": fields,
            "$push": {"timeline": _entry(kind, summary, at=now, by=envelope.source, event_id=envelope.id)},
            "$addToSet": {"applied_events": envelope.id},
        }
        update = outbox.add_to_update(update, *followers)
        result = await self.incidents.update_one(
            {"_id": incident_id, "applied_events": {"$ne": envelope.id}, "status": current.value}, update
        )
        if result.modified_count == 0:
            # Either applied already (redelivery) or the status moved meanwhile: retry once fresh.
            again = await self.incidents.find_one({"_id": incident_id, "applied_events": envelope.id}, {"_id": 1})
            if again is not None:
                await self._relay.flush(self.incidents, incident_id)
                return False
            return await self._apply_automated(
                envelope, proposed=proposed, kind=kind, summary=summary, set_fields=set_fields, announce=announce
            )
        if followers:
            await self._relay.flush(self.incidents, incident_id)
        if target == Status.RESOLVED and document.get("dedup_key"):
            await self._release_open_key(document["tenant_id"], document["dedup_key"], incident_id)
        return True

    # --- plumbing ------------------------------------------------------------------------

    async def _write(
        self,
        incident_id: str,
        update: dict[str, Any],
        event: Envelope[Any],
        *followers: Envelope[Any],
        expect_status: Status | None = None,
        expect_count: int | None = None,
    ) -> bool:
        query: dict[str, Any] = {"_id": incident_id}
        if expect_status is not None:
            query["status"] = expect_status.value
        if expect_count is not None:
            query["occurrence_count"] = expect_count
        result = await self.incidents.update_one(query, outbox.add_to_update(update, event, *followers))
        if result.matched_count == 0:
            return False
        await self._relay.flush(self.incidents, incident_id)
        return True

    async def _next_sequence(self, tenant_id: str) -> int:
        # Numbers start at 1001 so they read like ticket numbers on the phone.
        return 1000 + await self._numbers.next(f"incident-number|{tenant_id}")

    @staticmethod
    def _open_key_id(tenant_id: str, dedup_key: str) -> str:
        return f"{tenant_id}|{dedup_key}"

    async def _claim_open_key(self, tenant_id: str, dedup_key: str, incident_id: str, *, replace: bool = False) -> str:
        """Point the dedup key at ``incident_id`` unless an open incident holds it already."""
        key_id = self._open_key_id(tenant_id, dedup_key)
        if replace:
            await self._open_keys.update_one({"_id": key_id}, {"$set": {"incident_id": incident_id}}, upsert=True)
            return incident_id
        try:
            await self._open_keys.insert_one({"_id": key_id, "incident_id": incident_id, "at": _now()})
            return incident_id
        except DuplicateKeyError:
            holder = await self._open_keys.find_one({"_id": key_id})
            if holder is None:  # released in between: try again
                return await self._claim_open_key(tenant_id, dedup_key, incident_id)
            held_by = str(holder["incident_id"])
            incident = await self.incidents.find_one({"_id": held_by}, {"status": 1})
            if incident is not None and not lifecycle.is_open(Status(incident["status"])):
                # The holder was resolved but its key not released (crash): take it over.
                result = await self._open_keys.update_one(
                    {"_id": key_id, "incident_id": held_by}, {"$set": {"incident_id": incident_id}}
                )
                if result.modified_count == 1:
                    return incident_id
                return await self._claim_open_key(tenant_id, dedup_key, incident_id)
            return held_by

    async def _release_open_key(self, tenant_id: str, dedup_key: str, incident_id: str) -> None:
        await self._open_keys.delete_one({"_id": self._open_key_id(tenant_id, dedup_key), "incident_id": incident_id})


def _follow_ups(also_publish: FollowUps | None, cause: Envelope[Any], number: str) -> list[Envelope[Any]]:
    if also_publish is None or cause.incident_id is None:
        return []
    return [
        envelope_for(
            data,
            source=SOURCE,
            tenant_id=cause.tenant_id,
            incident_id=cause.incident_id,
            caused_by=cause,
            time=cause.time,
        )
        for data in also_publish(cause.incident_id, number)
    ]
