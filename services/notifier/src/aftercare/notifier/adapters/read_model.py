"""The dashboard's read model in the store: one document per incident with its timeline and the
fields folded from it (``domain/incident_view.py``). Optimistic: a write names the revision it
started from, so two instances applying events of one incident never overwrite each other's
entries."""

from __future__ import annotations

import uuid
from collections import OrderedDict
from collections.abc import Callable, Sequence
from typing import Any

from pymongo.asynchronous.collection import AsyncCollection
from pymongo.errors import DuplicateKeyError

from aftercare.events.envelope import Envelope
from aftercare.events.incidents import IncidentReported
from aftercare.notifier.domain.incident_view import add_entry, entry_of, fold

# Told (view, id of the event that changed it); must not block: browsers have their own queues.
Listener = Callable[[dict[str, Any], str], object]


class IncidentReadModel:
    def __init__(self, incidents: AsyncCollection[dict[str, Any]], remembered: int = 1000) -> None:
        self._incidents = incidents
        self.listeners: list[Listener] = []
        # The documents this process wrote last, newest last (see ``apply``).
        self._written: OrderedDict[str, dict[str, Any]] = OrderedDict()
        self._remembered = remembered

    async def apply(self, envelope: Envelope[Any], *, notify: bool = True) -> dict[str, Any] | None:
        """Add the event to its incident's timeline; returns the incident's view (None if the
        event concerns no incident). Idempotent: a redelivered event changes nothing.

        One store round trip in the usual case, not two: the document this process wrote last
        is usually still the stored one, so the write starts from it, and a report (which opens
        its incident) is inserted without a read. A write that finds otherwise (another writer,
        a rebuild) reads the stored document and tries again."""
        incident_id = envelope.incident_id
        if incident_id is None:
            return None
        entry = entry_of(envelope)
        for attempt in range(20):
            document: dict[str, Any] | None
            if attempt == 0 and incident_id in self._written:
                document = self._written[incident_id]
            elif attempt == 0 and isinstance(envelope.data, IncidentReported):
                document = None  # a duplicate key says it exists after all: read it next time round
            else:
                document = await self._incidents.find_one({"_id": incident_id})
            entries: list[dict[str, Any]] = (document or {}).get("entries", [])
            merged = add_entry(entries, entry)
            if merged is None:
                return _view(document)
            view = fold(incident_id, envelope.tenant_id, merged)
            # A fresh token, not a counter: a document rebuilt or written elsewhere never carries
            # the revision this process remembers, so a stale copy cannot overwrite it.
            replacement = view | {"entries": merged, "rev": uuid.uuid4().hex}
            if document is None:
                try:
                    await self._incidents.insert_one({"_id": incident_id, **replacement})
                except DuplicateKeyError:
                    continue
            else:
                result = await self._incidents.replace_one(
                    {"_id": incident_id, "rev": document.get("rev", 0)}, replacement
                )
                if result.matched_count != 1:
                    self._written.pop(incident_id, None)
                    continue
            self._remember(incident_id, {"_id": incident_id, **replacement})
            if notify:
                self._tell(view, envelope.id)  # the live tail has usually pushed it already
            return view
        raise RuntimeError(f"incident {incident_id}: the read model kept changing under this write")

    def _remember(self, incident_id: str, document: dict[str, Any]) -> None:
        self._written[incident_id] = document
        self._written.move_to_end(incident_id)
        if len(self._written) > self._remembered:
            self._written.popitem(last=False)

    def _tell(self, view: dict[str, Any], event_id: str) -> None:
        for listener in self.listeners:
            listener(view, event_id)

    async def get(self, incident_id: str) -> dict[str, Any] | None:
        return _view(await self._incidents.find_one({"_id": incident_id}))

    async def timeline(self, incident_id: str) -> list[dict[str, Any]]:
        document = await self._incidents.find_one({"_id": incident_id}, {"entries": 1})
        return list((document or {}).get("entries", []))

    async def list(self, tenants: list[str] | None, limit: int = 500) -> list[dict[str, Any]]:
        query: dict[str, Any] = {} if tenants is None else {"tenant_id": {"$in": tenants}}
        cursor = self._incidents.find(query, {"entries": 0}).sort("reported_at", -1).limit(limit)
        return [_view(document) or {} async for document in cursor]

    async def drop(self) -> None:
        self._written.clear()
        await self._incidents.drop()

    async def replace_all(self, documents: Sequence[dict[str, Any]], chunk: int = 500) -> None:
        """Drop the read model and store ``documents`` instead (a rebuild)."""
        self._written.clear()
        await self._incidents.drop()
        await self._incidents.create_index("tenant_id")
        for start in range(0, len(documents), chunk):
            await self._incidents.insert_many(list(documents[start : start + chunk]), ordered=False)


def _view(document: dict[str, Any] | None) -> dict[str, Any] | None:
    if document is None:
        return None
    return {key: value for key, value in document.items() if key not in ("_id", "entries", "rev")}
