"""The incidents collection: reads, and the one write each decided change becomes.

Each change is one single-document write to ``incidents`` that also stores the events announcing
it in the document's outbox; the store then publishes them and only returns once Kafka has them,
so a channel that answers "accepted" after a use case has a durable event behind it. Nothing
here needs a transaction (the embedded store has none):

* numbers (INC-1042) come from a per-tenant counter document (increments that arrive together
  go as one ``$inc``, see ``BatchedCounter``), and the unique index on (tenant, number) has the
  last word: a number another instance handed out too is replaced;
* "is there an open incident for this dedup key?" is an ``open_incident_keys`` document whose
  ``_id`` is the tenant and key (claimed, see ``claims.py``), so two instances racing on the
  same alert open one incident;
* a consumed event is applied once: its id goes into ``applied_events`` in the same write, and
  the write's filter excludes documents that already have it;
* "which incident does this email answer?" is an ``email_threads`` document per Message-ID
  whose ``_id`` is the tenant and the Message-ID (claimed, see ``claims.py``, right after the
  incident's write, in the same turn), so a reply is found by ``_id`` alone instead of by
  scanning the tenant's incidents' ``email_message_ids`` arrays.

Several intake instances may share one store: each write is atomic on one document (on the
embedded store too, through its build patch), and a change that announces what it read (an
occurrence's count) writes only over what it read and is decided again otherwise. Within this
process, the reads and writes of one incident still take turns (``turn``) and a tenant's number
counter is incremented by one batch at a time: not for correctness any more, but so that one
process's own concurrent reports of an incident do not keep missing each other's writes and
retrying, and so that a burst costs one counter write instead of one per report. The embedded
store answers lookups from indexes only for ``_id`` and for equalities on indexed fields; the
accept path filters by ``_id``.
"""

from __future__ import annotations

import asyncio
import weakref
from collections.abc import Sequence
from datetime import datetime
from typing import Any, Literal

import structlog
from pymongo import ASCENDING, DESCENDING
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import DuplicateKeyError

from aftercare.events import outbox
from aftercare.events.group_commit import GroupCommit
from aftercare.events.incidents import Channel
from aftercare.events.incidents import IncidentStatus as Status
from aftercare.events.outbox import OutboxRelay
from aftercare.events.producer import EventProducer
from aftercare.intake import clock
from aftercare.intake.adapters.claims import claim
from aftercare.intake.adapters.counters import BatchedCounter
from aftercare.intake.domain import lifecycle
from aftercare.intake.domain.changes import IncidentChange, Opening
from aftercare.intake.domain.incident import Incident, format_number
from aftercare.intake.domain.moves import IncidentState

log = structlog.stdlib.get_logger("aftercare.intake.incident_store")

# What a read for showing leaves out: the plumbing fields.
_HIDDEN = {"outbox": 0, "applied_events": 0}


class IncidentNotFound(LookupError):
    pass


class IncidentStore:
    def __init__(self, database: AsyncDatabase[dict[str, Any]], producer: EventProducer) -> None:
        self.collection = database["incidents"]
        self.database = database
        self._numbers = BatchedCounter(database["counters"])
        self._open_keys = database["open_incident_keys"]
        self._email_threads = database["email_threads"]
        self._producer = producer
        self._turns: weakref.WeakValueDictionary[str, asyncio.Lock] = weakref.WeakValueDictionary()
        # The sweep takes the same turns as the use cases' writes (see OutboxRelay).
        self.relay = OutboxRelay(producer, turn=self.turn)
        self._openings = GroupCommit(self.collection, producer)

    async def ensure_indexes(self) -> None:
        await self.collection.create_index([("tenant_id", ASCENDING), ("number", ASCENDING)], unique=True)
        await self.collection.create_index([("tenant_id", ASCENDING), ("created_at", DESCENDING)])
        await self.collection.create_index([("tenant_id", ASCENDING), ("status", ASCENDING)])
        await OutboxRelay.ensure_indexes(self.collection)

    def turn(self, incident_id: str) -> asyncio.Lock:
        """The lock reads-then-writes of one incident take turns on (see the module doc)."""
        lock = self._turns.get(incident_id)
        if lock is None:
            lock = asyncio.Lock()
            self._turns[incident_id] = lock
        return lock

    # --- reading -------------------------------------------------------------------------

    async def get(self, tenant_id: str, incident_id: str) -> Incident:
        """The incident, only if it belongs to ``tenant_id`` (tenants never see each other's)."""
        # By _id alone (an index lookup on every store), the tenant checked here.
        document = await self.collection.find_one({"_id": incident_id}, _HIDDEN)
        if document is None or document.get("tenant_id") != tenant_id:
            raise IncidentNotFound(incident_id)
        return Incident.model_validate(document)

    async def tenant_of(self, incident_id: str) -> str | None:
        """Whose incident ``incident_id`` is, or None if it is not stored."""
        document = await self.collection.find_one({"_id": incident_id}, {"_id": 1, "tenant_id": 1})
        return str(document["tenant_id"]) if document else None

    async def state(self, incident_id: str) -> IncidentState | None:
        """What a move needs (status, tenant, number, dedup key), without the timeline."""
        document = await self.collection.find_one(
            {"_id": incident_id}, {"status": 1, "tenant_id": 1, "dedup_key": 1, "number": 1, "manual_fields": 1}
        )
        if document is None:
            return None
        return IncidentState(
            incident_id=incident_id,
            tenant_id=document["tenant_id"],
            number=document["number"],
            status=Status(document["status"]),
            dedup_key=document.get("dedup_key"),
            manual_fields=frozenset(document.get("manual_fields") or ()),
        )

    async def get_by_number(self, tenant_id: str, number: str) -> Incident | None:
        document = await self.collection.find_one({"tenant_id": tenant_id, "number": number.upper()}, _HIDDEN)
        return Incident.model_validate(document) if document else None

    async def find_by_email_message_id(self, tenant_id: str, message_ids: Sequence[str]) -> Incident | None:
        """The tenant's incident that holds one of ``message_ids``, the earliest in the list first.

        One ``_id`` lookup per Message-ID until one is found (a reply names its direct parent
        first, so usually one): on the embedded store, ``_id`` equality is the fastest read there
        is, and measured faster than one ``{_id: {$in: [...]}}`` (bench/email_thread_lookup.py).
        """
        keys = [_thread_id(tenant_id, m) for m in message_ids[:MAX_THREAD_LOOKUPS] if _threadable(m)]
        for key in keys:
            thread = await self._email_threads.find_one({"_id": key})
            if thread is None:
                continue
            try:
                return await self.get(tenant_id, str(thread["incident_id"]))
            except IncidentNotFound:
                continue  # never written (claims follow the write); only a bug could leave one
        return None

    async def holds_email_message(self, incident_id: str, message_id: str) -> bool:
        """Whether the incident recorded this Message-ID (by ``_id``, then within the document)."""
        found = await self.collection.find_one({"_id": incident_id, "email_message_ids": message_id}, {"_id": 1})
        return found is not None

    async def remember_email_thread(self, tenant_id: str, message_ids: Sequence[str], incident_id: str) -> None:
        """Point each Message-ID at the incident it was added to; the first incident to hold one keeps it."""
        for message_id in message_ids:
            if not _threadable(message_id):
                log.warning("Message-ID too long to thread by; replies need the [INC-n] tag", tenant_id=tenant_id)
                continue
            holder, ours = await claim(
                self._email_threads,
                {"_id": _thread_id(tenant_id, message_id), "incident_id": incident_id, "at": clock.now()},
            )
            if not ours and holder["incident_id"] != incident_id:
                log.warning(
                    "Message-ID already threads to another incident; kept there",
                    tenant_id=tenant_id,
                    incident_id=incident_id,
                    thread_incident_id=holder["incident_id"],
                )

    async def find_open(self, tenant_id: str, dedup_key: str) -> Incident | None:
        """The open incident a dedup key (alert fingerprint, caller, ...) points to, if any."""
        key = await self._open_keys.find_one({"_id": _open_key_id(tenant_id, dedup_key)})
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
        total = await self.collection.count_documents(query)
        cursor = (
            self.collection.find(query, _HIDDEN | {"timeline": 0})
            .sort([("created_at", DESCENDING), ("_id", ASCENDING)])
            .skip(offset)
            .limit(limit)
        )
        return [Incident.model_validate(document) async for document in cursor], total

    async def open_with_source(self, tenant_id: str, source: str, *, limit: int) -> list[str]:
        """Ids of the tenant's open incidents about ``source`` (the host or system with the problem)."""
        cursor = self.collection.find(
            {
                "tenant_id": tenant_id,
                "source": source,
                "status": {"$in": sorted(status.value for status in lifecycle.OPEN_STATUSES)},
            },
            {"_id": 1},
        ).limit(limit)
        return [document["_id"] async for document in cursor]

    async def resolved_before(self, cutoff: datetime, *, limit: int) -> list[tuple[str, str]]:
        """(tenant, incident id) of incidents resolved before ``cutoff``."""
        cursor = self.collection.find(
            {"status": Status.RESOLVED.value, "resolved_at": {"$lt": cutoff}}, {"tenant_id": 1}
        ).limit(limit)
        return [(document["tenant_id"], document["_id"]) async for document in cursor]

    # --- writing -------------------------------------------------------------------------

    async def next_number(self, tenant_id: str) -> str:
        # Numbers start at 1001 so they read like ticket numbers on the phone.
        return format_number(1000 + await self._numbers.next(f"incident-number|{tenant_id}"))

    async def insert(self, opening: Opening) -> Literal["inserted", "exists", "number-taken"]:
        """Write a new incident and publish its events; returns once both are done ("inserted").

        Or "exists" (the same incident id was written meanwhile: a retry) or "number-taken"
        (another instance handed out the same number: decide again with the next). New incidents
        that arrive together go as one store write and one Kafka batch (their events wait in the
        group commit's ledger meanwhile, see ``aftercare.events.group_commit``).
        """
        # Its events wait in the group commit's ledger, not in the document's outbox.
        document = opening.fields | {outbox.FIELD: [], outbox.FLAG: False}
        try:
            await self._openings.insert(document, opening.events)
        except DuplicateKeyError:
            if await self.collection.find_one({"_id": opening.fields["_id"]}, {"_id": 1}) is not None:
                return "exists"
            return "number-taken"
        # After the incident (a thread never points at nothing); a crash in between leaves the
        # retried delivery, which lands on the same incident id, to claim them.
        await self.remember_email_thread(
            opening.fields["tenant_id"], opening.fields.get("email_message_ids") or (), opening.fields["_id"]
        )
        return "inserted"

    async def flush(self, incident_id: str) -> None:
        """Publish whatever a crash or an outage left pending for the incident, wherever it waits
        (the group commit's ledger, the document's outbox): a retry may answer "accepted" after."""
        await self.relay.flush_ledger(self.collection, incident_id)
        await self.relay.flush(self.collection, incident_id)

    async def apply(self, change: IncidentChange) -> bool:
        """Write ``change`` as one update with its events in the outbox, publish them, then claim or
        release the dedup key. False when the write did not match: the incident is gone, its
        status is no longer ``expect_status``, or the event was applied already.
        """
        query: dict[str, Any] = {"_id": change.incident_id}
        if change.expect_status is not None:
            query["status"] = change.expect_status.value
        if change.expect_occurrence_count is not None:
            query["occurrence_count"] = change.expect_occurrence_count
        update: dict[str, Any] = {"$set": dict(change.set_fields)}
        if change.increments:
            update["$inc"] = dict(change.increments)
        if change.raise_to:
            update["$max"] = dict(change.raise_to)
        pushes: dict[str, Any] = {}
        if change.timeline is not None:
            pushes["timeline"] = change.timeline.model_dump(mode="python")
        if change.new_attachments:
            pushes["attachments"] = {"$each": list(change.new_attachments)}
        if pushes:
            update["$push"] = pushes
        add_to_sets: dict[str, Any] = {}
        if change.email_message_ids:
            add_to_sets["email_message_ids"] = {"$each": list(change.email_message_ids)}
        for array_field, values in change.add_to_set.items():
            add_to_sets[array_field] = {"$each": list(values)}
        if change.applied_event_id is not None:
            query["applied_events"] = {"$ne": change.applied_event_id}
            add_to_sets["applied_events"] = change.applied_event_id
        if add_to_sets:
            update["$addToSet"] = add_to_sets
        result = await self.collection.update_one(query, outbox.add_to_update(update, *change.events))
        if result.matched_count == 0:
            return False
        if change.email_message_ids:
            await self.remember_email_thread(change.tenant_id, change.email_message_ids, change.incident_id)
        if change.events:
            await self.relay.flush(self.collection, change.incident_id)
        if change.release_dedup_key:
            await self.release_open_key(change.tenant_id, change.release_dedup_key, change.incident_id)
        if change.claim_dedup_key:
            await self.claim_open_key(
                change.tenant_id,
                change.claim_dedup_key.dedup_key,
                change.incident_id,
                replace=change.claim_dedup_key.replace,
            )
        return True

    async def was_applied(self, incident_id: str, event_id: str) -> bool:
        """Whether the consumed event ``event_id`` is on the incident already (a redelivery)."""
        found = await self.collection.find_one({"_id": incident_id, "applied_events": event_id}, {"_id": 1})
        return found is not None

    # --- dedup keys ----------------------------------------------------------------------

    async def claim_open_key(self, tenant_id: str, dedup_key: str, incident_id: str, *, replace: bool = False) -> str:
        """Point the dedup key at ``incident_id`` unless an open incident holds it already;
        returns the incident that holds it now."""
        key_id = _open_key_id(tenant_id, dedup_key)
        if replace:
            await self._open_keys.update_one({"_id": key_id}, {"$set": {"incident_id": incident_id}}, upsert=True)
            return incident_id
        for _ in range(10):
            holder, ours = await claim(self._open_keys, {"_id": key_id, "incident_id": incident_id, "at": clock.now()})
            if ours:
                return incident_id
            held_by = str(holder["incident_id"])
            incident = await self.collection.find_one({"_id": held_by}, {"status": 1})
            if incident is None or lifecycle.is_open(Status(incident["status"])):
                return held_by
            # The holder was resolved but its key not released (crash): take it over.
            result = await self._open_keys.update_one(
                {"_id": key_id, "incident_id": held_by}, {"$set": {"incident_id": incident_id}}
            )
            if result.modified_count == 1:
                return incident_id
        raise RuntimeError(f"dedup key {dedup_key!r} of {tenant_id} kept changing hands")

    async def release_open_key(self, tenant_id: str, dedup_key: str, incident_id: str) -> None:
        await self._open_keys.delete_one({"_id": _open_key_id(tenant_id, dedup_key), "incident_id": incident_id})


def _open_key_id(tenant_id: str, dedup_key: str) -> str:
    return f"{tenant_id}|{dedup_key}"


# An _id must stay well inside MongoDB's index key limit; a longer Message-ID (RFC 5322 allows
# any length, real ones are < 250) is not threaded by: the [INC-n] tag in the subject still is.
MAX_THREAD_ID_CHARS = 900
# A reply's References list can be long (or hostile); its newest ids are tried first, then give up.
MAX_THREAD_LOOKUPS = 20


def _thread_id(tenant_id: str, message_id: str) -> str:
    # Tenant ids have no ':' (lowercase letters, digits, dashes), so the key cannot be ambiguous.
    return f"{tenant_id}:{message_id}"


def _threadable(message_id: str) -> bool:
    return 0 < len(message_id) <= MAX_THREAD_ID_CHARS
