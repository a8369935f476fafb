"""Remediation's own database: runbooks (with versions), incidents as remediation knows them,
runs, the systems' blast-radius slots, escalations and their policies, tenant kill switches.

Every changing document carries ``rev``; a write names the ``rev`` it read, so a second
instance (or the approval API racing the engine) can never overwrite a newer state unseen.
Documents that announce events carry them in their outbox in that same write.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Collection
from datetime import datetime
from typing import Any, Generic, TypeVar

from pymongo import ASCENDING, ReturnDocument, UpdateOne
from pymongo.asynchronous.collection import AsyncCollection
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import BulkWriteError, DuplicateKeyError

from aftercare.events import outbox
from aftercare.events.envelope import Envelope
from aftercare.remediation.adapters.shared_reads import SharedReads
from aftercare.remediation.domain.blast_radius import SystemSlots
from aftercare.remediation.domain.escalation import Escalation, EscalationPolicy
from aftercare.remediation.domain.run import Run
from aftercare.remediation.domain.runbook import Runbook

Document = dict[str, Any]

# A run in one of these still has something to do (finished runs are the great majority).
OPEN_STATUSES = ("awaiting_approval", "queued", "active")

IMMUTABLE_RUN_FIELDS = (
    "runbook",
    "incident",
    "run_id",
    "runbook_name",
    "runbook_version",
    "tenant_id",
    "system",
    "created_at",
)


Request = TypeVar("Request")
Answer = TypeVar("Answer")


class Batched(Generic[Request, Answer]):
    """Requests made while a batch is being written go together in the next one: one store
    command for many callers, each answered on its own. Concurrency gives the batching (nothing
    waits on a timer): a lone request goes at once."""

    def __init__(self, write: Callable[[list[Request]], Awaitable[list[Answer]]], max_batch: int) -> None:
        self._write = write
        self._max_batch = max_batch
        self._queue: list[tuple[Request, asyncio.Future[Answer]]] = []
        self._writer: asyncio.Task[None] | None = None

    async def __call__(self, request: Request) -> Answer:
        answer: asyncio.Future[Answer] = asyncio.get_running_loop().create_future()
        self._queue.append((request, answer))
        if self._writer is None:
            # A task, so that one caller's cancellation cannot strand the others of its batch.
            self._writer = asyncio.get_running_loop().create_task(self._write_all())
        return await asyncio.shield(answer)

    async def _write_all(self) -> None:
        try:
            while self._queue:
                batch, self._queue = self._queue[: self._max_batch], self._queue[self._max_batch :]
                try:
                    answers = await self._write([request for request, _ in batch])
                except Exception as error:  # every caller of the batch hears of it
                    for _, answer in batch:
                        if not answer.done():
                            answer.set_exception(error)
                    continue
                for (_, answer), result in zip(batch, answers, strict=True):
                    if not answer.done():
                        answer.set_result(result)
        finally:
            self._writer = None


class RemediationStore:
    def __init__(self, database: AsyncDatabase[Document]) -> None:
        self.db = database
        self.runbooks: AsyncCollection[Document] = database["runbooks"]
        self.runbook_versions: AsyncCollection[Document] = database["runbook_versions"]
        self.incidents: AsyncCollection[Document] = database["incidents"]
        self.runs: AsyncCollection[Document] = database["runs"]
        self.slots: AsyncCollection[Document] = database["system_slots"]
        self.escalations: AsyncCollection[Document] = database["escalations"]
        self.policies: AsyncCollection[Document] = database["escalation_policies"]
        self.tenant_settings: AsyncCollection[Document] = database["tenant_settings"]
        # Stored runbook versions never change: read each once per process.
        self._versions: dict[str, tuple[Runbook, Document]] = {}
        # Runbook heads (name -> current version) as last read; a change through this process is
        # seen at once (forget), through another instance's within the callers' max age.
        self._heads: SharedReads[Document | None] = SharedReads(lambda name: self.runbooks.find_one({"_id": name}))
        # The runs created at the same moment (a consumer poll's incidents are handled side by
        # side) go in one insert_many: the embedded store commits one transaction per insert
        # command, whatever its number of documents. 100: the most its `_id $in` answers from
        # the index (the read-back after a duplicate).
        self._run_inserts: Batched[Document, bool] = Batched(self._insert_runs, max_batch=100)
        # Likewise the incident halves merged side by side: one update command and one read.
        self._incident_merges: Batched[tuple[str, Document], Document] = Batched(self._merge_incidents, max_batch=100)

    async def ensure_indexes(self) -> None:
        await outbox.OutboxRelay.ensure_indexes(self.runs)
        await outbox.OutboxRelay.ensure_indexes(self.escalations)
        await self.runs.create_index([("next_at", ASCENDING)])
        await self.runs.create_index([("runbook_name", ASCENDING), ("created_at", ASCENDING)])
        await self.escalations.create_index([("next_at", ASCENDING)])
        await self.escalations.create_index("escalation_id", unique=True)
        await self.escalations.create_index("incident_id")
        await self.runs.create_index("run_id")
        await self.runs.create_index("status")
        await self.runbook_versions.create_index([("name", ASCENDING), ("version", ASCENDING)], unique=True)

    # --- runbooks ------------------------------------------------------------------------

    async def current_runbook(self, name: str, max_age_s: float = 0.0) -> tuple[Runbook, int, Document] | None:
        """The runbook's current version; ``max_age_s``: a head read that long ago will do (every new
        run asks; this process's own saves and deletes forget it at once)."""
        head = await self._heads.get(name, max_age_s)
        if head is None or head.get("deleted"):
            return None
        key = f"{name}@{head['version']}"
        cached = self._versions.get(key)
        if cached is None:
            version = await self.runbook_versions.find_one({"_id": key})
            if version is None:
                return None
            cached = self._versions[key] = (Runbook.model_validate(version["document"]), version)
        return cached[0], int(head["version"]), cached[1]

    async def runbook_version(self, name: str, version: int) -> Document | None:
        return await self.runbook_versions.find_one({"_id": f"{name}@{version}"})

    async def runbook_history(self, name: str) -> list[Document]:
        cursor = self.runbook_versions.find({"name": name}, {"document": 0}).sort("version", ASCENDING)
        return [document async for document in cursor]

    async def list_runbooks(self) -> list[Document]:
        return [document async for document in self.runbooks.find({"deleted": {"$ne": True}}).sort("_id", ASCENDING)]

    async def save_runbook(self, runbook: Runbook, source: str, by: str, now: datetime) -> int | None:
        """Store a new version; None when the source is the current version's already."""
        self._heads.forget(runbook.name)
        for _ in range(5):
            head = await self.runbooks.find_one({"_id": runbook.name})
            current = int(head["version"]) if head else 0
            if head and not head.get("deleted"):
                stored = await self.runbook_versions.find_one({"_id": f"{runbook.name}@{current}"})
                if stored is not None and stored["document"] == runbook.model_dump(mode="json"):
                    return None
            version = current + 1
            try:
                await self.runbook_versions.insert_one(
                    {
                        "_id": f"{runbook.name}@{version}",
                        "name": runbook.name,
                        "version": version,
                        "source": source,
                        "document": runbook.model_dump(mode="json"),
                        "created_by": by,
                        "created_at": now,
                    }
                )
            except DuplicateKeyError:
                continue  # someone saved a version at the same moment: take the next number
            await self.runbooks.update_one(
                {"_id": runbook.name},
                {"$set": {"version": version, "updated_at": now, "updated_by": by, "deleted": False}},
                upsert=True,
            )
            self._heads.forget(runbook.name)  # again: a run may have read the old head meanwhile
            return version
        raise RuntimeError(f"could not store runbook {runbook.name}: too many concurrent changes")

    async def delete_runbook(self, name: str, by: str, now: datetime) -> bool:
        self._heads.forget(name)
        result = await self.runbooks.update_one(
            {"_id": name, "deleted": {"$ne": True}}, {"$set": {"deleted": True, "updated_at": now, "updated_by": by}}
        )
        self._heads.forget(name)
        return result.modified_count > 0

    # --- incidents as remediation knows them ---------------------------------------------

    async def merge_incident(self, incident_id: str, fields: Document) -> Document:
        """Set ``fields`` on the incident (created if new); the incident as it is then."""
        return await self._incident_merges((incident_id, fields))

    async def _merge_incidents(self, merges: list[tuple[str, Document]]) -> list[Document]:
        if len(merges) == 1:
            incident_id, fields = merges[0]
            merged = await self.incidents.find_one_and_update(
                {"_id": incident_id}, {"$set": fields}, upsert=True, return_document=ReturnDocument.AFTER
            )
            return [merged or {}]
        # In order: two halves of one incident in the same batch are both applied, the later last.
        await self.incidents.bulk_write(
            [UpdateOne({"_id": incident_id}, {"$set": fields}, upsert=True) for incident_id, fields in merges]
        )
        ids = list({incident_id for incident_id, _ in merges})
        found = {document["_id"]: document async for document in self.incidents.find({"_id": {"$in": ids}})}
        return [found.get(incident_id, {}) for incident_id, _ in merges]

    async def incident(self, incident_id: str) -> Document | None:
        return await self.incidents.find_one({"_id": incident_id})

    # --- runs ----------------------------------------------------------------------------

    @staticmethod
    def run_document(run: Run, next_at: datetime | None) -> Document:
        document = run.model_dump()
        document["incident"] = run.incident.model_dump()
        document["runbook"] = run.runbook.model_dump(mode="json")
        return document | {
            "runbook_name": run.runbook.name,
            "tenant_id": run.tenant_id,
            "system": run.system,
            "next_at": next_at,
        }

    async def insert_run(self, run: Run, next_at: datetime | None, events: list[Envelope[Any]]) -> bool:
        """Create the incident's run; False when it has one already (one run per incident)."""
        document = self.run_document(run, next_at) | {"_id": run.incident.incident_id, "rev": 1}
        if events:
            document[outbox.FIELD] = [outbox.stored(envelope) for envelope in events]
            document[outbox.FLAG] = True
        return await self._run_inserts(document)

    async def _insert_runs(self, documents: list[Document]) -> list[bool]:
        """Insert new runs; for each, whether it was inserted (False: its incident has a run)."""
        try:
            await self.runs.insert_many(documents, ordered=False)
            return [True] * len(documents)
        except (BulkWriteError, DuplicateKeyError):
            pass
        # Some incidents had a run already (a redelivered triage, another instance), or had two in
        # this batch. Which runs are ours is told by the run id stored under each incident; one a
        # store did not try after the first duplicate (an ordered store) is inserted alone.
        stored = {
            document["_id"]: document.get("run_id")
            async for document in self.runs.find(
                {"_id": {"$in": list({document["_id"] for document in documents})}}, {"run_id": 1}
            )
        }
        inserted: list[bool] = []
        for document in documents:
            if document["_id"] not in stored:
                try:
                    await self.runs.insert_one(document)
                except DuplicateKeyError:
                    inserted.append(False)
                    continue
                stored[document["_id"]] = document["run_id"]
                inserted.append(True)
            else:
                inserted.append(stored[document["_id"]] == document["run_id"])
        return inserted

    @staticmethod
    def outbox_entries(events: list[Envelope[Any]]) -> list[Document]:
        """The outbox entries announcing ``events``, as ``save_run`` stores them."""
        return [outbox.stored(envelope) for envelope in events]

    async def load_run(self, incident_id: str) -> tuple[Run, int, datetime | None] | None:
        loaded = await self.load_run_state(incident_id)
        return loaded[:3] if loaded is not None else None

    async def load_run_state(self, incident_id: str) -> tuple[Run, int, datetime | None, bool] | None:
        """The run, its rev, its due time, and whether its outbox holds events not yet published."""
        document = await self.runs.find_one({"_id": incident_id}, {outbox.FIELD: 0})
        if document is None:
            return None
        return (
            Run.model_validate(document),
            int(document["rev"]),
            document.get("next_at"),
            bool(document.get(outbox.FLAG)),
        )

    async def find_run(self, run_id: str) -> Document | None:
        return await self.runs.find_one({"run_id": run_id}, {outbox.FIELD: 0})

    async def save_run(
        self, run: Run, rev: int, next_at: datetime | None, entries: list[Document] | None = None
    ) -> int | None:
        """Write the run if it is still at ``rev``, with ``entries`` (``outbox_entries``) added to its
        outbox; the new rev, or None when it changed meanwhile."""
        # What never changes after the insert (the runbook, the incident) is not sent again.
        fields = run.model_dump(exclude=set(IMMUTABLE_RUN_FIELDS)) | {"next_at": next_at}
        # The entries as given (not re-made from the events): the caller pulls exactly these.
        update = outbox.add_entries_to_update({"$set": fields, "$inc": {"rev": 1}}, entries or [])
        result = await self.runs.update_one({"_id": run.incident.incident_id, "rev": rev}, update)
        return rev + 1 if result.modified_count else None

    async def set_next_at(self, incident_id: str, rev: int, next_at: datetime) -> int | None:
        """Only move the run's due time (a run that waits for a slot changes nothing else)."""
        result = await self.runs.update_one(
            {"_id": incident_id, "rev": rev}, {"$set": {"next_at": next_at}, "$inc": {"rev": 1}}
        )
        return rev + 1 if result.modified_count else None

    async def claim_run(self, incident_id: str, rev: int, lease_until: datetime) -> int | None:
        result = await self.runs.update_one(
            {"_id": incident_id, "rev": rev}, {"$set": {"next_at": lease_until}, "$inc": {"rev": 1}}
        )
        return rev + 1 if result.modified_count else None

    async def due_runs(self, now: datetime, limit: int = 200) -> list[str]:
        # By status first: an equality the embedded store answers from the status index, so a poll
        # reads the runs not finished, not every run ever (a range on next_at alone is a full scan).
        cursor = self.runs.find(
            {"status": {"$in": list(OPEN_STATUSES)}, "next_at": {"$lte": now}}, {"_id": 1, "next_at": 1}
        )
        due = sorted([(document["next_at"], document["_id"]) async for document in cursor])
        return [incident_id for _, incident_id in due[:limit]]

    async def next_queued_run(self, tenant_id: str, system: str | None, skip: Collection[str] = ()) -> str | None:
        """The oldest run of one system waiting for a slot, leaving out ``skip``."""
        cursor = (
            self.runs.find({"status": "queued", "tenant_id": tenant_id, "system": system}, {"_id": 1})
            .sort("created_at", ASCENDING)
            .limit(len(skip) + 1)
        )
        async for document in cursor:
            if document["_id"] not in skip:
                return str(document["_id"])
        return None

    async def runs_of(self, query: Document, limit: int = 500) -> list[Document]:
        cursor = self.runs.find(query, {outbox.FIELD: 0}).sort("created_at", ASCENDING).limit(limit)
        return [document async for document in cursor]

    # --- blast radius --------------------------------------------------------------------

    async def load_slots(self, tenant_id: str, system: str) -> SystemSlots:
        document = await self.slots.find_one({"_id": f"{tenant_id}|{system}"})
        return SystemSlots.model_validate(document) if document else SystemSlots()

    async def finished_runs(self, run_ids: list[str]) -> dict[str, str | None]:
        """Which of ``run_ids`` are finished (run id -> incident id) or do not exist (-> None);
        one indexed read."""
        if not run_ids:
            return {}
        finished: dict[str, str | None] = dict.fromkeys(run_ids)
        async for document in self.runs.find({"run_id": {"$in": run_ids}}, {"run_id": 1, "status": 1}):
            if document.get("status") in OPEN_STATUSES:
                finished.pop(document["run_id"], None)
            else:
                finished[document["run_id"]] = str(document["_id"])
        return finished

    async def save_slots(self, tenant_id: str, system: str, read: SystemSlots, new: SystemSlots) -> bool:
        key = f"{tenant_id}|{system}"
        fields = {"holders": new.holders, "starts": new.starts, "version": new.version}
        if read.version == 0:
            try:
                result = await self.slots.update_one({"_id": key, "version": 0}, {"$set": fields}, upsert=True)
            except DuplicateKeyError:
                return False
            return bool(result.modified_count or result.upserted_id is not None)
        result = await self.slots.update_one({"_id": key, "version": read.version}, {"$set": fields})
        return result.modified_count > 0

    # --- tenants: kill switch and escalation policy -------------------------------------

    async def automation_paused(self, tenant_id: str) -> Document | None:
        document = await self.tenant_settings.find_one({"_id": tenant_id})
        return document if document and document.get("automation_paused") else None

    async def set_kill_switch(self, tenant_id: str, paused: bool, reason: str, by: str, now: datetime) -> None:
        await self.tenant_settings.update_one(
            {"_id": tenant_id},
            {"$set": {"automation_paused": paused, "reason": reason, "by": by, "at": now}},
            upsert=True,
        )

    async def policy(self, tenant_id: str) -> EscalationPolicy | None:
        document = await self.policies.find_one({"_id": tenant_id})
        return EscalationPolicy.model_validate(document["policy"]) if document else None

    async def add_policy_if_none(self, tenant_id: str, policy: EscalationPolicy, by: str, now: datetime) -> bool:
        """Store ``policy`` unless the tenant has one already (a seed never overwrites a person's)."""
        try:
            await self.policies.insert_one(
                {"_id": tenant_id, "policy": policy.model_dump(mode="json"), "by": by, "at": now}
            )
        except DuplicateKeyError:
            return False
        return True

    async def save_policy(self, tenant_id: str, policy: EscalationPolicy, by: str, now: datetime) -> None:
        await self.policies.update_one(
            {"_id": tenant_id},
            {"$set": {"policy": policy.model_dump(mode="json"), "by": by, "at": now}},
            upsert=True,
        )

    # --- escalations ---------------------------------------------------------------------

    async def insert_escalation(self, escalation: Escalation, events: list[Envelope[Any]]) -> bool:
        """Create the escalation under its key; False when that escalation exists already."""
        document = escalation.model_dump() | {"_id": escalation.key, "rev": 1}
        if events:
            document[outbox.FIELD] = [outbox.stored(envelope) for envelope in events]
            document[outbox.FLAG] = True
        try:
            await self.escalations.insert_one(document)
        except DuplicateKeyError:
            return False
        return True

    async def load_escalation(self, key: str) -> tuple[Escalation, int] | None:
        document = await self.escalations.find_one({"_id": key}, {outbox.FIELD: 0})
        if document is None:
            return None
        return Escalation.model_validate(document), int(document["rev"])

    async def escalations_of(self, incident_id: str) -> list[Document]:
        cursor = self.escalations.find({"incident_id": incident_id}, {outbox.FIELD: 0})
        return [document async for document in cursor]

    async def escalation_by_id(self, escalation_id: str) -> Document | None:
        return await self.escalations.find_one({"escalation_id": escalation_id}, {outbox.FIELD: 0})

    async def save_escalation(
        self, escalation: Escalation, rev: int, events: list[Envelope[Any]] | None = None
    ) -> int | None:
        update = outbox.add_to_update({"$set": escalation.model_dump(), "$inc": {"rev": 1}}, *(events or []))
        result = await self.escalations.update_one({"_id": escalation.key, "rev": rev}, update)
        return rev + 1 if result.modified_count else None
